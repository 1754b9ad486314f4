"""Google SigLIP's vision encoder; it pools without a CLS token, so every token is a patch."""

from transformers import SiglipVisionModel

from mllm.config.schema import VisionTowerConfig
from mllm.models.catalog import VISION_TOWERS
from mllm.models.vision.base import VisionTower


@VISION_TOWERS.register("siglip", config_class=VisionTowerConfig)
class SiglipVisionTower(VisionTower):
    model_class = SiglipVisionModel
    has_cls_token = False
