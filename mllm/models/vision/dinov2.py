"""Meta's DINOv2 (``facebook/dinov2-*``): a self-supervised ViT with a CLS token.

DINOv2 interpolates its position embeddings, so the token grid follows the image processor's
crop (224 for the released checkpoints), not ``config.image_size`` (518).
"""

from __future__ import annotations

from transformers import Dinov2Model

from mllm.config.schema import VisionTowerConfig
from mllm.models.catalog import VISION_TOWERS
from mllm.models.vision.base import VisionTower


@VISION_TOWERS.register("dinov2", config_class=VisionTowerConfig)
class Dinov2VisionTower(VisionTower):
    model_class = Dinov2Model
    has_cls_token = True

    @property
    def image_size(self) -> int:
        """Side of the square images the processor produces (its crop when it crops)."""
        processor = self.image_processor
        if getattr(processor, "do_center_crop", False) and processor.crop_size:
            return processor.crop_size["height"]
        size = processor.size
        return size.get("height") or size["shortest_edge"]

    @property
    def num_patches(self) -> int:
        grid = self.image_size // self.encoder.config.patch_size
        return grid * grid + int(self.config.select == "cls_patch")
