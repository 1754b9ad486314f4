"""BLIP-2's Q-Former: learned queries read the image through cross-attention, then a linear map.

Used by BLIP-2, InstructBLIP and MiniGPT-4. Built from explicit sizes (the constructor never
downloads anything); it can start from a local BERT folder (``init_from``, as BLIP-2 starts
from bert-base) and load a BLIP-2 / LAVIS / MiniGPT-4 / transformers Q-Former checkpoint
(``qformer_weights``) wherever the shapes match, logging what was loaded and what was not.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError
from torch import nn

from mllm.config.schema import REMOVED_KEY, ProjectorConfig
from mllm.models.catalog import PROJECTORS
from mllm.models.projectors.base import Projector
from mllm.models.projectors.positions import (
    FeaturePosition,
    feature_position_field,
    feature_positions,
)
from mllm.models.projectors.qformer_weights import (
    load_bert_weights,
    load_qformer_state_dict,
    read_checkpoint,
)


class QFormerProjectorConfig(ProjectorConfig):
    """Q-Former sizes; the defaults are BLIP-2's (bert-base, 32 queries, cross-attention every
    other block)."""

    num_queries: int = Field(
        default=32, ge=1, description="learned query tokens = tokens per image"
    )
    hidden_size: int = Field(default=768, ge=1)
    num_layers: int = Field(default=12, ge=1)
    num_heads: int = Field(default=12, ge=1)
    intermediate_size: int = Field(default=3072, ge=1)
    cross_attention_every: int = Field(
        default=2, ge=1, description="blocks 0, k, 2k, ... cross-attend (1: all; 2: BLIP-2)"
    )
    dropout: float = Field(default=0.1, ge=0, lt=1, description="BERT's hidden/attention dropout")
    layer_norm_eps: float = Field(default=1e-12, gt=0)
    vision_norm: bool = Field(
        default=True, description="LayerNorm the tower's features first (BLIP-2's ln_vision)"
    )
    feature_position: FeaturePosition = feature_position_field()
    init_from: str | None = Field(
        default=None,
        description="local folder of a BERT checkpoint; self-attention and FFN weights are "
        "copied where shapes match (BLIP-2 starts from bert-base-uncased)",
    )
    qformer_weights: str | None = Field(
        default=None,
        description="local BLIP-2/LAVIS/MiniGPT-4 checkpoint file (.pth/.bin/.safetensors) or "
        "transformers Blip-2 folder; its Q-Former (and projection) load where shapes match",
    )
    load_projection: bool = Field(
        default=False,
        description="also load qformer_weights' projection to the LLM (language_projection, "
        "llm_proj, llama_proj, ...) when its shape matches; off since it was trained for "
        "another LLM (MiniGPT-4 trains its linear layer from scratch)",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_freeze_qformer(cls, data: Any) -> Any:
        # Removed: a model option must not change what a stage trains (stage.py decides).
        # ``false`` changed nothing and is in the recipes saved by older checkpoints: dropped.
        if isinstance(data, dict) and data.get("freeze_qformer", True) is False:
            return {k: v for k, v in data.items() if k != "freeze_qformer"}
        if isinstance(data, dict) and "freeze_qformer" in data:
            raise PydanticCustomError(
                REMOVED_KEY,
                "removed: stages decide what trains; to train only the output layer, remove it "
                "and use stages.S.frozen_modules: [projector.qformer] in each stage that "
                "trains the projector",
                {"key": "freeze_qformer"},
            )
        return data

    @model_validator(mode="after")
    def _heads_divide_width(self) -> QFormerProjectorConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        return self


class _Attention(nn.Module):
    """BERT attention, post-norm: ``norm(x + out(attend(x, context)))``."""

    def __init__(self, width: int, context_width: int, heads: int, dropout: float, eps: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(context_width, width)
        self.v = nn.Linear(context_width, width)
        self.out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: [batch, n, width], context: [batch, m, context_width] -> [batch, n, width]."""
        batch, n, width = x.shape
        split = (batch, -1, self.heads, width // self.heads)
        q = self.q(x).view(split).transpose(1, 2)  # [batch, heads, n, head_dim]
        k = self.k(context).view(split).transpose(1, 2)  # [batch, heads, m, head_dim]
        v = self.v(context).view(split).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        attended = attended.transpose(1, 2).reshape(batch, n, width)
        return self.norm(x + F.dropout(self.out(attended), p, self.training))


class _FeedForward(nn.Module):
    """BERT feed-forward, post-norm: ``norm(x + down(gelu(up(x))))``."""

    def __init__(self, width: int, inner: int, dropout: float, eps: float):
        super().__init__()
        self.dropout = dropout
        self.up = nn.Linear(width, inner)
        self.down = nn.Linear(inner, width)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        return self.norm(x + F.dropout(self.down(F.gelu(self.up(x))), p, self.training))


class _QFormerBlock(nn.Module):
    def __init__(self, config: QFormerProjectorConfig, vision_dim: int, cross: bool) -> None:
        super().__init__()
        width, heads = config.hidden_size, config.num_heads
        args = (config.dropout, config.layer_norm_eps)
        self.self_attn = _Attention(width, width, heads, *args)
        self.cross_attn = _Attention(width, vision_dim, heads, *args) if cross else None
        self.ffn = _FeedForward(width, config.intermediate_size, *args)

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        queries = self.self_attn(queries, queries)  # [num_images, num_queries, width]
        if self.cross_attn is not None:
            queries = self.cross_attn(queries, features)
        return self.ffn(queries)


class QFormer(nn.Module):
    """The queries, the norms and the blocks: ``[N, P, vision_dim] -> [N, Q, hidden_size]``."""

    def __init__(self, config: QFormerProjectorConfig, vision_dim: int, num_patches: int) -> None:
        super().__init__()
        positions = feature_positions(config.feature_position, num_patches, vision_dim)
        self.register_buffer("feature_position", positions, persistent=False)
        self.dropout = config.dropout
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_queries, config.hidden_size))
        self.vision_norm = (
            nn.LayerNorm(vision_dim, eps=1e-5) if config.vision_norm else nn.Identity()
        )
        self.query_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            _QFormerBlock(config, vision_dim, cross=i % config.cross_attention_every == 0)
            for i in range(config.num_layers)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.vision_norm(features)  # [num_images, num_patches, vision_dim]
        if self.feature_position is not None:
            features = features + self.feature_position.to(features.dtype)
        queries = self.query_norm(self.query_tokens.expand(features.shape[0], -1, -1))
        queries = F.dropout(queries, self.dropout if self.training else 0.0, self.training)
        for layer in self.layers:
            queries = layer(queries, features)  # [num_images, num_queries, hidden_size]
        return queries


@PROJECTORS.register("qformer", config_class=QFormerProjectorConfig)
class QFormerProjector(Projector):
    """``[num_images, num_patches, vision_dim] -> [num_images, num_queries, llm_dim]``.

    Holds ``qformer`` (:class:`QFormer`) and ``out_proj`` (the linear map to the LLM width).
    A stage with ``projector: full`` and ``frozen_modules: [projector.qformer]`` trains only
    ``out_proj`` (MiniGPT-4).
    """

    def __init__(
        self, config: QFormerProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int
    ) -> None:
        super().__init__(config, vision_dim, llm_dim, num_patches)
        self.qformer = QFormer(config, vision_dim, num_patches)
        self.out_proj = nn.Linear(config.hidden_size, llm_dim)
        self.apply(_init_bert_style)
        nn.init.normal_(self.qformer.query_tokens, std=0.02)
        if config.init_from is not None:
            load_bert_weights(self, config.init_from)
        if config.qformer_weights is not None:
            report = load_qformer_state_dict(
                self,
                read_checkpoint(config.qformer_weights),
                projection=config.load_projection,
                source=config.qformer_weights,
            )
            if not report.loaded:
                raise ValueError(
                    f"model.projector.qformer_weights: no Q-Former weights in "
                    f"{config.qformer_weights} match this projector\n{report.summary()}"
                )

    @property
    def num_output_tokens(self) -> int:
        return self.config.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.qformer(features))  # [num_images, num_queries, llm_dim]


def _init_bert_style(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
