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
        tower_trains = any(p.requires_grad for p in self.vision.parameters())
        tower_dtype = next(self.vision.parameters()).dtype
        # A frozen tower keeps no activations for backward: most of the memory of stage 1.
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trains):
            features = self.vision(pixel_values.to(tower_dtype))
        proj_dtype = next(self.projector.parameters()).dtype
        return self.projector(features.to(proj_dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image features written at the placeholder positions.

        Args:
            input_ids: [batch, seq] with ``num_image_tokens`` placeholder ids per image.
            pixel_values: [num_images, 3, H, W] in the order the images appear, or None.

        Returns:
            [batch, seq, llm_hidden] input embeddings.

        Raises:
            ImageFeatureCountError: placeholders and features differ in number.
        """
        is_image = input_ids == self.image_token_id  # [batch, seq]
        embeds = self.llm.get_input_embeddings()(input_ids)  # [batch, seq, hidden]
        if pixel_values is None or pixel_values.shape[0] == 0:
            num_slots = int(is_image.sum())
            if num_slots:
                raise ImageFeatureCountError(f"{num_slots} image placeholder tokens but no images")
            if self.training:
                # Run the tower on one blank image and add it times zero: under ZeRO-3 every
                # rank must gather the same parameters in the same order, and DDP expects a
                # gradient for every trained parameter, even when this batch has no image.
                blank = embeds.new_zeros(1, 3, self.vision.image_size, self.vision.image_size)
                embeds = embeds + 0.0 * self.encode_images(blank).sum().to(embeds.dtype)
            return embeds
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
        **llm_kwargs,
    ) -> CausalLMOutputWithPast:
        """Loss (when ``labels`` is given) and logits; extra arguments go to the LLM."""
        inputs_embeds = self.embed(input_ids, pixel_values)
        return self.llm(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs
        )

    def component(self, name: str) -> nn.Module:
        if name not in COMPONENTS:
            raise KeyError(f"unknown component {name!r}; choose one of {COMPONENTS}")
        return getattr(self, name)
