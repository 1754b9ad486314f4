"""What the foreign loaders share: the recipe that describes an imported model, its tokenizer,
and joining loaded parts into a ``LoadedModel`` the way ``build_model`` joins them.

An imported model gets a recipe like a trained one (tower, projector, LLM family, template,
image mode), with one stage named ``imported`` whose data section only carries the template
and image mode; inference, evaluation and export read these fields and nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mllm.checkpoint import LoadedModel
from mllm.config import RecipeConfig, validate_recipe
from mllm.data.recipe_templates import special_tokens_for, stage_template
from mllm.interop.detect import ForeignFormatError
from mllm.models.anyres import SpatialUnpad
from mllm.models.assembly import BuiltModel, grow_embeddings
from mllm.models.catalog import PROJECTORS
from mllm.models.llm import load_tokenizer
from mllm.models.multimodal import MultimodalModel
from mllm.models.vision.base import VisionTower

logger = logging.getLogger(__name__)

IMPORTED_STAGE = "imported"


def imported_recipe(
    source: Path,
    *,
    vision: dict,
    projector: dict,
    llm: dict,
    image_token: str,
    template: str | None,
    image_aspect_ratio: str,
    image_grid_pinpoints: list[list[int]] | None = None,
) -> RecipeConfig:
    """A validated recipe describing a model read from ``source``.

    ``image_grid_pinpoints`` makes it an anyres model with LLaVA-NeXT's ``spatial_unpad``
    merge (the only one transformers' LlavaNext computes).

    Raises:
        RecipeError: a field does not validate (an unknown template, for instance).
    """
    model = {"vision": vision, "projector": projector, "llm": llm, "image_token": image_token}
    data = {"path": [], "template": template, "image_aspect_ratio": image_aspect_ratio}
    if image_grid_pinpoints is not None:
        model["mm_patch_merge_type"] = "spatial_unpad"
        data["image_grid_pinpoints"] = image_grid_pinpoints
    raw = {
        "name": source.name,
        "output_dir": str(source),
        "model": model,
        "stages": {
            IMPORTED_STAGE: {
                "data": data,
                "optim": {"lr": 1e-5},
                "global_batch_size": 1,
                "micro_batch_size": 1,
            }
        },
    }
    return validate_recipe(raw, f"{source} (imported)", check_files=False)


def load_imported_tokenizer(recipe: RecipeConfig) -> PreTrainedTokenizerBase:
    """The tokenizer at ``model.llm.path`` with the image and template tokens, as mllm builds it."""
    return load_tokenizer(recipe.model.llm, recipe.model.image_token, special_tokens_for(recipe))


def assemble(
    recipe: RecipeConfig,
    *,
    vision: VisionTower,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    projector_state: dict[str, torch.Tensor],
    projector_source: str,
    dtype: torch.dtype,
    device: str,
    quantized: bool,
    manifest: dict,
) -> LoadedModel:
    """Build the projector from ``projector_state``, join the parts and wrap them for inference.

    The vocabulary grows for tokens the tokenizer gained, with the rows ``build_model`` adds
    (same seed), so an exported or re-imported model has the same embeddings.

    Raises:
        ForeignFormatError: the projector tensors do not fit the projector the config names.
    """
    grow_embeddings(llm, len(tokenizer))
    llm.config.pad_token_id = tokenizer.pad_token_id
    settings = recipe.model.projector
    projector = PROJECTORS.get(settings.name).target(
        settings,
        vision_dim=vision.hidden_size,
        llm_dim=llm.config.get_text_config().hidden_size,
        num_patches=vision.num_patches,
    )
    merge = recipe.model.mm_patch_merge_type
    if merge == "spatial_unpad":
        projector.patch_merge = SpatialUnpad(projector.llm_dim)
    projector = projector.to(dtype)
    try:
        projector.load_state_dict(
            {name: tensor.to(dtype) for name, tensor in projector_state.items()}, strict=True
        )
    except RuntimeError as exc:
        raise ForeignFormatError(
            f"{projector_source}: the projector tensors do not fit a {settings.name!r} projector "
            f"from {vision.hidden_size} to {llm.config.get_text_config().hidden_size} "
            f"features: {exc}"
        ) from None
    image_token_id = tokenizer.convert_tokens_to_ids(recipe.model.image_token)
    model = MultimodalModel(
        vision, projector, llm, image_token_id=image_token_id, patch_merge=merge
    )
    if quantized:  # the quantised LLM was loaded onto the device
        model.vision.to(device)
        model.projector.to(device)
    else:
        model.to(device)
    model.eval()
    built = BuiltModel(model, tokenizer, vision.image_processor, recipe.model.image_token)
    stage = recipe.stages[IMPORTED_STAGE]
    logger.info(
        "loaded %s (%s): %s tower -> %s projector -> %s LLM; template %s, images %s",
        manifest["source"],
        manifest["format"],
        recipe.model.vision.name,
        settings.name,
        recipe.model.llm.family,
        stage_template(recipe, stage),
        stage.data.image_aspect_ratio,
    )
    return LoadedModel(
        built,
        recipe,
        stage_template(recipe, stage),
        stage.data.image_aspect_ratio,
        manifest,
        stage.data.image_grid_pinpoints,
    )


def imported_manifest(source: Path, kind: str, prompt_tokenization: str) -> dict:
    """The manifest of an imported model: where it came from and how prompts are tokenized.

    ``prompt_tokenization`` is ``llava`` when prompts must be split at the image marker and
    each piece tokenized alone, as LLaVA's own code does (see ``llava_prompt_ids``), and
    ``mllm`` when the prompt is tokenized once with the image marker as a special token.
    """
    return {
        "format": kind,
        "source": str(source),
        "stage": IMPORTED_STAGE,
        "step": 0,
        "components": [],
        "adapters": {},
        "prompt_tokenization": prompt_tokenization,
    }
