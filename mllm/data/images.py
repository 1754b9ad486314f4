"""Image loading and the three LLaVA image modes (pad / crop / resize) in front of a processor.

``load_image`` always returns 8-bit RGB, converting the modes where Pillow's plain
``convert("RGB")`` goes wrong:

* transparency (RGBA, LA, palette with a transparent colour) is composited onto **white**
  by default. LLaVA's ``convert("RGB")`` just drops alpha and exposes whatever colour the
  hidden pixels store (often black, which hides black text and line art). White is what
  transparent documents, charts and icons are drawn to be seen on, and unlike the pad colour
  it does not change with the vision tower.
* 16-bit grayscale (``I;16*``, and 32-bit ``I`` read as the same 0..65535 range) is scaled
  to 0..255; Pillow's conversion would clip everything above 255 to white. Float (``F``)
  images are read as 0..1.
* CMYK goes through Pillow's conversion (no ICC colour management, as in LLaVA).

EXIF orientation is not applied, like LLaVA, so pixels match checkpoints trained with it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:  # annotations only: keeps `import mllm.data` from loading transformers
    from transformers.image_processing_utils import BaseImageProcessor

ImageMode = Literal["pad", "crop", "resize"]
IMAGE_MODES: tuple[str, ...] = ("pad", "crop", "resize")
WHITE = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageLoadError(OSError):
    """An image file that cannot be read or converted; the message names the path."""


def load_image(
    path: str | os.PathLike[str], *, background: tuple[int, int, int] = WHITE
) -> Image.Image:
    """Read an image file fully into memory as 8-bit RGB.

    Args:
        path: the image file.
        background: colour that transparent pixels are composited onto.

    Returns:
        An ``RGB`` image, detached from the file (the file is closed).

    Raises:
        ImageLoadError: if the file is missing, not an image, truncated, or in a mode that
            cannot be converted; the message names ``path``.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image, background=background)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"cannot load image {os.fspath(path)!r}: {err}") from err


def to_rgb(image: Image.Image, *, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring for the choices).

    Raises:
        ValueError: for a mode Pillow cannot convert to RGB.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode == "P" and "transparency" in image.info:
        return _composite(image.convert("RGBA"), background)
    if mode in _ALPHA_MODES:
        return _composite(image.convert("RGBA"), background)
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)  # [H, W]
        scaled = np.clip(values, 0, 65535) / 257.0
        return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)  # [H, W]
        scaled = np.clip(values, 0.0, 1.0) * 255.0
        return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def _composite(rgba: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def expand_to_square(image: Image.Image, background_rgb: tuple[int, int, int]) -> Image.Image:
    """Centre ``image`` on a square canvas of its longer side (LLaVA's ``expand2square``).

    The offset of the shorter side is ``(long - short) // 2``, as in LLaVA, so padded
    pixels line up exactly with LLaVA-trained checkpoints.
    """
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background_rgb)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def pad_colour(processor: BaseImageProcessor) -> tuple[int, int, int]:
    """The processor's mean as 0..255 RGB, truncated like LLaVA (CLIP: (122, 116, 104))."""
    mean = getattr(processor, "image_mean", None)
    if mean is None or len(mean) != 3:
        raise ValueError(f"{type(processor).__name__} has no 3-channel image_mean to pad with")
    red, green, blue = (int(channel * 255) for channel in mean)
    return red, green, blue


def target_size(processor: BaseImageProcessor) -> tuple[int, int]:
    """The ``(height, width)`` of the processor's output images.

    Raises:
        ValueError: if neither ``crop_size`` (when cropping) nor ``size`` gives one.
    """
    candidates = []
    if getattr(processor, "do_center_crop", False):
        candidates.append(getattr(processor, "crop_size", None))
    candidates.append(getattr(processor, "size", None))
    for size in candidates:
        height, width = _size_field(size, "height"), _size_field(size, "width")
        if height and width:
            return int(height), int(width)
        shortest = _size_field(size, "shortest_edge")
        if shortest:
            return int(shortest), int(shortest)
    raise ValueError(f"cannot tell the output size of {type(processor).__name__}")


def _size_field(size: object, key: str) -> int | None:
    """Read ``key`` from a size given as a dict (v4) or a ``SizeDict`` (v5)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def prepare_image(
    image: Image.Image, processor: BaseImageProcessor, mode: ImageMode
) -> torch.Tensor:
    """Apply an image mode and the processor to one RGB image.

    Args:
        image: an RGB image (from :func:`load_image`).
        processor: a transformers PIL image processor (``CLIPImageProcessor``, ...).
        mode: ``pad``: square with the processor's mean colour first (LLaVA-1.5), so no
            content is cropped; ``crop``: the processor as is (CLIP resizes the shortest edge
            and centre-crops; SigLIP stretches); ``resize``: stretch to the output size first,
            so nothing is cropped and the aspect ratio is lost.

    Returns:
        ``[3, H, W]`` float pixel values, normalised by the processor.

    Raises:
        ValueError: for an unknown ``mode`` or a processor without the needed settings.
    """
    if mode == "pad":
        image = expand_to_square(image, pad_colour(processor))
    elif mode == "resize":
        height, width = target_size(processor)
        resample = getattr(processor, "resample", Image.Resampling.BICUBIC)
        image = image.resize((width, height), resample=Image.Resampling(int(resample)))
    elif mode != "crop":
        raise ValueError(f"unknown image mode {mode!r}; choose one of: {', '.join(IMAGE_MODES)}")
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]  # [1, 3, H, W]
    if pixel_values.ndim != 4 or pixel_values.shape[:2] != (1, 3):
        raise ValueError(
            f"{type(processor).__name__} returned pixel values of shape "
            f"{tuple(pixel_values.shape)}, expected [1, 3, H, W]"
        )
    return pixel_values[0]
