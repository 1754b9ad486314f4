"""Loading trained checkpoints and generating answers from images and conversations."""

from mllm.inference.generate import (
    Completion,
    GenerationRequest,
    GenerationStream,
    SamplingSettings,
    TextDelta,
    complete,
    generate,
    stream,
)
from mllm.inference.loading import LoadedModel, load_checkpoint, load_model

__all__ = [
    "Completion",
    "GenerationRequest",
    "GenerationStream",
    "LoadedModel",
    "SamplingSettings",
    "TextDelta",
    "complete",
    "generate",
    "load_checkpoint",
    "load_model",
    "stream",
]
