"""Fixed 2D sine-cosine position embeddings for the patch grid that query-based projectors read.

Learned queries attend to the patches as a set: without position in the features, a query's
weighted average keeps what the patches hold (colour) but loses where they are and how they are
arranged (position, shape). Pretrained towers (EVA, CLIP) carry position strongly in their
features; mPLUG-Owl2's abstractor and Honeybee add it again explicitly, and a tower trained from
scratch needs it.
"""

from __future__ import annotations

import math

import torch


def sincos_2d(num_patches: int, dim: int) -> torch.Tensor:
    """Embeddings for a square grid of patches in row-major order.

    Half of the channels encode the row, half the column, each as sines and cosines of
    geometrically spaced frequencies (MAE's 2D sin-cos scheme). When ``num_patches`` is one more
    than a square (a CLS token first), that token gets zeros.

    Args:
        num_patches: tokens per image, ``side**2`` or ``side**2 + 1``.
        dim: channels; a multiple of 4.

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
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    parts = []
    for coordinate in (rows, cols):
        angles = coordinate.reshape(-1, 1).float() * frequencies  # [side*side, dim/4]
        parts += [angles.sin(), angles.cos()]
    grid = torch.cat(parts, dim=1)  # [side*side, dim]
    return torch.cat([torch.zeros(extra, dim), grid]) if extra else grid
