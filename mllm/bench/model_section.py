"""The ``model`` section every benchmark recipe shares: a CLIP tower (LLaVA's penultimate
layer), LLaVA-1.5's two-layer MLP projector and a Llama, from folders the benchmark made."""

from __future__ import annotations

from pathlib import Path


def llava_model_section(models: dict[str, Path], **llm_options: object) -> dict:
    """``model`` for the towers in ``models`` (``{"clip": path, "llama": path}``); extra
    ``model.llm`` keys such as ``attn_implementation`` come from ``llm_options``."""
    return {
        "vision": {"name": "clip", "path": str(models["clip"]), "feature_layer": -2},
        "projector": {"name": "mlp", "depth": 2},
        "llm": {"path": str(models["llama"]), "family": "llama", **llm_options},
    }
