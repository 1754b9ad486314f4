"""Our side of the benchmark: one stage trained through ``mllm.training.run`` as a real run
(``set_up_stage``, ``stage_trainer``, ``Trainer.train``) with a
:class:`~mllm.training.timing.StepTimer` attached, minus the final checkpoint.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path

import torch

from mllm.bench.measure import PeakMemory, TrainRun
from mllm.config import RecipeConfig
from mllm.data.feature_cache import FeatureCache
from mllm.training.deepspeed_config import build_deepspeed_config
from mllm.training.distributed import init_distributed
from mllm.training.metrics import read_metrics
from mllm.training.run import StageSetup, set_up_stage, stage_trainer
from mllm.training.setup import attach_feature_cache
from mllm.training.timing import StepTimer

#: Trainer sections (plus the vision tower's forward, timed by hooks) in report order.
SECTIONS = ("data", "vision", "llm_forward", "backward", "optimizer")


def set_up_without_cache(recipe: RecipeConfig, stage_name: str) -> StageSetup:
    """The stage as a real run sets it up (adapters, tune modes, activation checkpointing,
    data), without opening its feature cache; bench recipes have no ``init_from``."""
    return set_up_stage(recipe, stage_name, feature_cache=False)


def rebuild_feature_cache(recipe: RecipeConfig, stage_name: str) -> tuple[FeatureCache, float]:
    """Build the stage's ``data.feature_cache`` from scratch (an existing folder is removed:
    it must be the benchmark's own scratch folder).

    Returns:
        The cache and the seconds its build took (weights digest included).
    """
    stage = recipe.stages[stage_name]
    assert stage.data.feature_cache is not None
    shutil.rmtree(Path(stage.data.feature_cache), ignore_errors=True)
    setup = set_up_without_cache(recipe, stage_name)
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet, redirect_stderr(quiet):  # the build's progress bar
        cache = attach_feature_cache(
            setup.dataset, stage.data, setup.built.model, f"stages.{stage_name}.data.feature_cache"
        )
    assert cache is not None
    return cache, time.perf_counter() - started


def train_ours(
    recipe: RecipeConfig, stage_name: str, name: str, *, warmup: int, sync: bool = False
) -> TrainRun:
    """Train ``stage_name`` for its ``max_steps`` and time the steps after ``warmup``.

    Args:
        recipe: a recipe whose stage has no ``init_from`` and writes to a scratch folder
            (the stage's output folder is removed first).
        stage_name: the stage to run.
        name: the run's label in the report.
        warmup: steps left out of the measurement (allocator, thread pools, first batches).
        sync: synchronise the GPU around every section (exact breakdown, slower steps).

    Returns:
        The measured steps, mean section times and peak memory.
    """
    stage = recipe.stages[stage_name]
    if stage.compile:
        torch._dynamo.reset()  # each run compiles as a new process would
    # A scratch folder: the metrics of an earlier run there would be read as this run's.
    shutil.rmtree(recipe.stage_output_dir(stage_name), ignore_errors=True)
    runtime = init_distributed()
    ds_config = build_deepspeed_config(stage, runtime.world_size, f"stages.{stage_name}")
    setup = set_up_stage(recipe, stage_name, ds_config=ds_config)
    timer = StepTimer(sync=sync)
    hooks = timer.watch(setup.built.model.vision, "vision")
    trainer = stage_trainer(setup, runtime, timer=timer)
    # The trainer's progress bar would interleave with the report.
    with PeakMemory() as memory, open(os.devnull, "w") as quiet, redirect_stderr(quiet):
        trainer.train()
    for hook in hooks:
        hook.remove()
    measured = timer.section_times[warmup:]
    sections = {}
    for section in ("data", "vision", "forward", "backward", "optimizer"):
        sections[section] = sum(step.get(section, 0.0) for step in measured) / len(measured)
    sections["llm_forward"] = sections.pop("forward") - sections["vision"]
    losses = [row["loss"] for row in read_metrics(trainer.out_dir / "metrics.jsonl")]
    return TrainRun(
        name=name,
        steps=timer.steps[warmup - 1 :],
        sections={key: sections[key] for key in SECTIONS},
        peak_mib=memory.peak_mib,
        losses=losses,
    )


@dataclass
class WholeRun:
    """A whole stage timed from set-up (feature cache build included) to its last step.

    Attributes:
        seconds: wall time of ``set_up_stage``, ``stage_trainer`` and ``Trainer.train``.
        cached: whether the stage read cached features.
        losses: the loss of every step.
    """

    seconds: float
    cached: bool
    losses: list[float]


def time_whole_stage(recipe: RecipeConfig, stage_name: str) -> WholeRun:
    """Run ``stage_name`` from scratch, minus the final checkpoint: the stage's output and
    the recipe's ``OUTPUT_DIR/feature_cache`` (where ``auto`` caches go) are removed first
    (scratch folders), so an ``auto`` cache is built inside the timed run."""
    shutil.rmtree(Path(recipe.output_dir) / "feature_cache", ignore_errors=True)
    shutil.rmtree(recipe.stage_output_dir(stage_name), ignore_errors=True)
    stage = recipe.stages[stage_name]
    runtime = init_distributed()
    started = time.perf_counter()
    ds_config = build_deepspeed_config(stage, runtime.world_size, f"stages.{stage_name}")
    with open(os.devnull, "w") as quiet, redirect_stderr(quiet):  # build and step progress bars
        setup = set_up_stage(recipe, stage_name, ds_config=ds_config)
        trainer = stage_trainer(setup, runtime)
        trainer.train()
    seconds = time.perf_counter() - started
    losses = [row["loss"] for row in read_metrics(trainer.out_dir / "metrics.jsonl")]
    return WholeRun(seconds, setup.dataset.feature_cache is not None, losses)
