"""An LLM's linear layers in 4 or 8 bits through bitsandbytes: the modes, whether this machine
can honour them, and the ``from_pretrained`` options that load an LLM so.

Used by every loader that quantises: mllm checkpoints (``mllm.inference.quantize``) and the
folders of other codebases (``mllm.interop``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from mllm.models.llm import bitsandbytes_config, disable_cpu_repacking

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
