"""The assembled model: ``vision`` -> ``projector`` -> features written into ``llm``'s input embeddings."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from mllm.models.projectors.base import Projector
from mllm.models.vision.base import VisionTower

COMPONENTS = ("vision", "projector", "llm")


class ImageFeatureCountError(ValueError):
    """The batch has a different number of image placeholders than image features."""


class MultimodalModel(nn.Module):
    """A vision tower, a projector and a causal LM, composed under stable names.

    The data pipeline expands every ``<image>`` into ``num_image_tokens`` copies of
    ``image_token_id``; ``forward`` replaces those positions' embeddings with the projected
    image features in one ``masked_scatter``, images taken in row-major order of the batch.
    """

    def __init__(
        self, vision: VisionTower, projector: Projector, llm: PreTrainedModel, image_token_id: int
    ) -> None:
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.image_token_id = image_token_id

    @property
    def num_image_tokens(self) -> int:
        return self.projector.num_output_tokens

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

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features [num_images, num_patches, vision_hidden] (computed now or read from a
        feature cache) -> [num_images, num_image_tokens, llm_hidden]."""
        proj_dtype = next(self.projector.parameters()).dtype
        return self.projector(features.to(proj_dtype))

    @property
    def _partitioned(self) -> bool:
        """Whether ZeRO-3 partitions the image path's weights (their gathers are collective)."""
        return hasattr(next(self.projector.parameters()), "ds_id")

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image features written at the placeholder positions.

        Args:
            input_ids: [batch, seq] with ``num_image_tokens`` placeholder ids per image.
            pixel_values: [num_images, 3, H, W] in the order the images appear, or None.
            image_features: instead of ``pixel_values``, the frozen tower's output for them,
                [num_images, num_patches, vision_hidden] (``mllm.data.feature_cache``); the
                tower does not run. A batch from a cache without images brings [0, P, D].

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
                embeds = embeds + 0.0 * blank.sum().to(embeds.dtype)
            return embeds
        if image_features is not None:
            features = self.project_features(image_features)  # [num_images, tokens, hidden]
        else:
            features = self.encode_images(pixel_values)  # [num_images, tokens, hidden]
        num_slots, num_features = int(is_image.sum()), features.shape[0] * features.shape[1]
        if num_slots != num_features:
            raise ImageFeatureCountError(
                f"{num_slots} image placeholder tokens but {features.shape[0]} images x "
                f"{features.shape[1]} tokens = {num_features} features"
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
        **llm_kwargs,
    ) -> CausalLMOutputWithPast:
        """Loss (when ``labels`` is given) and logits; extra arguments go to the LLM.

        Images come as ``pixel_values`` or, from a feature cache, as the frozen tower's
        ``image_features`` (see :meth:`embed`).

        A packed batch (``mllm.data.packing``) gives ``position_ids`` [batch, seq] that restart
        at 0 for every sample and no ``attention_mask``; transformers confines attention to
        each sample only when it builds no KV cache, so none is built for such a batch.
        FlashAttention-2 reads sample boundaries from a single row only (several rows would
        silently attend across samples), so its packed rows are joined into one; logits come
        back as [batch, seq, vocab] all the same.
        """
        inputs_embeds = self.embed(input_ids, pixel_values, image_features)
        packed = position_ids is not None and attention_mask is None
        if packed:
            llm_kwargs.setdefault("use_cache", False)
        rows, width = input_ids.shape
        if packed and rows > 1 and self.llm.config._attn_implementation == "flash_attention_2":
            inputs_embeds, position_ids, labels = join_packed_rows(
                inputs_embeds, position_ids, labels
            )
        output = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            **llm_kwargs,
        )
        if output.logits is not None and output.logits.shape[0] != rows:
            output.logits = output.logits.reshape(rows, width, -1)
        return output

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
