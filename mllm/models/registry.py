"""The component tables recipes pick from. Importing this module registers the built-ins."""

from __future__ import annotations

from mllm.registry import Registry

VISION_TOWERS: Registry = Registry("vision tower")
PROJECTORS: Registry = Registry("projector")

# Each import below registers one implementation; adding a component is one file plus one line.
from mllm.models.projectors import linear, mlp  # noqa: E402,F401
from mllm.models.vision import clip, siglip  # noqa: E402,F401
