"""``mllm train`` (and ``scripts/train.py``): train a recipe's stages, each through
``mllm.training.run.run_stage``.

GPUs:   deepspeed scripts/train.py recipes/llava_v1_5.yaml   (or: deepspeed --module mllm train ...)
CPU:    mllm make-tiny tiny_models && mllm demo-data demo_data
        mllm train recipes/tiny/shapes_mlp.yaml --stage align stages.align.max_steps=5
Options: --stage NAME (default: every stage in order), --resume, key.sub=value overrides,
--debug (a traceback with a user error's message).
Exit status: 0 done, 2 a recipe/override/path to fix (said before anything heavy starts),
1 bad data under on_bad_record: fail; see mllm/errors.py.
"""

from __future__ import annotations

import argparse
import logging
import os

from mllm.config import RecipeConfig, RecipeError, load_recipe
from mllm.config.checks import check_data_paths
from mllm.errors import UsageError
from mllm.training.environment import check_environment


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    parser.add_argument("--stage", action="append", help="stage(s) to run; default: all, in order")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    parser.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # deepspeed launcher
    return parser.parse_intermixed_args(argv)


def check_run(args: argparse.Namespace) -> tuple[RecipeConfig, list[str]]:
    """Everything a user can get wrong, checked before anything heavy starts (process group,
    DeepSpeed, models): the recipe and overrides, the stage names, data paths, this machine.

    Raises:
        RecipeError: the recipe, an override or a path it names.
        UsageError: an unknown stage, or a stage this machine cannot run.
    """
    recipe = load_recipe(args.recipe, args.overrides)
    stages = args.stage or list(recipe.stages)
    for stage_name in stages:
        if stage_name not in recipe.stages:
            raise UsageError(
                f"{args.recipe}: no stage {stage_name!r}; stages: {list(recipe.stages)}"
            )
    problems = check_data_paths(recipe, stages)
    if problems:
        raise RecipeError(args.recipe, problems)
    problems = check_environment(recipe, stages)  # before any stage: never stop between them
    if problems:
        raise UsageError(f"{args.recipe}: cannot run here:\n  " + "\n  ".join(problems))
    return recipe, stages


def main(argv: list[str] | None = None, prog: str = "mllm train") -> int:
    args = parse_args(argv, prog)
    rank = os.environ.get("RANK", "0")  # the launcher's; the process group comes later
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
        force=True,  # under `mllm train`, the cli configured logging without the rank
    )
    recipe, stages = check_run(args)
    from mllm.training.distributed import init_distributed
    from mllm.training.interrupt import TrainingInterrupted
    from mllm.training.run import run_stage

    runtime = init_distributed()
    for stage_name in stages:
        try:
            run_stage(recipe, stage_name, runtime, resume=args.resume)
        except TrainingInterrupted as stop:
            logging.getLogger(__name__).warning("%s", stop)
            return stop.exit_code
    return 0
