"""The assembled model: ``vision`` -> ``projector`` -> features written into ``llm``'s input embeddings."""

from __future__ import annotations

import functools
import inspect
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from mllm.models.anyres import image_token_count, tiles_per_image
from mllm.models.modality_adaptive import is_modality_adaptive, modality_positions
from mllm.models.packed_attention import (
    dense_mask_skipped,
    segment_layout,
    use_packed_sdpa,
    uses_packed_sdpa,
)
from mllm.models.projectors.base import Projector
from mllm.models.vision.base import VisionTower

COMPONENTS = ("vision", "projector", "llm")


class ImageFeatureCountError(ValueError):
    """The batch has a different number of image placeholders than image features."""


class MultimodalModel(nn.Module):
    """A vision tower, a projector and a causal LM, composed under stable names.

    The data pipeline expands every ``<image>`` into ``image_token_count`` copies of
    ``image_token_id`` (``num_image_tokens`` for a single-tile image; more for an anyres image,
    depending on its size); ``forward`` replaces those positions' embeddings with the projected
    image features in one ``masked_scatter``, images taken in row-major order of the batch.
    A modality-adaptive LLM (``mllm.models.modality_adaptive``) is told those positions with
    every call (:meth:`modality_context`).

    An LLM that runs ``sdpa`` is switched to ``mllm_packed_sdpa``
    (``mllm.models.packed_attention``): the same kernel on every call, except that packed
    rows get each sample's attention alone instead of a dense mask over the whole row.
    """

    def __init__(
        self,
        vision: VisionTower,
        projector: Projector,
        llm: PreTrainedModel,
        image_token_id: int,
        patch_merge: str = "flat",
    ) -> None:
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.llm = llm
        use_packed_sdpa(llm)
        self.image_token_id = image_token_id
        self.modality_adaptive = is_modality_adaptive(llm)
        #: ``flat`` or ``spatial_unpad`` (``mllm.models.anyres``); the latter's newline is
        #: ``projector.patch_merge``.
        self.patch_merge = patch_merge
        if (patch_merge == "spatial_unpad") != (projector.patch_merge is not None):
            raise ValueError(
                f"{patch_merge} merge but projector.patch_merge is {projector.patch_merge}"
            )

    @property
    def num_image_tokens(self) -> int:
        """Tokens of an image given as one tile (not anyres): the projector's, and a newline
        under ``spatial_unpad``."""
        return image_token_count(self.patch_merge, self.projector.num_output_tokens)

    def image_token_count(
        self, size: tuple[int, int] | None = None, grid: tuple[int, int] | None = None
    ) -> int:
        """Tokens of one image: of original ``size`` (height, width) tiled in a ``grid`` of
        ``(rows, cols)`` (anyres), or a single tile when both are None."""
        return image_token_count(self.patch_merge, self.projector.num_output_tokens, size, grid)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.dtype

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[num_images, 3, H, W] -> [num_images, num_image_tokens, llm_hidden]."""
        # A frozen tower keeps no activations for backward: most of the memory of stage 1.
        # (Under no_grad, e.g. generating, the scan over the tower's parameters is skipped.)
        tower_grad = torch.is_grad_enabled() and any(
            p.requires_grad for p in self.vision.parameters()
        )
        tower_dtype = next(self.vision.parameters()).dtype
        with torch.set_grad_enabled(tower_grad):
            features = self.vision(pixel_values.to(tower_dtype))
        return self.project_features(features)

    def modality_context(self, input_ids: torch.Tensor) -> AbstractContextManager:
        """A block for LLM calls (forward or ``generate``) on these ``input_ids`` [batch, seq]:
        a modality-adaptive LLM learns in it which positions are image tokens; else a no-op."""
        if not self.modality_adaptive:
            return nullcontext()
        return modality_positions(self.llm, input_ids == self.image_token_id)

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features [num_images, num_patches, vision_hidden] (computed now or read from a
        feature cache) -> [num_images, num_image_tokens, llm_hidden]."""
        proj_dtype = next(self.projector.parameters()).dtype
        return self.projector(features.to(proj_dtype))

    @property
    def _partitioned(self) -> bool:
        """Whether ZeRO-3 partitions the image path's weights (their gathers are collective)."""
        return hasattr(next(self.projector.parameters()), "ds_id")

    def merge_tiles(
        self,
        features: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Projected tile features [num_tiles, tokens, hidden] -> the images' token features
        [sum of image_token_count, hidden], images in order (``mllm.models.anyres``).

        Raises:
            ImageFeatureCountError: the tiles differ in number from what ``image_grids`` says.
        """
        num_images = features.shape[0] if image_grids is None else image_grids.shape[0]
        num_tiles = sum(tiles_per_image(image_grids, num_images))
        if num_tiles != features.shape[0]:
            raise ImageFeatureCountError(
                f"{features.shape[0]} image tiles but the {num_images} image grids need {num_tiles}"
            )
        if self.projector.patch_merge is not None:
            return self.projector.patch_merge(features, image_sizes, image_grids)
        return features.reshape(-1, features.shape[-1])  # flat: tile after tile

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image features written at the placeholder positions.

        Args:
            input_ids: [batch, seq] with ``image_token_count`` placeholder ids per image.
            pixel_values: [num_tiles, 3, H, W] in the order the images appear (one tile per
                image, or an anyres image's base and grid tiles), or None. All tiles go
                through the tower in one call.
            image_features: instead of ``pixel_values``, the frozen tower's output for them,
                [num_images, num_patches, vision_hidden] (``mllm.data.feature_cache``); the
                tower does not run. A batch from a cache without images brings [0, P, D].
            image_sizes: anyres only: [num_images, 2] original ``(height, width)``.
            image_grids: anyres only: [num_images, 2] ``(rows, cols)`` of grid tiles.

        Returns:
            [batch, seq, llm_hidden] input embeddings.

        Raises:
            ImageFeatureCountError: placeholders and features differ in number.
            ValueError: both ``pixel_values`` and ``image_features`` were given.
        """
        if pixel_values is not None and image_features is not None:
            raise ValueError("give pixel_values or cached image_features, not both")
        is_image = input_ids == self.image_token_id  # [batch, seq]
        embeds = self.llm.get_input_embeddings()(input_ids)  # [batch, seq, hidden]
        images = pixel_values if image_features is None else image_features
        if images is None or images.shape[0] == 0:
            num_slots = int(is_image.sum())
            if num_slots:
                raise ImageFeatureCountError(f"{num_slots} image placeholder tokens but no images")
            if self.training or self._partitioned:
                # Run the image path on one blank image and add it times zero: under ZeRO-3
                # every rank must gather the same parameters in the same order (in training
                # and in a sharded validation alike), and DDP expects a gradient for every
                # trained parameter, even when this batch has no image. Batches from a
                # feature cache never run the tower, so neither does this one.
                if image_features is not None:
                    blank = self.project_features(image_features.new_zeros(1, *images.shape[1:]))
                else:
                    size = self.vision.image_size
                    blank = self.encode_images(embeds.new_zeros(1, 3, size, size))
                blank = self.merge_tiles(blank)  # a newline too: it trains with the projector
                embeds = embeds + 0.0 * blank.sum().to(embeds.dtype)
            return embeds
        if image_features is not None:
            features = self.project_features(image_features)  # [num_tiles, tokens, hidden]
        else:
            features = self.encode_images(pixel_values)  # [num_tiles, tokens, hidden]
        features = self.merge_tiles(features, image_sizes, image_grids)  # [image tokens, hidden]
        num_slots, num_features = int(is_image.sum()), features.shape[0]
        if num_slots != num_features:
            num_images = images.shape[0] if image_grids is None else image_grids.shape[0]
            raise ImageFeatureCountError(
                f"{num_slots} image placeholder tokens but {num_images} images give "
                f"{num_features} features"
            )
        return embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        **llm_kwargs,
    ) -> CausalLMOutputWithPast:
        """Loss (when ``labels`` is given) and logits; extra arguments go to the LLM.

        Images come as ``pixel_values`` or, from a feature cache, as the frozen tower's
        ``image_features``; anyres images bring ``image_sizes`` and ``image_grids`` (see
        :meth:`embed`).

        A packed batch (``mllm.data.packing``) gives ``position_ids`` [batch, seq] that restart
        at 0 for every sample and no ``attention_mask``; transformers confines attention to
        each sample only when it builds no KV cache, so none is built for such a batch.
        FlashAttention-2 reads sample boundaries from a single row only (several rows would
        silently attend across samples), so its packed rows are joined into one; logits come
        back as [batch, seq, vocab] all the same. ``mllm_packed_sdpa`` is given the samples'
        places (``packed_segments``, computed once here for all layers).

        In training mode with ``labels``, the output head runs only at the positions that
        predict a label in some row (``predicting_positions``): an alignment caption labels
        ~15 of its ~80 tokens, and on the benchmark's small LLM the head's matmul and
        log-softmax over the vocabulary were a large share of a stage-1 step
        (docs/benchmarks.md). The loss is the same mean over labelled tokens; ``logits`` are
        then [batch, K, vocab], at those K positions only.
        """
        inputs_embeds = self.embed(
            input_ids, pixel_values, image_features, image_sizes, image_grids
        )
        packed = position_ids is not None and attention_mask is None
        skip_mask: AbstractContextManager = nullcontext()
        if packed:
            llm_kwargs.setdefault("use_cache", False)
            if uses_packed_sdpa(self.llm):
                llm_kwargs["packed_segments"] = segment_layout(position_ids)
                skip_mask = dense_mask_skipped()  # every layer gets the layout instead
        rows, width = input_ids.shape
        if packed and rows > 1 and self.llm.config._attn_implementation == "flash_attention_2":
            inputs_embeds, position_ids, labels = join_packed_rows(
                inputs_embeds, position_ids, labels
            )
        keep = None
        if labels is not None and self.training and self._keeps_logits:
            keep = predicting_positions(labels)  # [K]
            llm_kwargs["logits_to_keep"] = keep
        # the modality mask of joined packed rows is joined the same way: [1, rows * width]
        with skip_mask, self.modality_context(input_ids.reshape(inputs_embeds.shape[:2])):
            output = self.llm(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels if keep is None else None,
                **llm_kwargs,
            )
        if keep is not None:
            output.loss = kept_logits_loss(output.logits, labels, keep)
        elif output.logits is not None and output.logits.shape[0] != rows:
            output.logits = output.logits.reshape(rows, width, -1)
        return output

    @functools.cached_property
    def _keeps_logits(self) -> bool:
        """Whether the LLM's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
        base = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        return "logits_to_keep" in inspect.signature(type(base).forward).parameters

    def component(self, name: str) -> nn.Module:
        if name not in COMPONENTS:
            raise KeyError(f"unknown component {name!r}; choose one of {COMPONENTS}")
        return getattr(self, name)


def join_packed_rows(
    inputs_embeds: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Concatenate the rows of a packed batch into one row, the layout FlashAttention-2's
    variable-length path reads.

    Exact: every row starts a sample at position 0 and every padding tail restarts its own
    positions, so no segment spans two rows; a row's first label is -100, so the loss never
    predicts across the seam either.

    Args:
        inputs_embeds: [rows, width, hidden].
        position_ids: [rows, width].
        labels: [rows, width] or None.

    Returns:
        The same tensors as [1, rows * width, ...].
    """
    hidden = inputs_embeds.shape[-1]
    joined_labels = None if labels is None else labels.reshape(1, -1)
    return inputs_embeds.reshape(1, -1, hidden), position_ids.reshape(1, -1), joined_labels


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token carries a label in any row: the only logits a loss reads.

    Args:
        labels: [rows, width], -100 where no token is predicted.

    Returns:
        [K] sorted positions ``t`` with ``labels[r, t + 1] != -100`` for some row ``r``.
    """
    return (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(-1)


def kept_logits_loss(
    logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """The causal LM loss (mean cross-entropy over labelled tokens, in fp32 as transformers
    computes it) from logits at the positions ``keep`` only.

    Args:
        logits: [rows, K, vocab] at positions ``keep``.
        labels: [rows, width].
        keep: [K] from :func:`predicting_positions`.
    """
    targets = labels[:, keep + 1]  # [rows, K]: the token each kept position predicts
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )
