"""Steps that prepare a stage before its first optimizer step."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from mllm.config.checks import STAGE_REFERENCE
from mllm.config.schema import LoraConfig, RecipeConfig
from mllm.models.lora import add_adapters, merge_adapters
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


def completed_output(recipe: RecipeConfig, stage_name: str) -> Path | None:
    """The stage's ``final`` folder if it is complete (``--resume`` then skips the stage)."""
    folder = Path(recipe.stage_output_dir(stage_name)) / "final"
    try:
        ckpt.read_manifest(folder)
    except ckpt.CheckpointError:
        return None
    return folder


def load_start_point(model: MultimodalModel, folder: Path, key: str, llm_mode: str) -> None:
    """Load a stage's ``init_from`` folder into ``model`` (collective under ZeRO-3).

    An LLM saved with LoRA adapters is rebuilt with the same adapters, loaded, and the adapters
    are merged into its weights: the new stage starts from a plain LLM and applies its own tune
    mode (full, frozen, or fresh adapters). Its outputs then hold the whole LLM, since the base
    is no longer the pretrained one.

    Raises:
        CheckpointError: the folder holds QLoRA adapters (merge them with ``mllm merge`` and
            start from the merged LLM), or a qlora stage would start from trained LLM weights.
    """
    manifest = ckpt.read_manifest(folder)
    adapters = manifest.get("adapters", {})
    entry = adapters.get("llm")
    if "llm" in manifest["components"] and llm_mode == "qlora":
        raise ckpt.CheckpointError(
            f"{key}: {folder} holds trained LLM weights, but qlora quantises the base of "
            "model.llm.path; export them with `mllm merge` and set model.llm.path to DIR/llm"
        )
    if entry is not None and entry["mode"] == "qlora":
        raise ckpt.CheckpointError(
            f"{key}: {folder} holds QLoRA adapters of a 4-bit base; run `mllm merge {folder} "
            "--out DIR` and set model.llm.path to DIR/llm (the dequantised, merged LLM)"
        )
    if entry is not None:
        settings = {k: v for k, v in entry.items() if k not in ("mode", "base")}
        add_adapters(model, LoraConfig(**settings), entry["mode"])
    ckpt.load_weights(model, folder)
    if entry is not None:
        with ckpt.gathered_parameters(list(model.llm.parameters()), modify=True):
            merge_adapters(model)
        logger.info("%s: merged the LoRA adapters of %s into the LLM", key, folder)
    if "llm" in manifest["components"]:
        setattr(model.llm, ckpt.BASE_FROM_CHECKPOINT, True)


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
