"""The component tables recipes pick from. Importing this module registers the built-ins."""

from __future__ import annotations

from mllm.registry import Registry

VISION_TOWERS: Registry = Registry("vision tower")
PROJECTORS: Registry = Registry("projector")

# Each import below registers one implementation; adding a component is one file plus one line.
from mllm.models.projectors import (  # noqa: E402,F401
    abstractor,
    c_abstractor,
    ldp,
    linear,
    mlp,
    qformer,
)
from mllm.models.vision import clip, dinov2, eva_clip, siglip  # noqa: E402,F401
