"""One stage, from recipe to checkpoint: the single set-up that training, the benchmark and
``mllm cache-features`` share.

    recipe ──> model (ZeRO-3: loaded partitioned) ──> start point (init_from) ──> tune modes
           ──> activation checkpointing, compiled blocks (stages.S.compile)
           ──> training and held-out data (feature cache) ──> Trainer ──> train ──> STAGE/final

:func:`set_up_stage` does everything before the optimizer exists; :func:`stage_trainer` adds
the DeepSpeed engine; :func:`run_stage` runs and saves. Callers that need less stop earlier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm.config import RecipeConfig
from mllm.config.schema import StageConfig
from mllm.data.dataset import ConversationDataset
from mllm.data.feature_cache import BUILD_BATCH_SIZE
from mllm.data.recipe_templates import special_tokens_for, stage_template
from mllm.data.stage_data import build_stage_datasets, stage_collator
from mllm.models.assembly import DTYPES, BuiltModel, build_model
from mllm.models.compile import compile_regions
from mllm.models.lora import lora_settings
from mllm.training.deepspeed_config import build_deepspeed_config
from mllm.training.distributed import Runtime
from mllm.training.setup import (
    AUTO_CACHE,
    attach_feature_cache,
    completed_output,
    enable_gradient_checkpointing,
    feature_cache_wanted,
    load_start_point,
    register_zero3_loading,
    resolve_init_from,
    saved_components,
    seed_everything,
)
from mllm.training.stage import apply_stage
from mllm.training.timing import NullTimer
from mllm.training.trainer import Trainer
from mllm.training.validation import Validator

logger = logging.getLogger(__name__)


@dataclass
class StageSetup:
    """A stage ready for its optimizer: the model with its start point and tune modes, and
    its data.

    Attributes:
        zero3_loading: transformers' ZeRO-3 switch (``HfDeepSpeedConfig``); it must stay
            referenced while the model lives, so the set-up holds it.
    """

    recipe: RecipeConfig
    name: str
    built: BuiltModel
    template: str
    init_folder: Path | None
    dataset: ConversationDataset
    held_out: ConversationDataset | None
    ds_config: dict | None
    zero3_loading: Any = None

    @property
    def stage(self) -> StageConfig:
        return self.recipe.stages[self.name]

    @property
    def saved_components(self) -> list[str]:
        """Components the stage's outputs hold: trained now, or by the start point."""
        trained = [c for c, mode in self.stage.train.modes().items() if mode != "frozen"]
        return saved_components(self.init_folder, trained)


def set_up_stage(
    recipe: RecipeConfig,
    name: str,
    *,
    ds_config: dict | None = None,
    feature_cache: bool = True,
    cache_batch_size: int = BUILD_BATCH_SIZE,
) -> StageSetup:
    """Build stage ``name``'s model, load its start point, apply its tune modes and build its
    data (collective under ``torch.distributed`` when a feature cache is built or ZeRO-3
    partitions the model).

    Args:
        ds_config: the stage's DeepSpeed config; under ZeRO-3 the model loads partitioned.
        feature_cache: open (building if needed) the stage's feature cache when
            ``data.feature_cache`` names a folder, or is ``auto`` and the tower is frozen
            and the stage passes over its data more than once (``feature_cache_wanted``).
        cache_batch_size: images per tower call when the cache is built.

    Raises:
        CheckpointError: ``init_from`` is not a complete checkpoint or cannot start this stage.
        DataError, LabelRuleError, FeatureCacheError: the stage's data (see ``build_dataset``).
    """
    stage = recipe.stages[name]
    init_folder = resolve_init_from(recipe, name)
    seed_everything(recipe.seed)
    zero3_loading = register_zero3_loading(ds_config) if ds_config is not None else None
    lora = lora_settings(recipe, name)
    built = build_model(
        recipe.model,
        dtype=DTYPES[stage.precision],
        special_tokens=special_tokens_for(recipe),
        quantize_llm=lora if stage.train.llm == "qlora" else None,
    )
    if init_folder is not None:
        load_start_point(built.model, init_folder, f"stages.{name}.init_from", stage.train.llm)
    apply_stage(
        built.model, stage.train, lora, stage.frozen_modules, key=f"stages.{name}.frozen_modules"
    )
    if stage.gradient_checkpointing:
        enable_gradient_checkpointing(built.model)
    if stage.compile:  # last: the blocks it compiles hold their adapters and checkpointing
        compile_regions(built.model)
    template = stage_template(recipe, stage)
    dataset, held_out = build_stage_datasets(stage, built, template, recipe.seed)
    key = f"stages.{name}.data.feature_cache"
    wanted, reason = feature_cache_wanted(stage, dataset)
    if feature_cache and wanted:
        if stage.data.feature_cache == AUTO_CACHE:
            logger.info("%s: auto -> cached: %s", key, reason)
        attach_feature_cache(
            dataset,
            stage.data,
            built.model,
            key,
            batch_size=cache_batch_size,
            auto_root=Path(recipe.output_dir) / "feature_cache" / name,
        )
    elif feature_cache and stage.data.feature_cache == AUTO_CACHE:
        logger.info("%s: auto -> the tower runs: %s", key, reason)
    return StageSetup(
        recipe, name, built, template, init_folder, dataset, held_out, ds_config, zero3_loading
    )


def stage_trainer(
    setup: StageSetup, runtime: Runtime, *, timer: NullTimer | None = None
) -> Trainer:
    """The DeepSpeed engine and loop for a set-up stage, validating when it has held-out data."""
    stage, ds_config = setup.stage, setup.ds_config
    if ds_config is None:
        ds_config = build_deepspeed_config(stage, runtime.world_size, f"stages.{setup.name}")
    validator = None
    if setup.held_out is not None:
        assert stage.eval is not None  # build_stage_datasets holds data out only then
        validator = Validator(
            setup.held_out,
            stage.eval,
            built=setup.built,
            recipe=setup.recipe,
            template=setup.template,
            runtime=runtime,
        )
    return Trainer(
        recipe=setup.recipe,
        stage_name=setup.name,
        built=setup.built,
        dataset=setup.dataset,
        collator=stage_collator(
            stage, setup.built, setup.dataset.lengths, f"stages.{setup.name}.data.packing"
        ),
        ds_config=ds_config,
        runtime=runtime,
        saved_components=setup.saved_components,
        timer=timer,
        validator=validator,
    )


def run_stage(recipe: RecipeConfig, name: str, runtime: Runtime, *, resume: bool = False) -> None:
    """Train stage ``name`` and write ``STAGE/final`` (collective: every rank calls it).

    With ``resume``, a stage whose ``final`` exists is skipped and an unfinished one continues
    from its newest checkpoint.

    Raises:
        TrainingInterrupted: a stop signal arrived; a resumable checkpoint was written.
    """
    if resume and completed_output(recipe, name):
        logger.info("stage %s is complete; resuming after it", name)
        return
    ds_config = build_deepspeed_config(recipe.stages[name], runtime.world_size, f"stages.{name}")
    setup = set_up_stage(recipe, name, ds_config=ds_config)
    trainer = stage_trainer(setup, runtime)
    if resume:
        trainer.resume()
    metrics = trainer.train()
    trainer.save_final(metrics)
