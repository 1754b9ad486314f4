"""Vision towers: pretrained image encoders that turn pixels into a sequence of patch features."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import AutoImageProcessor, PreTrainedModel

from mllm.config.schema import VisionTowerConfig


class VisionTower(nn.Module):
    """A transformers vision encoder with LLaVA's feature selection.

    Subclasses name the transformers class to load and whether it has a CLS token; loading
    goes through ``from_pretrained`` so a hub id and a local folder behave alike.
    """

    model_class: ClassVar[type[PreTrainedModel]]
    has_cls_token: ClassVar[bool]

    def __init__(
        self, config: VisionTowerConfig, encoder: PreTrainedModel, image_processor
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.image_processor = image_processor
        num_layers = encoder.config.num_hidden_layers
        for layer in config.feature_layer:
            if not -(num_layers + 1) <= layer <= num_layers:
                raise ValueError(
                    f"model.vision.feature_layer {layer} is out of range for {config.path} "
                    f"({num_layers} layers; hidden states are indexed -{num_layers + 1}..{num_layers})"
                )
        if config.select == "cls_patch" and not self.has_cls_token:
            raise ValueError(f"model.vision.select: {config.name} has no CLS token; use 'patch'")

    @classmethod
    def from_pretrained(
        cls, config: VisionTowerConfig, dtype: torch.dtype, attn_implementation: str
    ):
        """Load weights and image processor from ``config.path``."""
        encoder = cls.model_class.from_pretrained(
            config.path, dtype=dtype, attn_implementation=attn_implementation
        )
        processor = AutoImageProcessor.from_pretrained(config.path, backend="pil")
        return cls(config, encoder, processor)

    @property
    def image_size(self) -> int:
        return self.encoder.config.image_size

    @property
    def hidden_size(self) -> int:
        """Feature width: the encoder's width times the number of layers concatenated."""
        return self.encoder.config.hidden_size * len(self.config.feature_layer)

    @property
    def num_patches(self) -> int:
        """Tokens per image after selection."""
        grid = self.encoder.config.image_size // self.encoder.config.patch_size
        return grid * grid + int(self.has_cls_token and self.config.select == "cls_patch")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[num_images, 3, H, W] -> [num_images, num_patches, hidden_size]."""
        outputs = self.encoder(pixel_values, output_hidden_states=True)
        # hidden_states: num_layers + 1 tensors of [num_images, (1 +) grid*grid, width]
        layers = [outputs.hidden_states[i] for i in self.config.feature_layer]
        features = torch.cat(layers, dim=-1) if len(layers) > 1 else layers[0]
        if self.has_cls_token and self.config.select == "patch":
            features = features[:, 1:]
        return features
