"""Loading trained checkpoints and generating answers from images and conversations."""

from mllm.inference.generate import GenerationRequest, generate
from mllm.inference.loading import LoadedModel, load_checkpoint

__all__ = ["GenerationRequest", "LoadedModel", "generate", "load_checkpoint"]
