"""Rebuild the model an mllm checkpoint was trained as, from its saved recipe and weights.

``mllm.load`` is the entry point for any model folder; :func:`load_mllm_checkpoint` is its path
for mllm checkpoints, and what ``mllm merge`` and quantised loading start from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from mllm.checkpoint.layout import RECIPE_NAME, read_manifest
from mllm.checkpoint.weights import load_weights
from mllm.config import RecipeConfig, validate_recipe
from mllm.config.schema import LoraConfig
from mllm.data.recipe_templates import special_tokens_for, stage_template
from mllm.models.assembly import BuiltModel, build_model
from mllm.models.lora import add_adapters


@dataclass
class LoadedModel:
    """A model ready to generate, with what generation needs to know about its training.

    Attributes:
        built: the model, its tokenizer and image processor.
        recipe: the resolved recipe it was trained with.
        template: the conversation template of the saved stage.
        image_aspect_ratio: the image mode (pad / crop / resize / anyres) of the saved stage.
        manifest: the checkpoint's manifest.
        image_grid_pinpoints: under anyres, the stage's grid resolutions ``(height, width)``.
    """

    built: BuiltModel
    recipe: RecipeConfig
    template: str
    image_aspect_ratio: str
    manifest: dict
    image_grid_pinpoints: list[tuple[int, int]] | None = None


def load_mllm_checkpoint(
    folder: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> LoadedModel:
    """Rebuild the model a checkpoint was trained as and load its weights.

    The frozen parts come from the base paths in the saved recipe; the trained parts from
    ``model.safetensors``. An LLM trained with adapters is rebuilt as it was trained (base
    loaded in 4-bit for qlora, the same LoRA layers) before the adapter weights are loaded;
    ``mllm.models.lora.merge_adapters`` folds them in. The template and image preparation are
    those of the saved stage.

    Raises:
        CheckpointError: the folder is not a complete mllm checkpoint.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    recipe_path = folder / RECIPE_NAME
    recipe = validate_recipe(
        yaml.safe_load(recipe_path.read_text()), str(recipe_path), check_files=False
    )
    adapter = manifest.get("adapters", {}).get("llm")
    settings = None
    if adapter is not None:
        settings = LoraConfig(**{k: v for k, v in adapter.items() if k not in ("mode", "base")})
    built = build_model(
        recipe.model,
        dtype=dtype,
        special_tokens=special_tokens_for(recipe),
        quantize_llm=settings if adapter is not None and adapter["mode"] == "qlora" else None,
    )
    if adapter is not None:
        add_adapters(built.model, settings, adapter["mode"])
    load_weights(built.model, folder)
    if adapter is None or adapter["mode"] != "qlora":  # 4-bit weights stay where they loaded
        built.model.to(device)
    built.model.eval()
    stage = recipe.stages[manifest["stage"]]
    return LoadedModel(
        built,
        recipe,
        stage_template(recipe, stage),
        stage.data.image_aspect_ratio,
        manifest,
        stage.data.image_grid_pinpoints,
    )
