"""EVA-CLIP ViT-g/14, the tower of BLIP-2, InstructBLIP and MiniGPT-4, as transformers holds it.

transformers' ``Blip2VisionModel`` is BLIP-2's EVA ViT-g (39 blocks: BLIP-2 drops the last of
EVA-CLIP's 40) and its ``post_layernorm`` is BLIP-2's ``ln_vision``. ``path`` may be a BLIP-2 /
InstructBLIP checkpoint (e.g. ``Salesforce/blip2-flan-t5-xxl``, whose ``vision_model.*``
weights are taken) or a folder holding only a ``Blip2VisionModel``. BLIP-2 feeds the Q-Former
the last block's output normalised by ``ln_vision``: ``feature_layer: -1`` with the ``qformer``
projector's ``vision_norm`` (loaded from ``vision_model.post_layernorm``).

``image_size`` runs the tower at another resolution than it was trained at, as MiniGPT-v2 runs
EVA ViT-g/14 at 448 px (1024 patches): the position embeddings are interpolated bicubically
once, at load (as LAVIS's ``interpolate_pos_embed`` does), and the processor resizes to match.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from transformers import AutoImageProcessor, Blip2VisionModel

from mllm.config.schema import VisionTowerConfig
from mllm.models.catalog import VISION_TOWERS
from mllm.models.vision.base import VisionTower


class EvaClipConfig(VisionTowerConfig):
    image_size: int | None = Field(
        default=None,
        gt=0,
        description="input side in pixels; default the checkpoint's (224); others interpolate "
        "the position embeddings (MiniGPT-v2: 448)",
    )


@VISION_TOWERS.register("eva_clip", config_class=EvaClipConfig)
class EvaClipVisionTower(VisionTower):
    model_class = Blip2VisionModel
    has_cls_token = True

    @classmethod
    def from_pretrained(
        cls, config: VisionTowerConfig, dtype: torch.dtype, attn_implementation: str
    ) -> EvaClipVisionTower:
        """Load the vision part of a BLIP-2-style checkpoint (or a bare vision folder).

        Raises:
            ValueError: an ``image_size`` that is not a multiple of the patch size.
        """
        encoder = Blip2VisionModel.from_pretrained(
            config.path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            key_mapping={r"^vision_model\.": ""},  # whole-model checkpoints prefix the tower
        )
        processor = AutoImageProcessor.from_pretrained(config.path, backend="pil")
        # A plain VisionTowerConfig (built by code, not a recipe) has no image_size.
        image_size = getattr(config, "image_size", None)
        if image_size is not None and image_size != encoder.config.image_size:
            resize_position_embeddings(encoder, image_size)
            processor.size = {"height": image_size, "width": image_size}
        return cls(config, encoder, processor)


def resize_position_embeddings(encoder: Blip2VisionModel, image_size: int) -> None:
    """Interpolate ``encoder``'s position embeddings to ``image_size`` in place.

    transformers' own ``interpolate_pos_encoding`` computes the new table; it is stored as the
    parameter (``[1, 1 + grid * grid, width]``) so every forward uses it without the flag.
    """
    patch = encoder.config.patch_size
    if image_size % patch:
        raise ValueError(
            f"model.vision.image_size {image_size} is not a multiple of the patch size {patch}"
        )
    embeddings = encoder.embeddings
    grid = image_size // patch
    dummy = embeddings.position_embedding.new_zeros(1, 1 + grid * grid, embeddings.embed_dim)
    with torch.no_grad():
        table = embeddings.interpolate_pos_encoding(dummy, image_size, image_size)
    embeddings.position_embedding = nn.Parameter(table.contiguous())
    embeddings.image_size = encoder.config.image_size = image_size
    embeddings.num_patches = grid * grid
    embeddings.num_positions = grid * grid + 1
