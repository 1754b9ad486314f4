"""LLaVA-NeXT's ``anyres`` image mode: an image as tower-sized tiles of a higher resolution.

For each image, the grid resolution that keeps most of its pixels is chosen from the stage's
``image_grid_pinpoints`` (:func:`best_resolution`); the image is resized to fit it with its
aspect ratio kept, centred on a black canvas of that size and cut into tiles of the tower's
input size, row by row. The whole image squashed to one tile (the *base*) goes first. So a
``672 x 336`` grid gives ``1 + 2`` tiles of ``336 x 336``, each then normalised by the tower's
processor as one ordinary image.

This follows transformers' ``LlavaNextImageProcessor`` (and LLaVA-NeXT's ``mm_utils``) step
for step: the same choice of resolution, the same rounding of the resized size (``ceil``), the
same centring (the odd pixel after), black padding, bicubic resampling. Pinpoints are
``(height, width)`` as in transformers; LLaVA-NeXT reads them as ``(width, height)``, which is
the same for its published lists (each has its transpose).

The model needs each image's original size and grid to merge its tiles
(``mllm.models.anyres``); :func:`anyres_layout` gives both from the size alone, so token
counts are known from image headers, before any pixel is decoded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from mllm.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageTooLargeError,
    load_image,
    resolve_image_path,
    target_size,
)

if TYPE_CHECKING:  # annotations only: keeps `import mllm.data` from loading transformers
    from transformers.image_processing_utils import BaseImageProcessor

    from mllm.models.multimodal import MultimodalModel

#: The ``image_aspect_ratio`` of this mode (the other modes are ``images.IMAGE_MODES``).
ANYRES = "anyres"
Pinpoints = Sequence[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class AnyresLayout:
    """How one image is tiled: its original ``(height, width)`` and its ``(rows, cols)``."""

    size: tuple[int, int]
    grid: tuple[int, int]

    @property
    def num_tiles(self) -> int:
        """Tiles fed to the tower: the base image and the grid."""
        return 1 + self.grid[0] * self.grid[1]


def check_pinpoints(pinpoints: Pinpoints, tile: int) -> None:
    """Raise ``ValueError`` unless every resolution is a positive multiple of ``tile``."""
    if not pinpoints:
        raise ValueError("anyres needs at least one grid resolution in image_grid_pinpoints")
    bad = [tuple(p) for p in pinpoints if min(p) < tile or p[0] % tile or p[1] % tile]
    if bad:
        raise ValueError(
            f"image_grid_pinpoints {bad} are not multiples of the tower's image size {tile}"
        )


def best_resolution(size: tuple[int, int], pinpoints: Pinpoints) -> tuple[int, int]:
    """The ``(height, width)`` of ``pinpoints`` that shows most of an image of ``size``.

    Each candidate is scored by the pixels of the image once scaled to fit it (never more than
    the image has: upscaling adds none), ties going to the candidate with less padding.
    """
    height, width = size
    best, most, least_waste = None, 0, math.inf
    for grid_height, grid_width in pinpoints:
        scale = min(grid_width / width, grid_height / height)
        shown = min(int(width * scale) * int(height * scale), width * height)
        waste = grid_width * grid_height - shown
        if shown > most or (shown == most and waste < least_waste):
            best, most, least_waste = (grid_height, grid_width), shown, waste
    assert best is not None, "no grid resolutions"
    return best


def anyres_layout(size: tuple[int, int], pinpoints: Pinpoints, tile: int) -> AnyresLayout:
    """The tiling of an image of ``size`` = ``(height, width)`` into tiles of side ``tile``."""
    grid_height, grid_width = best_resolution(size, pinpoints)
    return AnyresLayout((int(size[0]), int(size[1])), (grid_height // tile, grid_width // tile))


def fitted_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of an image of ``size`` resized to fit ``target``, aspect kept: the
    limiting side matches exactly, the other is rounded up (never past the target)."""
    height, width = size
    target_height, target_width = target
    scale_width, scale_height = target_width / width, target_height / height
    if scale_width < scale_height:
        return min(math.ceil(height * scale_width), target_height), target_width
    return target_height, min(math.ceil(width * scale_height), target_width)


def tile_image(
    image: Image.Image, pinpoints: Pinpoints, tile: int, resample: Image.Resampling
) -> tuple[list[Image.Image], AnyresLayout]:
    """An RGB image as its base tile followed by its grid tiles (row-major), all ``tile`` px.

    Returns:
        The ``1 + rows * cols`` tiles and the layout the model needs to merge them.
    """
    layout = anyres_layout((image.height, image.width), pinpoints, tile)
    rows, cols = layout.grid
    new_height, new_width = fitted_size(layout.size, (rows * tile, cols * tile))
    canvas = Image.new("RGB", (cols * tile, rows * tile), (0, 0, 0))
    top, left = (rows * tile - new_height) // 2, (cols * tile - new_width) // 2
    canvas.paste(image.resize((new_width, new_height), resample=resample), (left, top))
    tiles = [image.resize((tile, tile), resample=resample)]
    for row in range(rows):
        for col in range(cols):
            box = (col * tile, row * tile, (col + 1) * tile, (row + 1) * tile)
            tiles.append(canvas.crop(box))
    return tiles, layout


def tile_size(processor: BaseImageProcessor) -> int:
    """The side of the square images ``processor`` outputs: the anyres tile.

    Raises:
        ValueError: for a processor whose output is not square.
    """
    height, width = target_size(processor)
    if height != width:
        raise ValueError(f"anyres needs a square tower input, the processor gives {height}x{width}")
    return height


def prepare_anyres(
    image: Image.Image, processor: BaseImageProcessor, pinpoints: Pinpoints
) -> tuple[torch.Tensor, AnyresLayout]:
    """Tile one RGB image and normalise every tile with the tower's processor.

    Args:
        image: an RGB image (``mllm.data.images.load_image``).
        processor: the tower's PIL image processor; its output size is the tile.
        pinpoints: the grid resolutions ``(height, width)``, multiples of the tile.

    Returns:
        ``[1 + rows * cols, 3, tile, tile]`` pixel values (base first) and the layout.

    Raises:
        ValueError: for pinpoints that are not multiples of the tile, or a processor that
            does not return one ``[3, tile, tile]`` image per tile.
    """
    tile = tile_size(processor)
    check_pinpoints(pinpoints, tile)
    resample = Image.Resampling(int(getattr(processor, "resample", Image.Resampling.BICUBIC)))
    tiles, layout = tile_image(image, pinpoints, tile, resample)
    pixel_values = processor(images=tiles, return_tensors="pt")["pixel_values"]  # [n, 3, t, t]
    if tuple(pixel_values.shape) != (len(tiles), 3, tile, tile):
        raise ValueError(
            f"{type(processor).__name__} returned pixel values of shape "
            f"{tuple(pixel_values.shape)} for {len(tiles)} tiles of {tile}x{tile}"
        )
    return pixel_values, layout


def layout_tensors(layouts: Sequence[AnyresLayout]) -> dict[str, torch.Tensor]:
    """``image_sizes`` and ``image_grids`` [num_images, 2] (long) of a sample's images."""
    return {
        "image_sizes": torch.tensor([lay.size for lay in layouts], dtype=torch.long).reshape(-1, 2),
        "image_grids": torch.tensor([lay.grid for lay in layouts], dtype=torch.long).reshape(-1, 2),
    }


@dataclass(frozen=True)
class AnyresSpec:
    """What the data pipeline needs to tile a stage's images and count their tokens.

    Attributes:
        pinpoints: the grid resolutions ``(height, width)``.
        tile: the tower's input side.
        merge: the model's ``mm_patch_merge_type``.
        tokens_per_tile: the projector's tokens per tile.
    """

    pinpoints: tuple[tuple[int, int], ...]
    tile: int
    merge: str
    tokens_per_tile: int

    def layout(self, size: tuple[int, int]) -> AnyresLayout:
        """The tiling of an image of ``size`` = ``(height, width)``."""
        return anyres_layout(size, self.pinpoints, self.tile)

    def header_counts(
        self,
        folder: str | os.PathLike[str] | None,
        paths: Sequence[str],
        sizes: dict[str, tuple[int, int] | ImageLoadError],
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> list[int]:
        """Placeholders of each image of a record, from the files' headers alone.

        Args:
            folder: the image folder (paths stay inside it).
            paths: the record's image paths.
            sizes: sizes (or errors) already read, by path; extended here, so each file is
                read once per data set.
            max_pixels: larger images are refused.

        Raises:
            ImageLoadError: for the first image that cannot be read (path, size, format).
        """
        read_header_sizes(folder, paths, sizes, max_pixels, threads=1)
        counts = []
        for path in paths:
            size = sizes[path]
            if isinstance(size, ImageLoadError):
                raise size
            counts.append(self.token_count(size))
        return counts

    def load(
        self,
        folder: str | os.PathLike[str] | None,
        paths: Sequence[str],
        processor: BaseImageProcessor,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> tuple[dict[str, torch.Tensor], list[int]]:
        """A sample's images, loaded and tiled, with their placeholder counts.

        Returns:
            ``pixel_values`` [num_tiles, 3, tile, tile] (each image's base tile, then its
            grid), ``image_sizes`` and ``image_grids`` [num_images, 2]; and the placeholders
            of each image, from the sizes of the decoded images.

        Raises:
            ImageLoadError: an image that cannot be loaded (named by its path).
        """
        tiles, layouts = [], []
        for path in paths:
            image = load_image(resolve_image_path(folder, path), max_pixels=max_pixels)
            pixels, layout = prepare_anyres(image, processor, self.pinpoints)
            tiles.append(pixels)  # [1 + rows * cols, 3, tile, tile]
            layouts.append(layout)
        counts = [self.token_count(layout.size) for layout in layouts]
        return {"pixel_values": torch.cat(tiles), **layout_tensors(layouts)}, counts

    def token_count(self, size: tuple[int, int]) -> int:
        """Placeholders of an image of ``size`` = ``(height, width)``."""
        from mllm.models.anyres import image_token_count  # mllm.models loads transformers

        layout = self.layout(size)
        return image_token_count(self.merge, self.tokens_per_tile, layout.size, layout.grid)


def anyres_spec(
    pinpoints: Pinpoints, processor: BaseImageProcessor, model: MultimodalModel
) -> AnyresSpec:
    """The :class:`AnyresSpec` of a stage's ``image_grid_pinpoints`` for a built model.

    Raises:
        ValueError: pinpoints that are not multiples of the tile, a processor whose output
            is not the tower's input size, or a projector without a square token grid.
    """
    tile = tile_size(processor)
    if tile != model.vision.image_size:
        raise ValueError(
            f"the image processor gives {tile} px images but the tower takes "
            f"{model.vision.image_size}; anyres tiles must be the tower's size"
        )
    check_pinpoints(pinpoints, tile)
    from mllm.models.anyres import tile_side

    tokens = model.projector.num_output_tokens
    tile_side(tokens)  # the merge lays tiles out as square grids
    return AnyresSpec(
        tuple((int(h), int(w)) for h, w in pinpoints), tile, model.patch_merge, tokens
    )


def header_size(path: str | os.PathLike[str], max_pixels: int | None) -> tuple[int, int]:
    """An image file's ``(height, width)`` from its header, without decoding its pixels.

    Raises:
        ImageTooLargeError: the header claims more than ``max_pixels``.
        ImageLoadError: the file is missing or not an image; the message names ``path``.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"cannot load image {os.fspath(path)!r}: {err}") from err
    except (OSError, ValueError) as err:
        raise ImageLoadError(f"cannot load image {os.fspath(path)!r}: {err}") from err
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image {os.fspath(path)!r} is {width}x{height} = {width * height} pixels, over "
            f"the limit of {max_pixels} (a decompression bomb?)"
        )
    return height, width


#: Threads reading image headers: the reads wait on storage (a network file system most of all).
HEADER_THREADS = 8


def read_header_sizes(
    folder: str | os.PathLike[str] | None,
    paths: Sequence[str],
    sizes: dict[str, tuple[int, int] | ImageLoadError],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    threads: int = HEADER_THREADS,
) -> None:
    """Add to ``sizes`` the ``(height, width)`` (or the :class:`ImageLoadError`) of each of
    ``paths`` not in it yet, read from the headers under ``folder`` in ``threads`` threads."""
    missing = [path for path in dict.fromkeys(paths) if path not in sizes]

    def read(path: str) -> tuple[int, int] | ImageLoadError:
        try:
            return header_size(resolve_image_path(folder, path), max_pixels)
        except ImageLoadError as err:
            return err

    if threads <= 1 or len(missing) < 2:
        sizes.update((path, read(path)) for path in missing)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        sizes.update(zip(missing, pool.map(read, missing), strict=True))
