"""``mllm bench`` (and ``python scripts/bench.py``): training and generation speed against
transformers' Llava (``mllm.bench.run``; its module docstring is this command's help)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mllm.bench import recipes, run
from mllm.bench.data import SHAPES


def parse_args(argv: list[str] | None) -> run.BenchOptions:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description=run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="instead: eager against stages.S.compile on both stages, with a verdict "
        "(mllm.bench.compiled; its options: --compile --help)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench"))
    parser.add_argument("--recipe", help="benchmark this recipe's model and stage settings")
    parser.add_argument("--stage", help="stage of --recipe (default: its last)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value for --recipe")
    parser.add_argument(
        "--data", nargs="+", choices=list(SHAPES), default=["captions", "mix"], help="data shapes"
    )
    parser.add_argument(
        "--stages", nargs="+", choices=list(recipes.STAGES), default=list(recipes.STAGES)
    )
    parser.add_argument(
        "--variants", nargs="+", choices=list(recipes.VARIANTS), default=["padded", "packed"]
    )
    parser.add_argument(
        "--cache-epochs",
        type=int,
        default=0,
        help="also time whole stage-1 runs of N epochs, feature cache off and auto",
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side")
    parser.add_argument("--steps", type=int, default=8, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps before measuring")
    parser.add_argument("--batch-size", type=int, default=16, help="micro = global batch")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--samples", type=int, default=600, help="records in the length mix")
    parser.add_argument("--gen-prompts", type=int, default=10)
    parser.add_argument("--gen-tokens", type=int, default=48)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (on 2 shared cores, 2 threads ran 3-6x slower than 1)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--llava-python",
        type=Path,
        help="python of a side venv with llava-torch (scripts/make_llava_side_venv.sh): adds "
        "the original LLaVA code's train() as a second baseline",
    )
    args = parser.parse_intermixed_args(argv)
    return run.BenchOptions(
        workdir=args.workdir,
        recipe=args.recipe,
        stage=args.stage,
        overrides=tuple(args.overrides),
        data=tuple(args.data),
        stages=tuple(args.stages),
        variants=tuple(args.variants),
        cache_epochs=args.cache_epochs,
        rounds=args.rounds,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        max_length=args.max_length,
        workers=args.workers,
        samples=args.samples,
        gen_prompts=args.gen_prompts,
        gen_tokens=args.gen_tokens,
        threads=args.threads,
        json=args.json,
        llava_python=args.llava_python,
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--compile" in args:  # its own benchmark and options (mllm.bench.compiled)
        from mllm.bench import compiled

        args.remove("--compile")
        return compiled.main(args)
    return run.run_bench(parse_args(args))
