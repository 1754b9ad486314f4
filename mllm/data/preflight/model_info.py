"""Tokens per image for a recipe's model, from configs only: no weights are loaded.

The tower is built on the meta device from its config and image processor (no memory, no
weights), so each tower's own ``num_patches`` rule applies (DINOv2 follows its processor's
crop, CLIP drops or keeps CLS per ``select``). The projector's ``num_output_tokens`` is then
read from its config and the patch count without building it (some projectors load weights
in their constructor); a projector whose rule needs more is built on the meta device.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mllm.config.schema import ModelConfig


def image_tokens_per_image(config: ModelConfig) -> int:
    """Placeholders each ``<image>`` of a single tile (not anyres) expands to for the recipe's
    ``model`` section: the projector's, and a newline under ``spatial_unpad``.

    Raises:
        OSError: if a config cannot be read from the tower's or the LLM's path.
        ValueError: for tower settings the tower rejects (e.g. ``feature_layer``).
    """
    from mllm.models.anyres import image_token_count

    return image_token_count(config.mm_patch_merge_type, tile_and_tokens(config)[1])


def tile_and_tokens(config: ModelConfig) -> tuple[int, int]:
    """The tower's input side and the projector's tokens per tile (image), from configs.

    Raises:
        OSError, ValueError: as :func:`image_tokens_per_image`.
    """
    from transformers import AutoConfig, AutoImageProcessor

    from mllm.models import projectors, vision  # noqa: F401 - registers every component
    from mllm.models.catalog import PROJECTORS, VISION_TOWERS

    tower_class = VISION_TOWERS.get(config.vision.name).target
    hf_config = AutoConfig.from_pretrained(config.vision.path)
    hf_config = getattr(hf_config, "vision_config", hf_config)  # full CLIP/BLIP-2 configs
    processor = AutoImageProcessor.from_pretrained(config.vision.path, backend="pil")
    with torch.device("meta"):
        encoder = tower_class.model_class(hf_config)
    tower = tower_class(config.vision, encoder, processor)
    projector_class = PROJECTORS.get(config.projector.name).target
    shape = {"vision_dim": tower.hidden_size, "num_patches": tower.num_patches}
    try:  # the property reads only config and sizes for every projector shipped
        stand_in = SimpleNamespace(config=config.projector, llm_dim=None, **shape)
        return tower.image_size, int(projector_class.num_output_tokens.fget(stand_in))
    except AttributeError:
        pass
    llm = AutoConfig.from_pretrained(
        config.llm.path, trust_remote_code=config.llm.trust_remote_code
    )
    with torch.device("meta"):
        projector = projector_class(
            config.projector, llm_dim=llm.get_text_config().hidden_size, **shape
        )
    return tower.image_size, int(projector.num_output_tokens)
