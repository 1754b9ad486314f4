"""MobileVLM V2's lightweight downsample projector (LDPv2): MLP, average pool, PEG.

An MLP maps each patch to the LLM width, average pooling shrinks the square grid to
``grid`` x ``grid`` (576 CLIP-336 patches -> 144 tokens by default), and a depthwise 3x3
convolution added back (a positional encoding generator) restores local position cues.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from mllm.config.schema import ProjectorConfig
from mllm.models.catalog import PROJECTORS
from mllm.models.projectors.base import Projector


class LDPProjectorConfig(ProjectorConfig):
    grid: int = Field(default=12, ge=1, description="output grid side; tokens = grid * grid")


@PROJECTORS.register("ldp", config_class=LDPProjectorConfig)
class LDPProjector(Projector):
    """``[num_images, side*side, vision_dim] -> [num_images, grid*grid, llm_dim]``.

    Raises:
        ValueError: the tokens are not a square grid, or it is smaller than ``grid``.
    """

    def __init__(
        self, config: LDPProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int
    ) -> None:
        super().__init__(config, vision_dim, llm_dim, num_patches)
        self.side = math.isqrt(num_patches)
        if self.side**2 != num_patches or self.side < config.grid:
            raise ValueError(
                f"ldp needs a square grid of at least {config.grid}x{config.grid} patch tokens, "
                f"got {num_patches}; set model.vision.select: patch or lower model.projector.grid"
            )
        self.mlp = nn.Sequential(
            nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim)
        )
        self.pool = nn.AdaptiveAvgPool2d(config.grid)
        self.peg = nn.Conv2d(llm_dim, llm_dim, 3, padding=1, groups=llm_dim)

    @property
    def num_output_tokens(self) -> int:
        return self.config.grid**2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.mlp(features)  # [num_images, side*side, llm_dim]
        n, _, width = x.shape
        x = self.pool(x.transpose(1, 2).reshape(n, width, self.side, self.side))
        x = x + self.peg(x)  # [num_images, llm_dim, grid, grid]
        return x.flatten(2).transpose(1, 2)  # [num_images, grid*grid, llm_dim]
