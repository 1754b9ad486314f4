"""mPLUG-Owl's visual abstractor: learned queries cross-attend to the image over several layers.

Each layer normalises the queries and the image features, lets the queries attend to both
(keys and values are ``[queries; features]``), then applies a SwiGLU feed-forward with an
inner LayerNorm. A linear map takes the queries to the LLM width; mPLUG-Owl appends one
learned end-of-image embedding (``append_eos``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from mllm.config.schema import ProjectorConfig
from mllm.models.catalog import PROJECTORS
from mllm.models.projectors.base import Projector
from mllm.models.projectors.positions import (
    FeaturePosition,
    feature_position_field,
    feature_positions,
)


class AbstractorProjectorConfig(ProjectorConfig):
    """Sizes; the defaults are mPLUG-Owl's (6 layers of width 1024, 64 queries)."""

    num_queries: int = Field(default=64, ge=1)
    hidden_size: int = Field(default=1024, ge=1)
    num_layers: int = Field(default=6, ge=1)
    num_heads: int = Field(default=16, ge=1)
    intermediate_size: int = Field(default=2816, ge=1, description="SwiGLU inner width")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="attention-probability dropout")
    layer_norm_eps: float = Field(default=1e-6, gt=0)
    feature_position: FeaturePosition = feature_position_field()
    append_eos: bool = Field(
        default=False, description="append mPLUG-Owl's learned end-of-image token (one more)"
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> AbstractorProjectorConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        return self


class _SwiGLU(nn.Module):
    def __init__(self, width: int, inner: int, eps: float) -> None:
        super().__init__()
        self.gate = nn.Linear(width, inner)
        self.up = nn.Linear(width, inner)
        self.norm = nn.LayerNorm(inner, eps=eps)
        self.down = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.norm(F.silu(self.gate(x)) * self.up(x)))


class _AbstractorLayer(nn.Module):
    def __init__(self, config: AbstractorProjectorConfig) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.heads = config.num_heads
        self.dropout = config.dropout
        self.query_norm = nn.LayerNorm(width, eps=eps)
        self.feature_norm = nn.LayerNorm(width, eps=eps)
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.ffn_norm = nn.LayerNorm(width, eps=eps)
        self.ffn = _SwiGLU(width, config.intermediate_size, eps)

    def forward(
        self, queries: torch.Tensor, features: torch.Tensor, position: torch.Tensor | None
    ) -> torch.Tensor:
        """queries: [N, Q, width], features: [N, P, width], position: [P, width] -> [N, Q, width]."""
        batch, num_queries, width = queries.shape
        queries = self.query_norm(queries)
        context = self.feature_norm(features)  # [N, P, width]
        if position is not None:
            # After the norm, as mPLUG-Owl2 adds them: before it, the unit-scale sin-cos
            # swamped the small features of a fresh projection and training stalled at
            # colour only (demo task; see the README's per-projector table).
            context = context + position.to(context.dtype)
        context = torch.cat([queries, context], dim=1)  # [N, Q + P, width]
        split = (batch, -1, self.heads, width // self.heads)
        q = self.q(queries).view(split).transpose(1, 2)  # [N, heads, Q, head_dim]
        k = self.k(context).view(split).transpose(1, 2)  # [N, heads, Q + P, head_dim]
        v = self.v(context).view(split).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        attended = attended.transpose(1, 2).reshape(batch, num_queries, width)
        # mPLUG-Owl adds the attention output to the *normalised* queries.
        queries = queries + self.out(attended)
        return queries + self.ffn(self.ffn_norm(queries))


@PROJECTORS.register("abstractor", config_class=AbstractorProjectorConfig)
class AbstractorProjector(Projector):
    """``[num_images, num_patches, vision_dim] -> [num_images, num_queries (+1), llm_dim]``.

    When the tower's width differs from ``hidden_size`` a linear ``feature_proj`` maps the
    features first (mPLUG-Owl's ViT-L and abstractor are both 1024 wide, so it has none).
    """

    def __init__(
        self, config: AbstractorProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int
    ) -> None:
        super().__init__(config, vision_dim, llm_dim, num_patches)
        width = config.hidden_size
        self.query_tokens = nn.Parameter(torch.empty(1, config.num_queries, width))
        self.feature_proj = nn.Linear(vision_dim, width) if vision_dim != width else nn.Identity()
        self.layers = nn.ModuleList(_AbstractorLayer(config) for _ in range(config.num_layers))
        self.out_proj = nn.Linear(width, llm_dim)
        positions = feature_positions(config.feature_position, num_patches, width)
        self.register_buffer("feature_position", positions, persistent=False)
        self.eos = nn.Parameter(torch.empty(1, 1, llm_dim)) if config.append_eos else None
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.query_tokens, std=0.02)
        if self.eos is not None:
            nn.init.trunc_normal_(self.eos, std=0.02)

    @property
    def num_output_tokens(self) -> int:
        return self.config.num_queries + int(self.config.append_eos)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.feature_proj(features)  # [num_images, num_patches, hidden_size]
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        for layer in self.layers:
            queries = layer(queries, features, self.feature_position)  # [N, num_queries, width]
        out = self.out_proj(queries)  # [num_images, num_queries, llm_dim]
        if self.eos is not None:
            out = torch.cat([out, self.eos.expand(out.shape[0], -1, -1)], dim=1)
        return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
