"""The benchmark's printed tables: our variants against the baseline, with ratios."""

from __future__ import annotations

from collections.abc import Sequence

from mllm.bench.generation import GenerationRun
from mllm.bench.measure import TrainRun, median
from mllm.bench.original_llava import NAME as LLAVA
from mllm.bench.ours import SECTIONS, WholeRun

#: The goal: samples/s at least this multiple of the HF Trainer + Llava baseline's.
TARGET = 1.5
#: Steps whose losses the goal table compares with the baseline's.
FIRST_STEPS = 3


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(
        cell.rjust(width) if i else cell.ljust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    )


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [_row(header, widths), _row(["-" * w for w in widths], widths)]
    lines += [_row(r, widths) for r in rows]
    return "\n".join(lines)


def training_table(runs: dict[str, list[TrainRun]]) -> str:
    """One row per side (medians over rounds) and its tokens/s ratio to the baseline.

    Args:
        runs: side name -> its runs, one per round; must include ``baseline``.
    """
    rows = []
    for name, side in runs.items():
        tokens = median([r.tokens_per_s for r in side])
        ratios = [
            ours.tokens_per_s / base.tokens_per_s
            for ours, base in zip(side, runs["baseline"], strict=False)
        ]
        rows.append(
            [
                name,
                f"{median([r.samples_per_s for r in side]):.1f}",
                f"{tokens:.0f}",
                f"{100 * median([r.padding_share for r in side]):.1f}%",
                f"{1000 * median([r.step_s for r in side]):.0f}",
                f"{median([r.peak_mib for r in side]):.0f}",
                "-" if name == "baseline" else f"{median(ratios):.2f}x",
            ]
        )
    header = [
        "training",
        "samples/s",
        "tokens/s",
        "padding",
        "ms/step",
        "peak MiB",
        "tok/s vs base",
    ]
    return _table(header, rows)


def breakdown_table(runs: dict[str, list[TrainRun]]) -> str:
    """Mean milliseconds per step in each section, for our variants (medians over rounds)."""
    rows = []
    for name, side in runs.items():
        if not side[0].sections:  # the baselines
            continue
        cells = [f"{1000 * median([r.sections[s] for r in side]):.1f}" for s in SECTIONS]
        rows.append([name, *cells])
    return _table(["step breakdown (ms)", *SECTIONS], rows)


def generation_table(runs: list[GenerationRun]) -> str:
    """Time to first token and tokens/s per side; ratios to the baseline (the last run)."""
    *ours, base = runs
    rows = []
    for run in runs:
        tokens = median([float(n) for n in run.new_tokens])
        same = sum(a == b for a, b in zip(run.answers, base.answers, strict=True))
        rows.append(
            [
                run.name,
                f"{1000 * run.ttft_s:.1f}",
                f"{run.tokens_per_s:.0f}",
                f"{tokens:.0f}",
                "-" if run is base else f"{run.ttft_s / base.ttft_s:.2f}x",
                "-" if run is base else f"{run.tokens_per_s / base.tokens_per_s:.2f}x",
                "-" if run is base else f"{same}/{len(base.answers)}",
            ]
        )
    header = [
        "generation (batch 1)",
        "TTFT ms",
        "tokens/s",
        "tokens",
        "TTFT vs base",
        "tok/s vs base",
        "same answer",
    ]
    return _table(header, rows)


def _ratio(side: list[TrainRun], base: list[TrainRun]) -> float:
    """Median of the per-round samples/s ratios."""
    return median([o.samples_per_s / b.samples_per_s for o, b in zip(side, base, strict=False)])


def _loss_diff(side: list[TrainRun], base: list[TrainRun]) -> float:
    """Largest difference of the first steps' losses (first round)."""
    steps = min(FIRST_STEPS, len(side[0].losses), len(base[0].losses))
    pairs = zip(side[0].losses[:steps], base[0].losses[:steps], strict=True)
    return max((abs(a - b) for a, b in pairs), default=float("nan"))


def goal_table(cells: dict[str, dict[str, list[TrainRun]]], target: float = TARGET) -> str:
    """Per cell (data shape / stage) and our variant: samples/s against the baseline's (median
    of per-round ratios), padding and peak memory of both sides, and the largest difference
    of the first steps' losses from the baseline's (first round). Where the cells have an
    original LLaVA side, three more columns: its samples/s, ours against it, and its own
    first losses against the baseline's.

    Args:
        cells: cell name -> side name -> its runs, one per round; each has ``baseline``.
        target: the ratio the goal asks for.
    """
    with_llava = any(LLAVA in runs for runs in cells.values())
    rows = []
    for cell, runs in cells.items():
        base = runs["baseline"]
        for name, side in runs.items():
            if name in ("baseline", LLAVA):
                continue
            ratio = _ratio(side, base)
            row = [
                cell,
                name.removeprefix("ours "),
                f"{median([r.samples_per_s for r in base]):.1f}",
                f"{median([r.samples_per_s for r in side]):.1f}",
                f"{ratio:.2f}x",
                "yes" if ratio >= target else "no",
                f"{100 * median([r.padding_share for r in base]):.0f}% / "
                f"{100 * median([r.padding_share for r in side]):.0f}%",
                f"{median([r.peak_mib for r in base]):.0f} / "
                f"{median([r.peak_mib for r in side]):.0f}",
                f"{_loss_diff(side, base):.1e}",
            ]
            if with_llava:
                llava = runs.get(LLAVA)
                row += (
                    [
                        f"{median([r.samples_per_s for r in llava]):.1f}",
                        f"{_ratio(side, llava):.2f}x",
                        f"{_loss_diff(llava, base):.1e}",
                    ]
                    if llava
                    else ["-", "-", "-"]
                )
            rows.append(row)
    header = [
        "goal: data / stage",
        "ours",
        "base samples/s",
        "ours samples/s",
        "vs base",
        f">= {target}x",
        "padding base / ours",
        "peak MiB base / ours",
        f"loss diff, {FIRST_STEPS} steps",
    ]
    if with_llava:
        header += ["LLaVA samples/s", "vs LLaVA", "LLaVA loss diff"]
    return _table(header, rows)


def cache_table(runs: dict[str, list[WholeRun]], epochs: int) -> str:
    """Whole-stage seconds with the tower and with the feature cache (its build included)."""
    first = next(iter(runs.values()))
    rows = []
    for name, side in runs.items():
        ratios = [a.seconds / b.seconds for a, b in zip(first, side, strict=False)]
        diff = max(abs(a - b) for a, b in zip(side[0].losses, first[0].losses, strict=False))
        rows.append(
            [
                name,
                "yes" if side[0].cached else "no",
                f"{median([r.seconds for r in side]):.1f}",
                f"{median(ratios):.2f}x",
                f"{diff:.1e}",
            ]
        )
    header = [f"whole stage 1, {epochs} epochs", "cached", "seconds", "speed-up", "loss diff"]
    return _table(header, rows)
