"""Choose the attention kernel through transformers' ``attn_implementation`` switch (no patches).

``auto`` picks ``flash_attention_2`` when flash-attn is importable and a CUDA device is present,
else ``sdpa``; a model class without SDPA support falls back to ``eager`` when it is loaded.
An LLM loaded with ``sdpa`` runs ``mllm_packed_sdpa`` once assembled
(``mllm.models.packed_attention``): ``sdpa`` itself, but with per-sample attention on
packed rows.
"""

from __future__ import annotations

import importlib.util
import logging

from mllm.models.packed_attention import PACKED_SDPA

logger = logging.getLogger(__name__)

#: Kernels that compute each sample of a packed row alone, so a row's attention costs the sum
#: of its samples' squared lengths; ``sdpa`` and ``eager`` compute the whole row, masked.
PER_SAMPLE_ATTENTION = ("flash_attention_2", PACKED_SDPA)


class AttentionUnavailableError(RuntimeError):
    """The recipe asked for a kernel that cannot run here and said not to fall back."""


def flash_attention_unavailable_reason() -> str | None:
    """Why FlashAttention-2 cannot run here, or None when flash-attn and CUDA are present."""
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed (pip install 'mllm[flash-attn]', CUDA machines only)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def resolve_attn_implementation(requested: str, fallback: str = "error", key: str = "") -> str:
    """The kernel to ask transformers for, logged.

    Args:
        requested: ``auto``, ``flash_attention_2``, ``sdpa`` or ``eager``.
        fallback: ``error`` raises when FlashAttention was asked for and cannot run;
            ``warn`` logs a warning and uses ``sdpa``.
        key: the recipe key, for messages.

    Returns:
        ``flash_attention_2``, ``sdpa`` or ``eager``.

    Raises:
        AttentionUnavailableError: FlashAttention asked for, unavailable, ``fallback='error'``.
    """
    flash_problem = flash_attention_unavailable_reason()
    if requested == "auto":
        chosen = "flash_attention_2" if flash_problem is None else "sdpa"
        logger.info("%s: auto -> %s%s", key, chosen, f" ({flash_problem})" if flash_problem else "")
        return chosen
    if requested == "flash_attention_2" and flash_problem is not None:
        if fallback == "error":
            raise AttentionUnavailableError(
                f"{key}: flash_attention_2 cannot run here: {flash_problem}; use auto/sdpa, or "
                "set model.llm.attn_fallback: warn"
            )
        logger.warning("%s: flash_attention_2 cannot run here (%s); using sdpa", key, flash_problem)
        return "sdpa"
    logger.info("%s: %s", key, requested)
    return requested


def load_with_attention(load, attn_implementation: str, what: str):
    """Call ``load(attn_implementation=...)``; when SDPA is not supported by the model class,
    load it again with ``eager`` (logged)."""
    try:
        return load(attn_implementation=attn_implementation)
    except ValueError as exc:
        message = str(exc).lower()
        if attn_implementation != "sdpa" or not (
            "sdpa" in message or "scaled_dot_product_attention" in message
        ):
            raise
        logger.warning("%s does not support sdpa (%s); using eager attention", what, exc)
        return load(attn_implementation="eager")
