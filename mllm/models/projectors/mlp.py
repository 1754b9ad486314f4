"""LLaVA-1.5's projector: an MLP with GELU between layers (``mlp2x_gelu`` is depth 2)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mllm.config.schema import ProjectorConfig
from mllm.models.catalog import PROJECTORS
from mllm.models.projectors.base import Projector


class MLPProjectorConfig(ProjectorConfig):
    depth: int = Field(default=2, ge=1, description="number of linear layers")


@PROJECTORS.register("mlp", config_class=MLPProjectorConfig)
class MLPProjector(Projector):
    def __init__(
        self, config: MLPProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int
    ) -> None:
        super().__init__(config, vision_dim, llm_dim, num_patches)
        layers: list[nn.Module] = [nn.Linear(vision_dim, llm_dim)]
        for _ in range(config.depth - 1):
            layers += [nn.GELU(), nn.Linear(llm_dim, llm_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)  # [num_images, num_patches, llm_dim]
