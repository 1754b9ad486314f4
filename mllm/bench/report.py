"""The benchmark's printed tables: our variants against the baseline, with ratios."""

from __future__ import annotations

from collections.abc import Sequence

from mllm.bench.generation import GenerationRun
from mllm.bench.measure import TrainRun, median
from mllm.bench.ours import SECTIONS


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
        if name == "baseline":
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
