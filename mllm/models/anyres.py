"""LLaVA-NeXT's high-resolution image features: tiles of one image merged back into one grid.

An ``anyres`` image (``mllm.data.anyres``) reaches the model as ``1 + rows * cols`` tower-sized
tiles: the whole image squashed to one tile (the *base*), then the tiles of a larger, padded
copy in row-major order. Every tile runs through the tower and projector like any image, and
this module turns an image's tiles into its token sequence:

* ``flat``: every tile's tokens one after another, base first.
* ``spatial_unpad`` (LLaVA-NeXT): the base tile's tokens, then the grid tiles stitched into one
  ``[rows * side, cols * side]`` feature map, cut back to the original aspect ratio (the
  padding rows or columns dropped) and read row by row, a learned ``image_newline`` after each
  row, so the LLM sees where the rows of a variable-width image end.

The token count of an image is therefore a function of its size, computed here by
:func:`image_token_count` with the same arithmetic the merge uses, so the data pipeline
expands every ``<image>`` into exactly as many placeholders as the model writes features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

PatchMerge = Literal["flat", "spatial_unpad"]
PATCH_MERGES: tuple[str, ...] = ("flat", "spatial_unpad")


def tile_side(tokens_per_tile: int) -> int:
    """The side of a tile's square token grid: ``sqrt(tokens_per_tile)``.

    Raises:
        ValueError: when the projector's tokens do not form a square grid (a CLS token kept,
            or a query-based projector), which a spatial merge cannot lay out.
    """
    side = math.isqrt(tokens_per_tile)
    if side * side != tokens_per_tile:
        raise ValueError(
            f"anyres tiles need a square grid of image tokens per tile, but the projector emits "
            f"{tokens_per_tile}; use model.vision.select: patch and a token-preserving or "
            "concat projector"
        )
    return side


def unpadded_shape(size: tuple[int, int], grid_height: int, grid_width: int) -> tuple[int, int]:
    """The rows and columns of a ``[grid_height, grid_width]`` feature map that show the image.

    The image was resized to fit its grid resolution and centred, so the map has padding on
    two opposite sides; this keeps the middle, with transformers' ``unpad_image`` arithmetic
    (its ``round(..., 7)`` guards ``int`` against values like 23.999999; the original
    LLaVA-NeXT truncates without it and can keep one row or column less).

    Args:
        size: the original image's ``(height, width)``.
        grid_height, grid_width: the stitched map's size in tokens.

    Returns:
        ``(rows, cols)`` kept.
    """
    height, width = size
    if width / height > grid_width / grid_height:  # wider than the grid: bands top and bottom
        new_height = int(round(height * (grid_width / width), 7))
        padding = (grid_height - new_height) // 2
        return grid_height - 2 * padding, grid_width
    new_width = int(round(width * (grid_height / height), 7))
    padding = (grid_width - new_width) // 2
    return grid_height, grid_width - 2 * padding


def image_token_count(
    merge: str,
    tokens_per_tile: int,
    size: tuple[int, int] | None = None,
    grid: tuple[int, int] | None = None,
) -> int:
    """Image tokens the model writes for one image.

    Args:
        merge: ``flat`` or ``spatial_unpad`` (the model's ``mm_patch_merge_type``).
        tokens_per_tile: the projector's ``num_output_tokens``.
        size: the original ``(height, width)`` of an anyres image; None for a single tile.
        grid: its ``(rows, cols)`` of tiles (without the base); None for a single tile.

    Returns:
        ``tokens_per_tile`` (+1 newline under ``spatial_unpad``) for a single tile;
        ``(1 + rows * cols) * tokens_per_tile`` under ``flat``; the base tile plus the unpadded
        grid with a newline per row under ``spatial_unpad``.
    """
    if merge not in PATCH_MERGES:
        raise ValueError(f"unknown mm_patch_merge_type {merge!r}; choose one of {PATCH_MERGES}")
    if grid is None:
        return tokens_per_tile + (merge == "spatial_unpad")
    rows, cols = grid
    if merge == "flat":
        return tokens_per_tile * (1 + rows * cols)
    if size is None:
        raise ValueError("spatial_unpad needs the original size of a tiled image")
    side = tile_side(tokens_per_tile)
    kept_rows, kept_cols = unpadded_shape(size, rows * side, cols * side)
    return tokens_per_tile + kept_rows * (kept_cols + 1)


def tiles_per_image(grids: torch.Tensor | None, num_images: int) -> list[int]:
    """``1 + rows * cols`` per image from ``grids`` [num_images, 2]; 1 each without grids."""
    if grids is None:
        return [1] * num_images
    return [1 + rows * cols for rows, cols in grids.tolist()]


def merge_flat(features: torch.Tensor, tiles: Sequence[int]) -> torch.Tensor:
    """Tile features [num_tiles, tokens, hidden] -> [sum of tokens, hidden], tiles in order
    (each image's base tile first, as the data pipeline lists them)."""
    del tiles  # the tiles of consecutive images are already consecutive
    return features.reshape(-1, features.shape[-1])


class SpatialUnpad(nn.Module):
    """LLaVA-NeXT's ``spatial_unpad`` merge and its learned ``image_newline`` [hidden].

    It lives in the projector (``projector.patch_merge``), so the newline trains, freezes and
    is saved with the projector, as LLaVA-NeXT tunes it with its ``mm_projector``; the merge
    runs in this module's ``forward`` so ZeRO-3 gathers the newline for it.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        # LLaVA-NeXT and transformers draw it around 0 with the embeddings' scale.
        self.image_newline = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))

    def forward(
        self,
        features: torch.Tensor,
        sizes: torch.Tensor | None = None,
        grids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Merge each image's tiles into its token sequence.

        Args:
            features: [num_tiles, side * side, hidden] projected tile features, each image's
                base tile first, then its grid tiles in row-major order.
            sizes: [num_images, 2] original ``(height, width)``, or None for single tiles.
            grids: [num_images, 2] ``(rows, cols)`` of grid tiles, or None for single tiles.

        Returns:
            [sum of image_token_count, hidden]: per image, the base tile, then the unpadded
            grid with the newline after each row (a single tile: its tokens and one newline).

        Raises:
            ValueError: when the tile count differs from what ``grids`` says.
        """
        hidden = features.shape[-1]
        newline = self.image_newline.to(features.dtype)  # [hidden]
        if grids is None:  # one tile per image: its tokens, then one newline
            rows = newline.expand(features.shape[0], 1, hidden)  # [num_images, 1, hidden]
            return torch.cat((features, rows), dim=1).reshape(-1, hidden)
        assert sizes is not None, "tiled images need their original sizes"
        tiles = tiles_per_image(grids, grids.shape[0])
        if sum(tiles) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} tiles but the image grids need {sum(tiles)}")
        side = tile_side(features.shape[1])
        merged = []
        # One iteration per image (not per sample): each has its own grid and cut.
        for image, (size, (rows, cols)) in enumerate(
            zip(sizes.tolist(), grids.tolist(), strict=True)
        ):
            first = sum(tiles[:image])
            base = features[first]  # [side * side, hidden]
            grid = features[first + 1 : first + tiles[image]]  # [rows * cols, side * side, hidden]
            grid = grid.reshape(rows, cols, side, side, hidden)
            # [rows, cols, y, x, hidden] -> [hidden, rows * y, cols * x]
            grid = grid.permute(4, 0, 2, 1, 3).reshape(hidden, rows * side, cols * side)
            kept_rows, kept_cols = unpadded_shape(tuple(size), rows * side, cols * side)
            top, left = (rows * side - kept_rows) // 2, (cols * side - kept_cols) // 2
            grid = grid[:, top : top + kept_rows, left : left + kept_cols]  # [hidden, h, w]
            ends = newline[:, None, None].expand(hidden, kept_rows, 1)  # [hidden, h, 1]
            grid = torch.cat((grid, ends), dim=2).reshape(hidden, -1).transpose(0, 1)
            merged += [base, grid]  # [side * side, hidden], [h * (w + 1), hidden]
        return torch.cat(merged)
