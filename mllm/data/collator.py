"""Pad a list of samples into a batch, keeping images in the order their placeholders appear.

The model scatters image features onto placeholder positions in row-major order of the
flattened batch, so ``pixel_values`` concatenates each sample's images in sample order: that
is the order of the placeholder blocks for right and left padding alike. Samples read from a
feature cache carry ``image_features`` instead, concatenated the same way.

Samples that could not be loaded under ``on_bad_record: skip`` arrive as
:class:`~mllm.data.bad_records.BadRecord`; they are dropped from the batch (never replaced by
another sample) and listed under the batch's ``"skipped"`` key, which the training loop must
pop, count and log before calling the model. A batch whose samples were all dropped has zero
rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from mllm.data.bad_records import BadRecord
from mllm.data.tokenize import IGNORE_INDEX


def separate_bad_records(
    samples: Sequence[Mapping[str, torch.Tensor | None] | BadRecord],
) -> tuple[list[Mapping[str, torch.Tensor | None]], list[BadRecord]]:
    """The batch's loadable samples and the :class:`BadRecord` s to count as skipped."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    good = [sample for sample in samples if not isinstance(sample, BadRecord)]
    return good, [sample for sample in samples if isinstance(sample, BadRecord)]


def check_sample(index: int, sample: Mapping[str, torch.Tensor | None]) -> int:
    """The sample's length, after checking its ids and labels are equal 1-D shapes."""
    ids, labels = sample["input_ids"], sample["labels"]
    if ids.shape != labels.shape or ids.ndim != 1:
        raise ValueError(
            f"sample {index}: input_ids {tuple(ids.shape)} and labels "
            f"{tuple(labels.shape)} must be equal 1-D shapes"
        )
    return len(ids)


def concat_images(images: list[torch.Tensor]) -> torch.Tensor | None:
    """``[n_i, ...]`` per sample -> ``[num_images, ...]`` (pixels or cached features), or None
    without images."""
    if not images:
        return None
    shapes = {tuple(image.shape[1:]) for image in images}
    if len(shapes) != 1:
        raise ValueError(f"images in one batch must share a size, got {sorted(shapes)}")
    return torch.cat(images)


#: Per-image tensors of anyres samples, batched in the images' order like their tiles.
ANYRES_KEYS = ("image_sizes", "image_grids")


def image_inputs(samples: Sequence[Mapping[str, torch.Tensor | None]]) -> dict:
    """The images of ``samples``, concatenated in the given order.

    Returns:
        ``pixel_values`` [num_images, 3, H, W] or None; when the samples carry cached features
        (``mllm.data.feature_cache``), also ``image_features`` [num_images, P, D], which is
        [0, P, D] for text-only samples alone (so the model knows not to run the tower).
        Anyres samples (``mllm.data.anyres``) bring their tiles as ``pixel_values``
        [num_tiles, 3, H, W] and add ``image_sizes`` and ``image_grids`` [num_images, 2].
    """
    pixels = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None]
    batch = {"pixel_values": concat_images(pixels)}
    features = [s["image_features"] for s in samples if s.get("image_features") is not None]
    if features:
        batch["image_features"] = concat_images(features)
    for key in ANYRES_KEYS:
        layouts = [s[key] for s in samples if s.get(key) is not None]
        if layouts:
            batch[key] = torch.cat(layouts)  # [num_images, 2]
    return batch


class DataCollator:
    """Batch ``ConversationDataset`` samples, padding to the longest one.

    The attention mask comes from the sample lengths, never from comparing ids with the pad
    id (which breaks when the pad token is also a real token, e.g. ``<unk>`` or EOS).
    """

    def __init__(self, pad_token_id: int, padding_side: Literal["right", "left"] = "right") -> None:
        """
        Args:
            pad_token_id: id written into padded input positions.
            padding_side: ``right`` for training; ``left`` for batched generation.

        Raises:
            ValueError: for a missing pad id or an unknown side.
        """
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; give the tokenizer a pad token first")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, samples: Sequence[Mapping[str, torch.Tensor | None] | BadRecord]) -> dict:
        """
        Args:
            samples: dicts with ``input_ids`` [T_i], ``labels`` [T_i] and ``pixel_values``
                [n_i, 3, H, W] or ``None`` (or cached ``image_features`` [n_i, P, D]); or
                :class:`BadRecord` for samples skipped at load.

        Returns:
            ``input_ids`` [B, T] (pad id on padding), ``attention_mask`` [B, T] (1 on tokens),
            ``labels`` [B, T] (-100 on padding), ``pixel_values`` [sum n_i, 3, H, W] in sample
            order, or ``None`` when no sample has an image (and ``image_features``
            [sum n_i, P, D] when the samples carry them, see :func:`image_inputs`); ``B``
            counts the good samples only. When samples were dropped, also ``skipped``: their
            :class:`BadRecord` s.

        Raises:
            ValueError: for an empty batch, mismatched ids/labels, or images of different sizes.
        """
        good, skipped = separate_bad_records(samples)
        batch = self._collate(good)
        if skipped:
            batch["skipped"] = skipped
        return batch

    def _collate(self, samples: Sequence[Mapping[str, torch.Tensor | None]]) -> dict:
        if not samples:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return {
                "input_ids": empty,
                "attention_mask": empty.clone(),
                "labels": empty.clone(),
                "pixel_values": None,
            }
        longest = max(len(sample["input_ids"]) for sample in samples)
        batch_size = len(samples)
        input_ids = torch.full((batch_size, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, longest), dtype=torch.long)
        for row, sample in enumerate(samples):
            length = check_sample(row, sample)
            span = (
                slice(0, length) if self.padding_side == "right" else slice(longest - length, None)
            )
            input_ids[row, span] = sample["input_ids"]
            labels[row, span] = sample["labels"]
            attention_mask[row, span] = 1
        return {
            "input_ids": input_ids,  # [B, T]
            "attention_mask": attention_mask,  # [B, T]
            "labels": labels,  # [B, T]
            **image_inputs(samples),  # pixel_values [num_images, 3, H, W] or None, ...
        }
