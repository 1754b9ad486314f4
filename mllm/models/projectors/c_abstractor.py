"""Honeybee's C-Abstractor: locality-preserving convolutional resampling to a fixed token grid.

The patch features are laid out on their square grid (with a learned position embedding),
pass ``depth`` residual bottleneck blocks, are average-pooled to ``sqrt(num_queries)`` squared
cells, pass ``depth`` more blocks, and an MLP reads each cell out at the LLM width.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator
from torch import nn

from mllm.config.schema import ProjectorConfig
from mllm.models.catalog import PROJECTORS
from mllm.models.projectors.base import Projector


class CAbstractorProjectorConfig(ProjectorConfig):
    """Sizes; the defaults are Honeybee's C-Abstractor (144 queries, depth 3, width 1024)."""

    num_queries: int = Field(default=144, ge=1, description="a square: output grid cells")
    hidden_size: int = Field(default=1024, ge=1)
    depth: int = Field(default=3, ge=0, description="residual blocks before and after pooling")
    mlp_depth: int = Field(default=2, ge=1, description="linear layers of the readout")
    pos_emb: bool = Field(default=True, description="learned position embedding on the input")

    @field_validator("num_queries")
    @classmethod
    def _square(cls, value: int) -> int:
        if math.isqrt(value) ** 2 != value:
            raise ValueError(f"num_queries {value} is not a square number (e.g. 64, 144, 256)")
        return value


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [N, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions with LayerNorm and SiLU, plus a (projected) shortcut."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            _LayerNorm2d(out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            _LayerNorm2d(out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 1, bias=False),
            _LayerNorm2d(out_ch),
        )
        self.shortcut = (
            nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.shortcut(x) + self.body(x))


@PROJECTORS.register("c_abstractor", config_class=CAbstractorProjectorConfig)
class CAbstractorProjector(Projector):
    """``[num_images, grid*grid, vision_dim] -> [num_images, num_queries, llm_dim]``.

    Raises:
        ValueError: the tower's tokens do not form a square grid (drop the CLS token with
            ``select: patch``).
    """

    def __init__(
        self, config: CAbstractorProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int
    ) -> None:
        super().__init__(config, vision_dim, llm_dim, num_patches)
        self.grid = math.isqrt(num_patches)
        if self.grid**2 != num_patches:
            raise ValueError(
                f"c_abstractor needs a square grid of patch tokens, got {num_patches}; "
                "set model.vision.select: patch"
            )
        width, depth = config.hidden_size, config.depth
        self.pos_emb = (
            nn.Parameter(torch.zeros(1, num_patches, vision_dim)) if config.pos_emb else None
        )
        stage1 = [_Bottleneck(vision_dim if i == 0 else width, width) for i in range(depth)]
        if depth == 0:
            stage1 = [nn.Conv2d(vision_dim, width, 1)]
        self.net = nn.Sequential(
            *stage1,
            nn.AdaptiveAvgPool2d(math.isqrt(config.num_queries)),
            *(_Bottleneck(width, width) for _ in range(depth)),
        )
        readout: list[nn.Module] = [nn.Linear(width, llm_dim)]
        for _ in range(config.mlp_depth - 1):
            readout += [nn.SiLU(), nn.Linear(llm_dim, llm_dim)]
        self.readout = nn.Sequential(*readout)
        if self.pos_emb is not None:
            nn.init.trunc_normal_(self.pos_emb, std=0.02)

    @property
    def num_output_tokens(self) -> int:
        return self.config.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.pos_emb is not None:
            features = features + self.pos_emb  # [num_images, grid*grid, vision_dim]
        n, _, channels = features.shape
        x = features.transpose(1, 2).reshape(n, channels, self.grid, self.grid)
        x = self.net(x)  # [num_images, hidden_size, side, side]
        return self.readout(x.flatten(2).transpose(1, 2))  # [num_images, num_queries, llm_dim]
