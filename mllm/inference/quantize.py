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
import importlib.util
import logging
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from mllm.checkpoint import LoadedModel, load_mllm_checkpoint, read_manifest
from mllm.models.llm import bitsandbytes_config, disable_cpu_repacking
from mllm.models.lora import merge_adapters

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("4bit", "8bit")


class QuantizationUnavailableError(RuntimeError):
    """4-bit or 8-bit loading was asked for where bitsandbytes cannot run."""


def check_quantization(quantize: str) -> None:
    """Fail early, before any weights load, when ``quantize`` cannot be honoured here.

    Raises:
        ValueError: ``quantize`` is not one of :data:`QUANTIZE_MODES`.
        QuantizationUnavailableError: bitsandbytes is missing or does not import.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r}; choose one of: {', '.join(QUANTIZE_MODES)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailableError(
            f"{quantize} loading needs bitsandbytes, which is not installed: "
            "pip install 'mllm[bitsandbytes]' (or load without quantisation)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # bitsandbytes raises several kinds when its backend is missing
        raise QuantizationUnavailableError(
            f"{quantize} loading needs bitsandbytes, which cannot run here: {exc}"
        ) from exc


def llm_load_options(
    dtype: torch.dtype,
    quantize: str | None,
    device: str,
    skip_modules: list[str] | None = None,
) -> dict:
    """``from_pretrained`` options for an LLM in ``dtype``, quantised when ``quantize`` is set.

    Args:
        dtype: parameter dtype (and the compute dtype of 4-bit layers).
        quantize: ``None``, ``"4bit"`` (NF4 with double quantisation) or ``"8bit"``.
        device: where a quantised model is placed (bitsandbytes quantises while loading).
        skip_modules: modules left unquantised (see ``mllm.models.llm.bitsandbytes_config``).

    Raises:
        ValueError: ``quantize`` is not one of :data:`QUANTIZE_MODES`.
    """
    if quantize is None:
        return {"dtype": dtype}
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r}; choose one of: {', '.join(QUANTIZE_MODES)}")
    return {
        "dtype": dtype,
        "quantization_config": bitsandbytes_config(quantize, dtype, skip_modules=skip_modules),
        "device_map": {"": device},
    }


def load_quantized_llm(
    path: str | Path, quantize: str, *, dtype: torch.dtype, device: str, attn_implementation: str
):
    """A transformers causal LM from ``path`` with its linear layers in 4 or 8 bits.

    Raises:
        QuantizationUnavailableError: bitsandbytes refused to quantise on this machine.
    """
    try:
        llm = AutoModelForCausalLM.from_pretrained(
            str(path),
            **llm_load_options(dtype, quantize, device),
            attn_implementation=attn_implementation,
        )
    except (ImportError, RuntimeError) as exc:
        raise QuantizationUnavailableError(
            f"bitsandbytes could not load the LLM in {quantize} on {device}: {exc}"
        ) from exc
    # like every 4-bit loader: the trainable path; mllm.load picks the inference kernels
    disable_cpu_repacking(llm)
    return llm


def load_mllm_checkpoint_quantized(
    folder: Path, *, quantize: str, dtype: torch.dtype, device: str
) -> LoadedModel:
    """Load an mllm checkpoint with its LLM quantised (see the module docstring).

    Raises:
        CheckpointError: the folder is not a complete mllm checkpoint.
        QuantizationUnavailableError: bitsandbytes cannot quantise here.
    """
    check_quantization(quantize)
    adapter = read_manifest(folder).get("adapters", {}).get("llm")
    if quantize == "4bit" and adapter is not None and adapter["mode"] == "qlora":
        logger.info("%s: QLoRA checkpoint, loaded as trained (4-bit base + adapters)", folder)
        return load_mllm_checkpoint(folder, dtype=dtype, device=device)
    loaded = load_mllm_checkpoint(folder, dtype=dtype, device="cpu")
    model = loaded.built.model
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
