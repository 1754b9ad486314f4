"""Train a recipe's stages: recipe -> model -> stage -> data -> train -> checkpoint.

GPUs:   deepspeed scripts/train.py recipes/llava_v1_5.yaml
CPU:    mllm make-tiny tiny_models && mllm demo-data demo_data
        python scripts/train.py recipes/tiny/shapes_mlp.yaml --stage align stages.align.max_steps=5
Options: --stage NAME (default: every stage in order), --resume, key.sub=value overrides,
--debug (a traceback with a user error's message).
Exit status: 0 done, 2 a recipe/override/path to fix (said before anything heavy starts),
1 bad data under on_bad_record: fail; see mllm/errors.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mllm.config import RecipeConfig, RecipeError, load_recipe
from mllm.config.checks import check_data_paths, check_environment
from mllm.data.builder import build_collator, build_stage_datasets
from mllm.errors import UsageError, run_command
from mllm.models.builder import DTYPES, build_model, special_tokens_for, stage_template
from mllm.models.lora import lora_settings
from mllm.training.deepspeed_config import build_deepspeed_config
from mllm.training.distributed import init_distributed
from mllm.training.interrupt import TrainingInterrupted
from mllm.training.setup import (
    attach_feature_cache,
    completed_output,
    enable_gradient_checkpointing,
    load_start_point,
    register_zero3_loading,
    resolve_init_from,
    saved_components,
    seed_everything,
)
from mllm.training.stage import apply_stage
from mllm.training.trainer import Trainer
from mllm.training.validation import Validator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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


def train_stage(recipe, stage_name: str, runtime, resume: bool) -> None:
    stage = recipe.stages[stage_name]
    if resume and completed_output(recipe, stage_name):
        logging.getLogger("mllm.train").info("stage %s is complete; resuming after it", stage_name)
        return
    ds_config = build_deepspeed_config(stage, runtime.world_size, f"stages.{stage_name}")
    init_folder = resolve_init_from(recipe, stage_name)
    seed_everything(recipe.seed)
    zero3 = register_zero3_loading(ds_config)  # noqa: F841 - must outlive the model
    lora = lora_settings(recipe, stage_name)
    built = build_model(
        recipe.model,
        dtype=DTYPES[stage.precision],
        special_tokens=special_tokens_for(recipe),
        quantize_llm=lora if stage.train.llm == "qlora" else None,
    )
    if init_folder is not None:
        key = f"stages.{stage_name}.init_from"
        load_start_point(built.model, init_folder, key, stage.train.llm)
    trained = [name for name, mode in stage.train.model_dump().items() if mode != "frozen"]
    apply_stage(built.model, stage.train, lora)
    if stage.gradient_checkpointing:
        enable_gradient_checkpointing(built.model)
    template = stage_template(recipe, stage)
    dataset, held_out = build_stage_datasets(stage, built, template, recipe.seed)
    attach_feature_cache(
        dataset, stage.data, built.model, f"stages.{stage_name}.data.feature_cache"
    )
    trainer = Trainer(
        recipe=recipe,
        stage_name=stage_name,
        built=built,
        dataset=dataset,
        collator=build_collator(stage.data, built.tokenizer.pad_token_id),
        ds_config=ds_config,
        runtime=runtime,
        saved_components=saved_components(init_folder, trained),
        validator=None
        if held_out is None
        else Validator(
            held_out, stage.eval, built=built, recipe=recipe, template=template, runtime=runtime
        ),
    )
    if resume:
        trainer.resume()
    metrics = trainer.train()
    trainer.save_final(metrics)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = os.environ.get("RANK", "0")  # the launcher's; the process group comes later
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
    )
    recipe, stages = check_run(args)
    runtime = init_distributed()
    for stage_name in stages:
        try:
            train_stage(recipe, stage_name, runtime, resume=args.resume)
        except TrainingInterrupted as stop:
            logging.getLogger("mllm.train").warning("%s", stop)
            return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, prog="train.py"))
