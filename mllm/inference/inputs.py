"""What the command lines hand to generation: image files read with errors that name them, and
questions about an image with the model's own image marker in front.

``mllm serve`` reads images from requests instead (``mllm.serve.image_input``).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from mllm.data.images import ImageLoadError, load_image
from mllm.inference.loading import LoadedModel


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """The image file at ``path`` as RGB.

    Raises:
        ImageLoadError: the message names the path and says what is wrong: missing, a folder,
            or not a readable image.
    """
    if not Path(path).is_file():
        what = "is a folder, not an image" if Path(path).is_dir() else "does not exist"
        raise ImageLoadError(f"image {os.fspath(path)!r} {what}")
    return load_image(path)


def image_question(loaded: LoadedModel, text: str) -> str:
    """``text`` after the model's image marker, on a line of its own, as LLaVA-style data puts
    a question about an image (``"<image>\\nWhat color is the shape?"``)."""
    return f"{loaded.built.image_token}\n{text}"
