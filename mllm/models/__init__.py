"""Model components (vision towers, projectors, LLM backbones) and their assembly."""

from mllm.models.assembly import BuiltModel, build_model
from mllm.models.multimodal import COMPONENTS, ImageFeatureCountError, MultimodalModel

__all__ = ["COMPONENTS", "BuiltModel", "ImageFeatureCountError", "MultimodalModel", "build_model"]
