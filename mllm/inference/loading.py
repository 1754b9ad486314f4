"""Load an mllm checkpoint folder (stage output or periodic checkpoint) for inference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from mllm.config import RecipeConfig, validate_recipe
from mllm.models.builder import BuiltModel, build_model, special_tokens_for, stage_template
from mllm.training.checkpoint import RECIPE_NAME, load_weights, read_manifest


@dataclass
class LoadedModel:
    built: BuiltModel
    recipe: RecipeConfig
    template: str
    image_aspect_ratio: str
    manifest: dict


def load_checkpoint(
    folder: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> LoadedModel:
    """Rebuild the model a checkpoint was trained as and load its weights.

    The frozen parts come from the base paths in the saved recipe; the trained parts from
    ``model.safetensors``. The template and image preparation are those of the saved stage.

    Raises:
        CheckpointError: the folder is not a complete mllm checkpoint.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    recipe_path = folder / RECIPE_NAME
    recipe = validate_recipe(
        yaml.safe_load(recipe_path.read_text()), str(recipe_path), check_files=False
    )
    built = build_model(recipe.model, dtype=dtype, special_tokens=special_tokens_for(recipe))
    load_weights(built.model, folder)
    built.model.to(device).eval()
    stage = recipe.stages[manifest["stage"]]
    return LoadedModel(
        built, recipe, stage_template(recipe, stage), stage.data.image_aspect_ratio, manifest
    )
