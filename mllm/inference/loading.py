"""Load a model folder for inference: an mllm checkpoint, a merged model, or a foreign layout.

``load_model`` is the entry point of ``mllm chat`` and ``mllm serve``: it loads mllm
checkpoints (stage outputs, periodic checkpoints, LoRA/QLoRA runs, ``mllm merge`` outputs)
through :func:`load_checkpoint` and hands every other folder to ``mllm.interop`` (LLaVA's
original layout, transformers' Llava folders). Optionally the LLM is quantised to 4 or 8 bits.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from mllm.config import RecipeConfig, validate_recipe
from mllm.config.schema import LoraConfig
from mllm.models.builder import BuiltModel, build_model, special_tokens_for, stage_template
from mllm.models.lora import add_adapters
from mllm.training.checkpoint import (
    FORMAT,
    MANIFEST_NAME,
    RECIPE_NAME,
    CheckpointError,
    load_weights,
    read_manifest,
)


@dataclass
class LoadedModel:
    """A model ready to generate, with what generation needs to know about its training.

    Attributes:
        built: the model, its tokenizer and image processor.
        recipe: the resolved recipe it was trained with.
        template: the conversation template of the saved stage.
        image_aspect_ratio: the image mode (pad / crop / resize) of the saved stage.
        manifest: the checkpoint's manifest.
    """

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
        built, recipe, stage_template(recipe, stage), stage.data.image_aspect_ratio, manifest
    )


def is_mllm_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` says it is an mllm checkpoint (its manifest has mllm's format).

    A complete-looking manifest is enough: an incomplete mllm checkpoint should fail with
    :func:`load_checkpoint`'s message, not be handed to the foreign-layout loaders.
    """
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: let read_manifest say what is wrong with it


def _foreign_loader():
    """``mllm.interop.load_foreign`` where this install has it, else ``None``."""
    try:
        interop = importlib.import_module("mllm.interop")
    except ModuleNotFoundError as exc:
        if exc.name in ("mllm.interop", "mllm"):
            return None
        raise
    return getattr(interop, "load_foreign", None)


def _checkpoints_inside(folder: Path) -> str:
    """``"; checkpoints inside it: ..."`` for a run or stage folder given by mistake, else ``""``."""
    inside = sorted(p.parent for p in folder.glob(f"*/{MANIFEST_NAME}"))
    inside += sorted(p.parent for p in folder.glob(f"*/*/{MANIFEST_NAME}"))
    return f"; checkpoints inside it: {', '.join(map(str, inside[:3]))}" if inside else ""


def load_model(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    quantize: str | None = None,
) -> LoadedModel:
    """Load any model folder mllm can generate with.

    Args:
        folder: an mllm checkpoint (stage output ``RUN/STAGE/final``, periodic checkpoint,
            LoRA/QLoRA run, ``mllm merge`` output), or a LLaVA / transformers Llava folder.
        dtype: parameter dtype (and the compute dtype of a quantised LLM).
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``).
        quantize: ``"4bit"`` (NF4) or ``"8bit"`` for the LLM's linear layers (bitsandbytes);
            the vision tower and projector stay in ``dtype``.

    Returns:
        The model in eval mode, with its template and image mode.

    Raises:
        CheckpointError: the folder is missing, or no layout mllm reads (the message names it).
        QuantizationUnavailableError: ``quantize`` was asked for where bitsandbytes cannot run.
    """
    folder = Path(folder)
    if quantize is not None:
        from mllm.inference.quantize import check_quantization

        check_quantization(quantize)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    if is_mllm_checkpoint(folder):
        if quantize is None:
            return load_checkpoint(folder, dtype=dtype, device=device)
        from mllm.inference.quantize import load_quantized_checkpoint

        return load_quantized_checkpoint(folder, quantize=quantize, dtype=dtype, device=device)
    load_foreign = _foreign_loader()
    if load_foreign is None:
        raise CheckpointError(
            f"{folder}: not an mllm checkpoint (no {MANIFEST_NAME}); this install of mllm cannot "
            f"read LLaVA or transformers Llava folders{_checkpoints_inside(folder)}"
        )
    try:
        return load_foreign(folder, dtype=dtype, device=device, quantize=quantize)
    except ValueError as exc:
        hint = _checkpoints_inside(folder)
        if hint:
            raise CheckpointError(f"{exc}{hint}") from exc
        raise
