"""Steps that prepare a stage before its first optimizer step."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from mllm.config.checks import STAGE_REFERENCE
from mllm.config.schema import RecipeConfig
from mllm.models.multimodal import MultimodalModel
from mllm.training import checkpoint as ckpt
from mllm.training.deepspeed_config import zero_stage

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_init_from(recipe: RecipeConfig, stage_name: str) -> Path | None:
    """The folder a stage starts from, checked to be a complete checkpoint.

    ``stage:NAME`` means NAME's ``final`` folder under this recipe's ``output_dir``; anything
    else is a path. Raises CheckpointError naming the recipe key when it is missing or partial.
    """
    init_from = recipe.stages[stage_name].init_from
    if init_from is None:
        return None
    if init_from.startswith(STAGE_REFERENCE):
        folder = Path(recipe.stage_output_dir(init_from[len(STAGE_REFERENCE) :])) / "final"
    else:
        folder = Path(init_from)
    try:
        ckpt.read_manifest(folder)
    except ckpt.CheckpointError as exc:
        raise ckpt.CheckpointError(
            f"stages.{stage_name}.init_from={init_from!r}: {exc}. Run that stage first or fix the path."
        ) from None
    return folder


def saved_components(init_folder: Path | None, trained: list[str]) -> list[str]:
    """Components a stage's outputs hold: those trained now plus those its start point held."""
    inherited = ckpt.read_manifest(init_folder)["components"] if init_folder else []
    return [c for c in ("vision", "projector", "llm") if c in trained or c in inherited]


def register_zero3_loading(ds_config: dict):
    """Under ZeRO-3, make ``from_pretrained`` load straight into partitioned parameters.

    Returns an object that must stay referenced while the model is alive (or None).
    """
    if zero_stage(ds_config) != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def enable_gradient_checkpointing(model: MultimodalModel) -> None:
    """Recompute activations of the LLM (and a trained tower) in backward to save memory.

    Non-reentrant checkpointing gives correct gradients even when the inputs (frozen
    embeddings) do not require grad, so no input-grad hook is needed.
    """
    modules = [model.llm]
    if any(p.requires_grad for p in model.vision.parameters()):
        modules.append(model.vision.encoder)
    for module in modules:
        if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x name
            module.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            module.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
