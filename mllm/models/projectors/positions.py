"""Fixed 2D sine-cosine position embeddings for the patch grid that query-based projectors read.

Learned queries attend to the patches as a set: without position in the features, a query's
weighted average keeps what the patches hold (colour) but loses where they are and how they are
arranged (position, shape). Pretrained towers (EVA, CLIP) carry position strongly in their
features; mPLUG-Owl2's abstractor and Honeybee add it again explicitly, and a tower trained from
scratch needs it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

#: ``sincos_2d``: MAE's and mPLUG-Owl2's frequencies (base 10000), for their grids of 16-32
#: patches a side. ``sincos_2d_grid``: frequencies spread over the grid's own side (base = side),
#: for small grids: on 4x4 patches at width 256 base 10000 leaves most channels nearly constant
#: (2% of the embedding's variance is across rows; 11% with base = side), and the demo's
#: abstractor never learned left from right with it.
FeaturePosition = Literal["none", "sincos_2d", "sincos_2d_grid"]


def feature_position_field() -> object:
    """The ``feature_position`` option of the query projectors (Q-Former, abstractor)."""
    return Field(
        default="none",
        description="add fixed 2D sin-cos position embeddings to the image features the queries "
        "read (as mPLUG-Owl2's abstractor); needed when the tower's features carry little "
        "position (a tower trained from scratch). sincos_2d: base 10000 (MAE, mPLUG-Owl2); "
        "sincos_2d_grid: base = the grid's side, for small grids",
    )


def feature_positions(kind: FeaturePosition, num_patches: int, dim: int) -> torch.Tensor | None:
    """The embedding ``kind`` names for ``num_patches`` tokens of width ``dim``, or None."""
    if kind == "none":
        return None
    base = float(math.isqrt(num_patches)) if kind == "sincos_2d_grid" else 10000.0
    return sincos_2d(num_patches, dim, base=base)


def sincos_2d(num_patches: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Embeddings for a square grid of patches in row-major order.

    Half of the channels encode the row, half the column, each as sines and cosines of
    geometrically spaced frequencies (MAE's 2D sin-cos scheme). When ``num_patches`` is one more
    than a square (a CLS token first), that token gets zeros.

    Args:
        num_patches: tokens per image, ``side**2`` or ``side**2 + 1``.
        dim: channels; a multiple of 4.
        base: frequencies run from 1 down to ``1 / base`` (10000 in MAE).

    Returns:
        ``[num_patches, dim]`` float32.

    Raises:
        ValueError: the tokens do not form a square grid, or ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos position embeddings need a width divisible by 4, got {dim}")
    side = math.isqrt(num_patches)
    extra = num_patches - side * side
    if extra not in (0, 1) or side == 0:
        raise ValueError(f"{num_patches} image tokens do not form a square patch grid")
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    quarter = dim // 4
    frequencies = 1.0 / base ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    parts = []
    for coordinate in (rows, cols):
        angles = coordinate.reshape(-1, 1).float() * frequencies  # [side*side, dim/4]
        parts += [angles.sin(), angles.cos()]
    grid = torch.cat(parts, dim=1)  # [side*side, dim]
    return torch.cat([torch.zeros(extra, dim), grid]) if extra else grid
