"""OpenAI CLIP's vision encoder (LLaVA's tower: ``openai/clip-vit-large-patch14-336``)."""

from transformers import CLIPVisionModel

from mllm.config.schema import VisionTowerConfig
from mllm.models.catalog import VISION_TOWERS
from mllm.models.vision.base import VisionTower


@VISION_TOWERS.register("clip", config_class=VisionTowerConfig)
class CLIPVisionTower(VisionTower):
    model_class = CLIPVisionModel
    has_cls_token = True
