"""MiniGPT-v2's projector: ``merge`` neighbouring patch tokens concatenated, then one linear map.

Merging shortens the image's share of the LLM context by ``merge`` without dropping anything
the tower saw, which is what lets MiniGPT-v2 feed a 448-px EVA tower (1024 patches) to the LLM
as 256 tokens; the same trick serves any high-resolution tower.

Two ways to pick neighbours:

- ``sequence`` (MiniGPT-v2): ``merge`` consecutive tokens in raster order, i.e. a 1 x 4 strip
  of one patch row for ``merge: 4`` (MiniGPT-v2's ``view(bs, n / 4, 4 * dim)``). Any token
  count divisible by ``merge`` works.
- ``grid`` (pixel shuffle, as InternVL and Idefics3 merge): a ``k`` x ``k`` block of the patch
  grid, ``merge = k * k``. Needs a square grid whose side ``k`` divides.

``norm: true`` standardises each token first (LayerNorm without weights): MiniGPT-v2 passes the
tower's output through ``ln_vision``, a LayerNorm it creates fresh and freezes, so one at
weight 1 and bias 0. ``feature_position`` then adds fixed 2D sin-cos positions to each patch
(``positions.py``): EVA's features carry where they are, a tower trained from scratch barely
does, and boxes need it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from mllm.config.schema import ProjectorConfig
from mllm.models.catalog import PROJECTORS
from mllm.models.projectors.base import Projector
from mllm.models.projectors.positions import (
    FeaturePosition,
    feature_position_field,
    feature_positions,
)


class ConcatProjectorConfig(ProjectorConfig):
    """Defaults are MiniGPT-v2's: four consecutive tokens."""

    merge: int = Field(default=4, ge=1, description="tokens merged into one")
    layout: Literal["sequence", "grid"] = Field(
        default="sequence",
        description="sequence: consecutive tokens (MiniGPT-v2); grid: square blocks of the "
        "patch grid (pixel shuffle; merge must be a square)",
    )
    norm: bool = Field(
        default=False, description="LayerNorm (no weights) on each token first (MiniGPT-v2)"
    )
    feature_position: FeaturePosition = feature_position_field()


@PROJECTORS.register("concat", config_class=ConcatProjectorConfig)
class ConcatProjector(Projector):
    """``[num_images, num_patches, vision_dim] -> [num_images, num_patches / merge, llm_dim]``.

    Raises:
        ValueError: ``num_patches`` not divisible by ``merge``; for ``grid``, a token count that
            is not a square grid, a ``merge`` that is not a square, or a block side that does
            not divide the grid side. The message says which recipe key to change.
    """

    def __init__(
        self, config: ConcatProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int
    ) -> None:
        super().__init__(config, vision_dim, llm_dim, num_patches)
        merge = config.merge
        if num_patches % merge:
            raise ValueError(
                f"concat merges {merge} tokens but the tower gives {num_patches} per image, not "
                "a multiple; change model.projector.merge (or model.vision.select: patch to drop "
                "the CLS token)"
            )
        self.side = math.isqrt(num_patches)
        self.block = math.isqrt(merge)
        if config.layout == "grid":
            if self.block**2 != merge:
                raise ValueError(f"model.projector.merge {merge} must be a square for layout grid")
            if self.side**2 != num_patches or self.side % self.block:
                raise ValueError(
                    f"layout grid needs a square patch grid whose side is a multiple of "
                    f"{self.block}; the tower gives {num_patches} tokens (use select: patch, or "
                    "layout: sequence)"
                )
        self.proj = nn.Linear(vision_dim * merge, llm_dim)
        positions = feature_positions(config.feature_position, num_patches, vision_dim)
        self.register_buffer("feature_position", positions, persistent=False)

    @property
    def num_output_tokens(self) -> int:
        return self.num_patches // self.config.merge

    def merged(self, features: torch.Tensor) -> torch.Tensor:
        """The concatenated groups, before the linear map.

        ``[num_images, num_patches, dim] -> [num_images, num_patches / merge, merge * dim]``;
        within a group, tokens come in raster order.
        """
        n, tokens, dim = features.shape
        merge = self.config.merge
        if self.config.layout == "sequence":
            return features.reshape(n, tokens // merge, merge * dim)
        side, k = self.side, self.block
        grid = features.reshape(n, side // k, k, side // k, k, dim)  # [n, rows, k, cols, k, dim]
        blocks = grid.permute(0, 1, 3, 2, 4, 5)  # [n, rows, cols, k, k, dim]
        return blocks.reshape(n, tokens // merge, merge * dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.config.norm:
            features = F.layer_norm(features, features.shape[-1:])
        if self.feature_position is not None:
            features = features + self.feature_position.to(features.dtype)
        return self.proj(self.merged(features))  # [num_images, num_patches / merge, llm_dim]
