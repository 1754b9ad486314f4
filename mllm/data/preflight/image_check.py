"""Image files of a data set: confinement, existence, size, integrity; in parallel.

By default only headers are read (``Image.open`` is lazy: format, mode and size come from the
header), plus the last bytes of PNG/JPEG files, whose end marker is missing when a copy was
cut short. ``decode=True`` decodes every image and converts it to RGB exactly as training
does, which finds every truncated or corrupt file at the cost of full decoding; it runs in a
process pool.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mllm.data.images import ImagePathError, resolve_image_path, strict_decoding, to_rgb

# Last bytes of a complete file: PNG's IEND chunk, JPEG's EOI marker (trailing data after it
# is tolerated within this many bytes).
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"
_TAIL = 4096


@dataclass(frozen=True, slots=True)
class ImageResult:
    """The outcome for one image file: a problem ``kind`` (``None`` when fine)."""

    kind: str | None = None
    reason: str = ""
    warning: bool = False
    mode: str | None = None


def locate(folder: str | os.PathLike[str] | None, path: str) -> Path | ImageResult:
    """The file for a data path, or an ``image_path_unsafe`` result (symlink out, ``..``)."""
    try:
        return resolve_image_path(folder, path)
    except ImagePathError as err:
        return ImageResult("image_path_unsafe", str(err))


def inspect_image(task: tuple[str, int | None, bool, bool]) -> ImageResult:
    """Check one file. ``task`` is ``(path, max_pixels, decode, square)`` (one picklable
    argument); ``square``: the image is padded to a square first, so its longer side squared
    must fit ``max_pixels`` (a 1 x 20000 strip would become a 20000 x 20000 canvas)."""
    path, max_pixels, decode, square = task
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return ImageResult("image_missing", "no such file")
    except OSError as err:
        return ImageResult("image_unreadable", f"cannot stat: {err.strerror or err}")
    if os.path.isdir(path):
        return ImageResult("image_unreadable", "a folder, not a file")
    if size == 0:
        return ImageResult("image_empty", "the file has 0 bytes")
    mode = None
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
            if max_pixels is not None and width * height > max_pixels:
                return ImageResult(
                    "image_too_large",
                    f"{width}x{height} = {width * height} pixels > --max-pixels {max_pixels}",
                    mode=mode,
                )
            side = max(width, height)
            if max_pixels is not None and square and side * side > max_pixels:
                return ImageResult(
                    "image_too_large",
                    f"{width}x{height} padded to a {side}x{side} square = {side * side} pixels "
                    f"> --max-pixels {max_pixels}",
                    mode=mode,
                )
            if decode:
                with strict_decoding():
                    image.load()
                to_rgb(image)
            elif image.format in ("PNG", "JPEG"):
                result = _end_marker(path, image.format, size, mode)
                if result is not None:
                    return result
    except Image.DecompressionBombError as err:
        return ImageResult("image_too_large", str(err))
    except UnidentifiedImageError:
        return ImageResult("image_corrupt", "not an image file Pillow can identify")
    except PermissionError as err:
        return ImageResult("image_unreadable", f"permission denied: {err.strerror or err}")
    except (OSError, SyntaxError, ValueError) as err:  # Pillow raises SyntaxError for bad data
        message = str(err) or type(err).__name__
        if "truncated" in message.lower() or "end of file" in message.lower():
            return ImageResult("image_truncated", message, mode=mode)
        if isinstance(err, ValueError) and "mode" in message.lower():
            return ImageResult("image_mode_unsupported", message, mode=mode)
        return ImageResult("image_corrupt", message, mode=mode)
    return ImageResult(mode=mode)


def _end_marker(path: str, image_format: str, size: int, mode: str) -> ImageResult | None:
    marker = _PNG_END if image_format == "PNG" else _JPEG_END
    with open(path, "rb") as file:
        file.seek(max(0, size - _TAIL))
        tail = file.read()
    if marker in tail:
        return None
    return ImageResult(
        "image_no_end_marker",
        f"{image_format} file without its end marker (cut short?); --decode-images confirms",
        warning=True,
        mode=mode,
    )


def inspect_all(
    paths: Iterable[str], *, max_pixels: int | None, decode: bool, square: bool, workers: int
) -> Iterator[ImageResult]:
    """:func:`inspect_image` for each path, in order; ``workers > 1`` uses processes."""
    tasks = ((path, max_pixels, decode, square) for path in paths)
    if workers <= 1:
        yield from map(inspect_image, tasks)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(inspect_image, tasks, chunksize=64)
