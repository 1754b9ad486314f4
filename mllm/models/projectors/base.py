"""Projectors map vision features into the LLM's embedding space."""

from __future__ import annotations

from torch import nn

from mllm.config.schema import ProjectorConfig


class Projector(nn.Module):
    """Base class: ``[num_images, num_patches, vision_dim] -> [num_images, T, llm_dim]``.

    Every projector says how many tokens ``T`` it emits, because the data pipeline must
    expand each ``<image>`` marker into exactly that many placeholder ids.
    """

    def __init__(
        self, config: ProjectorConfig, vision_dim: int, llm_dim: int, num_patches: int
    ) -> None:
        super().__init__()
        self.config = config
        self.vision_dim = vision_dim
        self.llm_dim = llm_dim
        self.num_patches = num_patches
        #: LLaVA-NeXT's tile merge with its learned ``image_newline``
        #: (``mllm.models.anyres.SpatialUnpad``) when ``model.mm_patch_merge_type`` is
        #: ``spatial_unpad``: held here so it trains, freezes and saves with the projector.
        self.patch_merge: nn.Module | None = None

    @property
    def num_output_tokens(self) -> int:
        """Tokens per image; token-preserving projectors keep the patch count."""
        return self.num_patches
