"""Checkpoints of other codebases: original LLaVA folders and transformers' Llava ("llava-hf")
and LlavaNext ("llava-next-hf").

``load_llava_folder`` reads either into an mllm model (``mllm.load`` hands it every folder that
is not an mllm checkpoint); ``mllm export`` writes the llava-hf layout; ``mllm convert-llava``
turns LLaVA's pickled weights into safetensors once. The layout is told from the files' contents
(``detect_format``), never from the folder's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mllm.interop.detect import FolderFormat, ForeignFormatError, detect_format

if TYPE_CHECKING:
    from mllm.checkpoint import LoadedModel

__all__ = ["FolderFormat", "ForeignFormatError", "detect_format", "load_llava_folder"]


def load_llava_folder(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    quantize: str | None = None,
    vision_tower_path: str | None = None,
    base_llm: str | None = None,
    template: str | None = None,
) -> LoadedModel:
    """Load an original LLaVA checkpoint or a transformers Llava folder for inference.

    Args:
        folder: the model folder.
        dtype: parameter dtype.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``).
        quantize: ``4bit`` (NF4) or ``8bit`` for the LLM's linear layers (bitsandbytes); the
            tower and projector stay in ``dtype``.
        vision_tower_path: LLaVA only: a local copy of the tower its config names by hub id.
        base_llm: LLaVA only: the LLM a projector-only (stage-1) checkpoint was trained on.
        template: the conversation template, when the folder's default is not the right one.

    Returns:
        The model as ``mllm.checkpoint.load_mllm_checkpoint`` returns one; its manifest says
        ``format`` (``llava`` / ``llava-hf``), ``source`` and ``prompt_tokenization``.

    Raises:
        ValueError: ``quantize`` is not ``4bit``, ``8bit`` or ``None``.
        QuantizationUnavailableError: ``quantize`` was asked for where bitsandbytes cannot run.
        ForeignFormatError: the folder is neither layout, holds only pickled weights (the
            message gives the ``mllm convert-llava`` command), or uses a feature mllm cannot
            reproduce (the message names the config key).
    """
    if quantize is not None:
        from mllm.models.quantization import check_quantization

        check_quantization(quantize)
    folder = Path(folder).resolve()
    kind = detect_format(folder)
    if kind == "llava":
        from mllm.interop.llava import load_llava

        return load_llava(
            folder,
            dtype=dtype,
            device=device,
            quantize=quantize,
            vision_tower_path=vision_tower_path,
            base_llm=base_llm,
            template=template,
        )
    if kind in ("llava-hf", "llava-next-hf"):
        if vision_tower_path or base_llm:
            raise ForeignFormatError(
                f"{folder}: a transformers Llava folder holds its tower and LLM; "
                "vision_tower_path and base_llm are for original LLaVA checkpoints"
            )
        from mllm.interop.hf_llava import load_hf_llava

        return load_hf_llava(
            folder, dtype=dtype, device=device, quantize=quantize, template=template, kind=kind
        )
    raise ForeignFormatError(f"{folder}: an mllm checkpoint; load it with mllm.load")
