"""Does ``stages.S.compile`` pay? Eager against compiled training of both LLaVA stages.

Stage 1 (projector only) trains on alignment-like captions, stage 2 (projector and LLM) on the
LLaVA-665k-like length mix (``mllm.bench.data``), both packed, on the bench's tiny models.
Each stage runs eager and compiled in alternating rounds (``train_ours``: the real set-up and
trainer), from the same weights on the same samples. Inductor's on-disk cache is pointed at a
fresh folder first, so round 1 pays a cold compile and later rounds what a second run of the
same recipe pays (cache hits); stage 2's first compile reuses stage 1's kernels for the tower
(the same graph), so its "cold" figure is partly warm. The verdict per stage says whether
compiling pays (compiled steps at least ``PAYS_ABOVE`` times as fast, median of the per-round
ratios, and no round slower), and after how many steps the first compile is paid back::

    python scripts/bench.py --compile                   # about 6 minutes on 2 busy cores
    python scripts/bench.py --compile --rounds 1 --steps 6
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mllm.bench.measure import TrainRun, median
from mllm.bench.model_section import llava_model_section

#: stage -> (data shape, what trains): LLaVA's two stages.
STAGES: dict[str, tuple[str, dict[str, str]]] = {
    "align": ("captions", {"vision": "frozen", "projector": "full", "llm": "frozen"}),
    "instruct": ("mix", {"vision": "frozen", "projector": "full", "llm": "full"}),
}
#: Compiled steps must be at least this much faster to count as paying (timing noise).
PAYS_ABOVE = 1.03


@dataclass
class CompileRuns:
    """One stage's runs, eager and compiled, one per round, with their wall times."""

    eager: list[TrainRun] = field(default_factory=list)
    compiled: list[TrainRun] = field(default_factory=list)
    eager_wall_s: list[float] = field(default_factory=list)
    compiled_wall_s: list[float] = field(default_factory=list)

    def compile_s(self, round_index: int, total_steps: int) -> float:
        """Seconds the compiled run spent beyond its steps: the compile (estimated as the
        extra wall time less the step-time difference over all its steps)."""
        extra = self.compiled_wall_s[round_index] - self.eager_wall_s[round_index]
        step_gain = self.eager[round_index].step_s - self.compiled[round_index].step_s
        return extra + step_gain * total_steps


def _recipe(workdir: Path, models: dict[str, Path], stage: str, mix, batch: int, steps: int):
    from mllm.config import load_recipe

    _, train = STAGES[stage]
    raw = {
        "name": f"compile-{stage}",
        "output_dir": str(workdir / "runs"),
        "seed": 0,
        "model": llava_model_section(models, attn_implementation="sdpa"),
        "stages": {
            stage: {
                "data": {
                    "path": str(mix.records),
                    "image_folder": str(mix.image_folder),
                    "template": "vicuna_v1",
                    "max_length": 1024,
                    "packing": True,
                },
                "train": train,
                "optim": {"lr": 2.0e-4, "warmup_ratio": 0.0},
                "max_steps": steps,
                "global_batch_size": batch,
                "micro_batch_size": batch,
                "precision": "fp32",
                "log_every": 1,
            }
        },
    }
    path = workdir / f"compile_{stage}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    eager = load_recipe(path)
    compiled = load_recipe(path, [f"stages.{stage}.compile=true"])
    return eager, compiled


def verdict(runs: CompileRuns, total_steps: int) -> str:
    """One sentence: whether compiling pays for this stage, and from which step on."""
    # Median of per-round ratios: the load of a shared machine falls on both runs of a round.
    ratios = [e.step_s / c.step_s for e, c in zip(runs.eager, runs.compiled, strict=True)]
    speedup = median(ratios)
    eager_step = median([r.step_s for r in runs.eager])
    compiled_step = eager_step / speedup
    cold = runs.compile_s(0, total_steps)
    if speedup < PAYS_ABOVE:
        return (
            f"does not pay: compiled steps are {speedup:.2f}x eager's speed (median of rounds) "
            f"and the compile costs {cold:.0f} s; leave compile off here"
        )
    if min(ratios) < 1:
        return (
            f"does not pay reliably: compiled steps are {speedup:.2f}x eager's speed (median), "
            f"but per round {min(ratios):.2f}x-{max(ratios):.2f}x, slower in some; the compile "
            f"costs {cold:.0f} s; leave compile off here, or rerun with more --rounds on a "
            "quieter machine"
        )
    break_even = cold / (eager_step - compiled_step)
    return (
        f"pays after about {break_even:.0f} steps: compiled steps are {speedup:.2f}x "
        f"eager's speed (median of rounds), the first compile costs {cold:.0f} s"
    )


def compile_table(results: dict[str, CompileRuns], total_steps: int) -> str:
    lines = [
        f"{'stage':<9} {'side':<9} {'samples/s':>9} {'ms/step':>8} {'peak MiB':>9} "
        f"{'compile s (cold, warm)':>23}"
    ]
    for stage, runs in results.items():
        for side, side_runs in (("eager", runs.eager), ("compiled", runs.compiled)):
            compile_s = "-"
            if side == "compiled":
                seconds = [runs.compile_s(i, total_steps) for i in range(len(side_runs))]
                compile_s = ", ".join(f"{s:.0f}" for s in seconds[:2])
            lines.append(
                f"{stage:<9} {side:<9} {median([r.samples_per_s for r in side_runs]):>9.1f} "
                f"{1000 * median([r.step_s for r in side_runs]):>8.0f} "
                f"{median([r.peak_mib for r in side_runs]):>9.0f} {compile_s:>23}"
            )
    for stage, runs in results.items():
        lines.append(f"{stage}: {verdict(runs, total_steps)}")
    return "\n".join(lines)


def run_compile_bench(
    workdir: Path,
    *,
    rounds: int = 2,
    steps: int = 8,
    warmup: int = 2,
    batch_size: int = 16,
    samples: int = 400,
    threads: int = 1,
    json_path: Path | None = None,
) -> int:
    """Train both stages eager and compiled in alternating rounds and print the verdicts."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    workdir.mkdir(parents=True, exist_ok=True)
    # A fresh inductor cache: round 1 compiles cold, as a first run does.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_", dir=workdir)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    import torch
    from transformers.utils import logging as hf_logging

    from mllm.bench.data import write_length_mix
    from mllm.bench.ours import train_ours
    from mllm.bench.recipes import TINY
    from mllm.tiny import make_tiny_models

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    models = make_tiny_models(workdir / "models", **TINY)
    total_steps = warmup + steps
    recipes = {}
    for stage, (shape, _) in STAGES.items():
        mix = write_length_mix(
            workdir / f"data_{shape}",
            num_samples=samples,
            image_size=TINY["image_size"],
            shape=shape,
        )
        recipes[stage] = _recipe(workdir, models, stage, mix, batch_size, total_steps)
    results = {stage: CompileRuns() for stage in STAGES}
    for round_index in range(rounds):
        for stage, (eager, compiled) in recipes.items():
            sides = [("eager", eager), ("compiled", compiled)]
            for side, recipe in sides if round_index % 2 == 0 else reversed(sides):
                began = time.perf_counter()
                run = train_ours(recipe, stage, f"{stage} {side}", warmup=warmup)
                wall = time.perf_counter() - began
                getattr(results[stage], side).append(run)
                getattr(results[stage], f"{side}_wall_s").append(wall)
                print(
                    f"round {round_index + 1} {stage} {side}: {run.samples_per_s:.1f} samples/s, "
                    f"{wall:.0f} s in all",
                    flush=True,
                )
    print()
    print(compile_table(results, total_steps))
    first = {
        stage: {"eager": runs.eager[0].losses[:3], "compiled": runs.compiled[0].losses[:3]}
        for stage, runs in results.items()
    }
    print(f"first losses (same weights and samples): {json.dumps(first)}")
    print(f"{time.perf_counter() - started:.0f} s in all")
    if json_path:
        figures = {
            stage: {
                "eager_samples_per_s": [r.samples_per_s for r in runs.eager],
                "compiled_samples_per_s": [r.samples_per_s for r in runs.compiled],
                "eager_step_s": [r.step_s for r in runs.eager],
                "compiled_step_s": [r.step_s for r in runs.compiled],
                "compile_s": [runs.compile_s(i, total_steps) for i in range(rounds)],
                "verdict": verdict(runs, total_steps),
            }
            for stage, runs in results.items()
        }
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python scripts/bench.py --compile [options]``."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py --compile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_compile"))
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side")
    parser.add_argument("--steps", type=int, default=8, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps before measuring")
    parser.add_argument("--batch-size", type=int, default=16, help="micro = global batch")
    parser.add_argument("--samples", type=int, default=400, help="records per data shape")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    return run_compile_bench(
        args.workdir,
        rounds=args.rounds,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        samples=args.samples,
        threads=args.threads,
        json_path=args.json,
    )
