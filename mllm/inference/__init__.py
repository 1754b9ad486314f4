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
from mllm.inference.loading import LoadedModel, load

__all__ = [
    "Completion",
    "GenerationRequest",
    "GenerationStream",
    "LoadedModel",
    "SamplingSettings",
    "TextDelta",
    "complete",
    "generate",
    "load",
    "stream",
]
