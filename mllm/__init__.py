"""mllm: train LLaVA / MiniGPT-4 / BLIP-2 style multimodal LLMs from typed YAML recipes.

``mllm.load(folder, dtype=..., device=..., quantize=None)`` loads any model folder mllm reads
(an mllm checkpoint, an original LLaVA or a transformers Llava folder); it is imported on first
use, so ``import mllm`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mllm.inference.loading import load

__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from mllm.inference.loading import load

        return load
    raise AttributeError(f"module 'mllm' has no attribute {name!r}")
