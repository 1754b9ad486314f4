"""Example images and questions for ``mllm web``, from the shapes demo data (``mllm demo-data``):
read from a dataset folder, or a few held-out images written for the page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mllm.demo.shapes import make_shapes_dataset

#: Held-out images written when no dataset is given.
DEFAULT_IMAGES = 4


@dataclass(frozen=True)
class Example:
    """An example of the page: an image file and a question about it."""

    image: Path
    question: str


class ExamplesError(ValueError):
    """A folder that is not an ``mllm demo-data`` output; the message names the file."""


def read_examples(folder: Path, limit: int = 6) -> list[Example]:
    """Up to ``limit`` held-out questions of the demo dataset written to ``folder``
    (``test/questions.jsonl``, image paths relative to ``images/``): one per image, the
    categories taken in turn, so the examples show different images and questions.

    Raises:
        ExamplesError: the questions file is missing or unreadable, or names a missing image.
    """
    questions = folder / "test" / "questions.jsonl"
    if not questions.is_file():
        raise ExamplesError(f"{questions}: not found (write one with `mllm demo-data {folder}`)")
    by_image: dict[Path, list[str]] = {}
    for number, line in enumerate(questions.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            image, text = folder / "images" / record["image"], record["text"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ExamplesError(
                f"{questions}, line {number}: not a question record: {exc}"
            ) from None
        if image not in by_image:
            if len(by_image) == limit:
                break
            if not image.is_file():
                raise ExamplesError(f"{questions}, line {number}: no image {image}")
        by_image.setdefault(image, []).append(text)
    return [
        Example(image, texts[turn % len(texts)])
        for turn, (image, texts) in enumerate(by_image.items())
    ]


def write_examples(folder: Path, num_images: int = DEFAULT_IMAGES) -> list[Example]:
    """Write ``num_images`` held-out demo images (basic variant) to ``folder``; one question
    about each."""
    make_shapes_dataset(folder, num_align=0, num_instruct=0, num_test=num_images)
    return read_examples(folder, limit=num_images)
