"""EVA-CLIP ViT-g/14, the tower of BLIP-2, InstructBLIP and MiniGPT-4, as transformers holds it.

transformers' ``Blip2VisionModel`` is BLIP-2's EVA ViT-g (39 blocks: BLIP-2 drops the last of
EVA-CLIP's 40) and its ``post_layernorm`` is BLIP-2's ``ln_vision``. ``path`` may be a BLIP-2 /
InstructBLIP checkpoint (e.g. ``Salesforce/blip2-flan-t5-xxl``, whose ``vision_model.*``
weights are taken) or a folder holding only a ``Blip2VisionModel``. BLIP-2 feeds the Q-Former
the last block's output normalised by ``ln_vision``: ``feature_layer: -1`` with the ``qformer``
projector's ``vision_norm`` (loaded from ``vision_model.post_layernorm``).
"""

from __future__ import annotations

import torch
from transformers import AutoImageProcessor, Blip2VisionModel

from mllm.config.schema import VisionTowerConfig
from mllm.models.catalog import VISION_TOWERS
from mllm.models.vision.base import VisionTower


@VISION_TOWERS.register("eva_clip", config_class=VisionTowerConfig)
class EvaClipVisionTower(VisionTower):
    model_class = Blip2VisionModel
    has_cls_token = True

    @classmethod
    def from_pretrained(
        cls, config: VisionTowerConfig, dtype: torch.dtype, attn_implementation: str
    ) -> EvaClipVisionTower:
        """Load the vision part of a BLIP-2-style checkpoint (or a bare vision folder)."""
        encoder = Blip2VisionModel.from_pretrained(
            config.path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            key_mapping={r"^vision_model\.": ""},  # whole-model checkpoints prefix the tower
        )
        processor = AutoImageProcessor.from_pretrained(config.path, backend="pil")
        return cls(config, encoder, processor)
