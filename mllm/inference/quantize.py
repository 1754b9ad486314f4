"""4-bit / 8-bit inference: the LLM's linear layers through bitsandbytes, the rest untouched.

A checkpoint's LLM is usually not the model at ``model.llm.path`` any more (trained in full,
or with adapters), so it is first rebuilt exactly as trained, in ``dtype`` on the CPU, with any
adapters merged; it is then written to a temporary folder and loaded back quantised through
transformers' own bitsandbytes integration. Peak memory is the unquantised model in CPU RAM;
the accelerator only ever holds the quantised one. A QLoRA checkpoint asked for in 4-bit is
loaded as it was trained (its 4-bit base and adapters), which is exactly the trained model.
Like every 4-bit loader this leaves the layers on bitsandbytes' trainable CPU path;
``mllm.load`` then lets those that fit use the AVX512-BF16 kernel
(``mllm.models.llm.configure_cpu_4bit_kernels`` holds the rule).
"""

from __future__ import annotations

import gc
import logging
import tempfile
from pathlib import Path

import torch

from mllm.checkpoint import LoadedModel, load_mllm_checkpoint, read_manifest
from mllm.models.lora import merge_adapters
from mllm.models.quantization import (
    QuantizationUnavailableError,
    check_quantization,
    load_quantized_llm,
)

logger = logging.getLogger(__name__)


def load_mllm_checkpoint_quantized(
    folder: Path, *, quantize: str, dtype: torch.dtype, device: str
) -> LoadedModel:
    """Load an mllm checkpoint with its LLM quantised (see the module docstring).

    Raises:
        CheckpointError: the folder is not a complete mllm checkpoint.
        QuantizationUnavailableError: bitsandbytes cannot quantise here, or the model is
            modality-adaptive.
    """
    check_quantization(quantize)
    adapter = read_manifest(folder).get("adapters", {}).get("llm")
    if quantize == "4bit" and adapter is not None and adapter["mode"] == "qlora":
        logger.info("%s: QLoRA checkpoint, loaded as trained (4-bit base + adapters)", folder)
        return load_mllm_checkpoint(folder, dtype=dtype, device=device)
    loaded = load_mllm_checkpoint(folder, dtype=dtype, device="cpu")
    model = loaded.built.model
    if model.modality_adaptive:  # a reload through transformers would drop the visual copies
        raise QuantizationUnavailableError(
            f"{folder}: model.llm.modality_adaptive models load unquantised only (their visual "
            "copies are not part of a transformers LLM)"
        )
    merge_adapters(model)
    attn_implementation = model.llm.config._attn_implementation or "sdpa"
    with tempfile.TemporaryDirectory(prefix="mllm-quantize-") as tmp:
        model.llm.save_pretrained(tmp)
        model.llm = None  # free the unquantised weights before loading the quantised ones
        gc.collect()
        llm = load_quantized_llm(
            tmp, quantize, dtype=dtype, device=device, attn_implementation=attn_implementation
        )
    llm.eval()
    model.llm = llm
    model.vision.to(device)
    model.projector.to(device)
    logger.info("%s: LLM loaded in %s on %s", folder, quantize, device)
    return loaded
