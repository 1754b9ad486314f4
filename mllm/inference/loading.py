"""Load a model folder for inference: an mllm checkpoint, a merged model, or a foreign layout.

:func:`load` (``mllm.load``) is the one loader of the package and of ``mllm chat``, ``mllm
serve`` and ``mllm eval``: it tells the layout from the folder's content, loads mllm checkpoints
(stage outputs, periodic checkpoints, LoRA/QLoRA runs, ``mllm merge`` outputs) through
``mllm.checkpoint.load_mllm_checkpoint`` and hands every other folder to
``mllm.interop.load_llava_folder`` (LLaVA's original layout, transformers' Llava folders).
Optionally the LLM is quantised to 4 or 8 bits. The commands' shared model options are in
``mllm.commands.model_options``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mllm.checkpoint import (
    FORMAT,
    MANIFEST_NAME,
    CheckpointError,
    LoadedModel,
    load_mllm_checkpoint,
)
from mllm.inference.quantize import load_mllm_checkpoint_quantized
from mllm.interop import load_llava_folder
from mllm.models.llm import configure_cpu_4bit_kernels
from mllm.models.quantization import check_quantization

logger = logging.getLogger(__name__)


def is_mllm_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` says it is an mllm checkpoint (its manifest has mllm's format).

    A complete-looking manifest is enough: an incomplete mllm checkpoint should fail with
    :func:`load_mllm_checkpoint`'s message, not be handed to the foreign-layout loaders.
    """
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: let read_manifest say what is wrong with it


def _checkpoints_inside(folder: Path) -> str:
    """``"; checkpoints inside it: ..."`` for a run or stage folder given by mistake, else ``""``."""
    inside = sorted(p.parent for p in folder.glob(f"*/{MANIFEST_NAME}"))
    inside += sorted(p.parent for p in folder.glob(f"*/*/{MANIFEST_NAME}"))
    return f"; checkpoints inside it: {', '.join(map(str, inside[:3]))}" if inside else ""


def load(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    quantize: str | None = None,
    vision_tower_path: str | None = None,
    base_llm: str | None = None,
    template: str | None = None,
) -> LoadedModel:
    """Load any model folder mllm can generate with.

    Args:
        folder: an mllm checkpoint (stage output ``RUN/STAGE/final``, periodic checkpoint,
            LoRA/QLoRA run, ``mllm merge`` output), or a LLaVA / transformers Llava folder.
        dtype: parameter dtype (and the compute dtype of a quantised LLM).
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``).
        quantize: ``"4bit"`` (NF4) or ``"8bit"`` for the LLM's linear layers (bitsandbytes);
            the vision tower and projector stay in ``dtype``.
        vision_tower_path, base_llm, template: for foreign folders, passed on to
            ``mllm.interop.load_llava_folder`` (a local copy of the tower an original LLaVA config
            names by hub id; the LLM a projector-only LLaVA folder was trained on; a template
            other than the folder's default). An mllm checkpoint knows all three.

    Returns:
        The model in eval mode, with its template and image mode.

    Raises:
        CheckpointError: the folder is missing, or no layout mllm reads (the message names it),
            or foreign-folder options were given for an mllm checkpoint.
        QuantizationUnavailableError: ``quantize`` was asked for where bitsandbytes cannot run.
    """
    folder = Path(folder)
    if quantize is not None:
        check_quantization(quantize)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    foreign = {"vision_tower_path": vision_tower_path, "base_llm": base_llm, "template": template}
    if is_mllm_checkpoint(folder):
        given = [name for name, value in foreign.items() if value is not None]
        if given:
            raise CheckpointError(
                f"{folder}: an mllm checkpoint records its tower, LLM and template; "
                f"{', '.join(given)} only apply to LLaVA and transformers Llava folders"
            )
        if quantize is None:
            loaded = load_mllm_checkpoint(folder, dtype=dtype, device=device)
        else:
            loaded = load_mllm_checkpoint_quantized(
                folder, quantize=quantize, dtype=dtype, device=device
            )
        return _for_inference(loaded)
    try:
        loaded = load_llava_folder(folder, dtype=dtype, device=device, quantize=quantize, **foreign)
    except ValueError as exc:
        hint = _checkpoints_inside(folder)
        if hint:
            raise CheckpointError(f"{exc}{hint}") from exc
        raise
    return _for_inference(loaded)


def _for_inference(loaded: LoadedModel) -> LoadedModel:
    """Nothing trains through a model loaded here: its 4-bit layers (a QLoRA run, or
    ``quantize="4bit"``) may use bitsandbytes' CPU kernel where it fits them."""
    configure_cpu_4bit_kernels(loaded.built.model, inference=True)
    tower_weight = next(loaded.built.model.vision.parameters())
    logger.info(
        "device: %s (%s)", tower_weight.device, str(tower_weight.dtype).removeprefix("torch.")
    )
    return loaded
