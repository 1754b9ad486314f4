"""Images of API requests: ``data:`` URLs always, local files only inside an allowed folder.

The server never fetches ``http(s)`` URLs (it would let any client make it reach other hosts).
Every image's size is read from its header and refused over the pixel limit before it is
decoded, so a small compressed file cannot expand into gigabytes (a decompression bomb).
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from mllm.data.images import ImagePathError, resolve_image_path, strict_decoding, to_rgb


class ImageInputError(ValueError):
    """An image part the server will not read; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def decode_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Decode image bytes to RGB, refusing images over ``max_pixels`` before decoding.

    Args:
        data: the encoded image (PNG, JPEG, ...).
        what: how error messages name the image (``messages[0].content[1]``).
        max_pixels: width x height limit.

    Raises:
        ImageInputError: not an image, truncated, or too large (413).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header; nothing decoded yet
            if width * height > max_pixels:
                raise ImageInputError(
                    f"{what}: the image is {width}x{height} = {width * height} pixels, over "
                    f"this server's limit of {max_pixels} (--max-image-pixels)",
                    status=413,
                    code="image_too_large",
                )
            with strict_decoding():
                image.load()
            return to_rgb(image)
    except ImageInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{what}: {exc}", status=413, code="image_too_large") from exc
    except (OSError, ValueError) as exc:
        raise ImageInputError(f"{what}: not a readable image ({exc})") from exc


def _data_url_bytes(url: str, what: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise ImageInputError(f"{what}: a data URL needs a comma before its data")
    media_type = header[len("data:") :].split(";")[0]
    if media_type and not media_type.startswith("image/"):
        raise ImageInputError(f"{what}: the data URL's media type is {media_type!r}, not image/*")
    if not header.endswith(";base64"):
        raise ImageInputError(
            f"{what}: only base64 data URLs are accepted (data:image/png;base64,...)"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{what}: the data URL is not valid base64 ({exc})") from exc


def _local_file(url: str, what: str, folder: Path) -> Path:
    """``url`` (``file://`` URL, absolute path, or path relative to ``folder``) inside ``folder``."""
    path = unquote(urlparse(url).path) if url.startswith("file://") else url
    root = folder.resolve()
    if Path(path).is_absolute():
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(root):
            raise ImageInputError(f"{what}: {path!r} is outside the allowed image folder {root}")
        return resolved
    try:
        return resolve_image_path(root, path)
    except ImagePathError as exc:
        raise ImageInputError(f"{what}: {exc}") from exc


def read_image_url(
    url: str, what: str, *, max_pixels: int, local_folder: Path | None
) -> Image.Image:
    """The image an ``image_url`` part points at.

    Args:
        url: a ``data:image/...;base64,`` URL; with ``local_folder``, also a ``file://`` URL
            or a path inside that folder.
        what: how error messages name the part.
        max_pixels: width x height limit.
        local_folder: the folder local images may come from; ``None`` allows none.

    Raises:
        ImageInputError: a URL of another kind, a file outside the folder or missing, or an
            image that does not decode or is too large.
    """
    if url.startswith("data:"):
        return decode_image(_data_url_bytes(url, what), what, max_pixels)
    if url.startswith(("http://", "https://")):
        raise ImageInputError(
            f"{what}: this server does not download images; send the image as a data URL "
            "(data:image/png;base64,...)"
        )
    if local_folder is None:
        raise ImageInputError(
            f"{what}: only data URLs are accepted; start the server with "
            "--allow-local-images FOLDER to read image files under FOLDER"
        )
    path = _local_file(url, what, local_folder)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageInputError(f"{what}: cannot read {str(path)!r} ({exc.strerror})") from exc
    return decode_image(data, what, max_pixels)
