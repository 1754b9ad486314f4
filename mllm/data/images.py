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

Safety: :func:`resolve_image_path` confines data paths to the image folder (no absolute
paths, no ``..``, no symlink leading out), and :func:`load_image` reads the size from the
header and refuses images over ``max_pixels`` before decoding them (decompression bombs).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image, ImageFile

if TYPE_CHECKING:  # annotations only: keeps `import mllm.data` from loading transformers
    from transformers.image_processing_utils import BaseImageProcessor

ImageMode = Literal["pad", "crop", "resize"]
IMAGE_MODES: tuple[str, ...] = ("pad", "crop", "resize")
WHITE = (255, 255, 255)
#: Largest image decoded (width x height): Pillow's own warning threshold, about 9459 x 9459.
DEFAULT_MAX_PIXELS = 89_478_485

_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageLoadError(OSError):
    """An image file that cannot be read or converted; the message names the path."""


class ImagePathError(ImageLoadError):
    """A data path that would leave the image folder (absolute, ``..`` or a symlink out)."""


class ImageTooLargeError(ImageLoadError):
    """An image whose header claims more pixels than allowed (a decompression bomb)."""


def unsafe_path_reason(path: str) -> str | None:
    """Why a data path may not be used under an image folder, from its text alone, or ``None``.

    Absolute paths (POSIX or Windows, drive or UNC), any ``..`` component and empty paths
    are refused; symlinks need the file system (see :func:`resolve_image_path`).
    """
    if not path.strip():
        return "the image path is empty"
    if "\x00" in path:
        return "the image path contains a NUL character"
    portable = path.replace("\\", "/")
    # POSIX root, UNC share or Windows root, or a drive ("C:..."); string tests are fast.
    if portable.startswith("/") or (len(path) > 1 and path[1] == ":" and path[0].isalpha()):
        return f"absolute image path {path!r}; paths must be relative to the image folder"
    if ".." in portable.split("/"):
        return f"image path {path!r} goes up with '..'; paths must stay in the image folder"
    return None


def resolve_image_path(folder: str | os.PathLike[str] | None, path: str) -> Path:
    """``folder / path``, checked to stay inside ``folder`` after resolving symlinks.

    Args:
        folder: the image folder; ``None`` uses ``path`` as given, unconfined.
        path: the record's image path.

    Raises:
        ImagePathError: for an absolute path, a ``..`` component, or a path (or symlink)
            that resolves outside ``folder``.
    """
    if folder is None:
        return Path(path)
    reason = unsafe_path_reason(path)
    if reason is not None:
        raise ImagePathError(reason)
    root = _real_folder(os.fspath(folder))
    full = os.path.join(root, path)
    resolved = os.path.realpath(full)  # follows symlinks; a missing file resolves lexically
    if resolved != root and not resolved.startswith(root.rstrip(os.sep) + os.sep):
        raise ImagePathError(
            f"image path {path!r} resolves to {resolved!r}, outside the image folder "
            f"{root!r} (a symlink out?)"
        )
    return Path(full)


@functools.lru_cache(maxsize=64)
def _real_folder(folder: str) -> str:
    """The image folder with its symlinks resolved, once per folder: ``pathlib``'s resolve of
    folder and file was a fifth of a 64-px sample's loading time (string paths: no parsing)."""
    return os.path.realpath(folder)


@contextmanager
def strict_decoding() -> Iterator[None]:
    """Decode with Pillow's tolerance for cut-short files off, whatever the process set.

    Pillow reads one process-wide switch, ``ImageFile.LOAD_TRUNCATED_IMAGES``, when it decodes,
    and some libraries turn it on when imported (lmms-eval's task module does). A file cut
    short then decodes with its missing rows filled in, and a model would train on, or
    answer about, a picture that is partly blank. Every decode of a user's image here fails
    instead; the switch is restored afterwards.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def load_image(
    path: str | os.PathLike[str],
    *,
    background: tuple[int, int, int] = WHITE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Read an image file fully into memory as 8-bit RGB.

    Args:
        path: the image file.
        background: colour that transparent pixels are composited onto.
        max_pixels: refuse images whose header claims more pixels, before decoding
            (``None``: no limit of ours; Pillow still refuses twice its own limit).

    Returns:
        An ``RGB`` image, detached from the file (the file is closed).

    Raises:
        ImageTooLargeError: for an image over ``max_pixels``; the message names ``path``.
        ImageLoadError: if the file is missing, not an image, truncated, or in a mode that
            cannot be converted; the message names ``path``.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size  # from the header; nothing decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image {os.fspath(path)!r} is {width}x{height} = {width * height} pixels, "
                    f"over the limit of {max_pixels} (a decompression bomb?)"
                )
            with strict_decoding():
                image.load()
            return to_rgb(image, background=background)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"cannot load image {os.fspath(path)!r}: {err}") from err
    except (OSError, ValueError) as err:
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


def load_sample_image(
    folder: str | os.PathLike[str] | None,
    path: str,
    processor: BaseImageProcessor,
    mode: ImageMode,
    max_pixels: int | None,
) -> torch.Tensor:
    """A training sample's image, resolved inside ``folder``, checked and prepared: ``[3, H, W]``.

    Under ``pad`` the limit applies to the padded square too, since that is what gets resized.

    Raises:
        ImageLoadError: an unsafe or missing path, an image over the limit, or one that does
            not decode.
    """
    full_path = resolve_image_path(folder, path)
    image = load_image(full_path, max_pixels=max_pixels)
    side = max(image.size)
    if mode == "pad" and max_pixels and side * side > max_pixels:
        raise ImageTooLargeError(
            f"image {str(full_path)!r} is {image.width}x{image.height}; padded to a square it "
            f"would be {side * side} pixels, over the limit of {max_pixels}"
        )
    return prepare_image(image, processor, mode)  # [3, H, W]


def image_error_kind(err: ImageLoadError) -> str:
    """The summary kind (as counted in logs and reports) of an image that failed to load."""
    if isinstance(err, ImagePathError):
        return "image_path_unsafe"
    if isinstance(err, ImageTooLargeError):
        return "image_too_large"
    if isinstance(err.__cause__, FileNotFoundError):
        return "image_missing"
    return "image_unreadable"
