"""Tiny, randomly initialised models written as real Hugging Face model folders.

Tests and the CPU demo load them with ``from_pretrained(folder)``, exactly like downloaded
checkpoints, so the code under test never takes a shortcut that a real model would not.
Nothing here touches the network. CPU-sized command::

    mllm make-tiny tiny_models/ --image-size 64     (or: python -m mllm.tiny ...)
"""

from __future__ import annotations

from mllm.tiny.models import (
    MANIFEST_NAME,
    VisionKind,
    make_tiny_llm,
    make_tiny_models,
    make_tiny_vision_tower,
)
from mllm.tiny.tokenizer import BOS_ID, EOS_ID, SYSTEM_PROMPT, UNK_ID, train_tiny_tokenizer

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "MANIFEST_NAME",
    "SYSTEM_PROMPT",
    "UNK_ID",
    "VisionKind",
    "make_tiny_llm",
    "make_tiny_models",
    "make_tiny_vision_tower",
    "train_tiny_tokenizer",
]
