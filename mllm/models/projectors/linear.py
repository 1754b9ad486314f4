"""LLaVA v1's projector: one linear map per patch."""

from __future__ import annotations

import torch
from torch import nn

from mllm.config.schema import ProjectorConfig
from mllm.models.catalog import PROJECTORS
from mllm.models.projectors.base import Projector


@PROJECTORS.register("linear", config_class=ProjectorConfig)
class LinearProjector(Projector):
    def __init__(
        self, config: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int
    ) -> None:
        super().__init__(config, vision_dim, llm_dim, num_patches)
        self.proj = nn.Linear(vision_dim, llm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)  # [num_images, num_patches, llm_dim]
