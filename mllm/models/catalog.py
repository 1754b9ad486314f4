"""The catalog recipes pick components from: the ``VISION_TOWERS`` and ``PROJECTORS`` tables.

This module only defines the tables. Each implementation registers itself in its own file, and
the packages ``mllm.models.vision`` and ``mllm.models.projectors`` import their files; whoever
looks names up imports those packages (``mllm.models.assembly``, the recipe loader), so the
component files import this module and nothing here imports them. ``mllm.models`` imports the
assembly, so the tables are full once any module under ``mllm.models`` is imported.
"""

from __future__ import annotations

from mllm.registry import Registry

VISION_TOWERS: Registry = Registry("vision tower")
PROJECTORS: Registry = Registry("projector")
