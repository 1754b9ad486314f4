"""Bounding boxes as text, as MiniGPT-v2 writes them: ``{<x1><y1><x2><y2>}`` on a 0-100 grid.

Corners are the box's left, top, right and bottom edges as integers from 0 to 100, a fraction
of the image's width (x) or height (y), so the same text fits any resolution and the LLM
writes a box with ordinary digits (no new tokens). MiniGPT-v2 truncates (``int()``) when it
converts a pixel box; :func:`box_from_xywh` does the same, so converted data matches its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Corners go from 0 to ``GRID`` (MiniGPT-v2's ``res`` / ``image_new_size`` of 100).
GRID = 100

# One box; spaces are allowed around the parts, as a tokenizer's decode may insert them.
_BOX = re.compile(r"\{\s*<\s*(\d+)\s*>\s*<\s*(\d+)\s*>\s*<\s*(\d+)\s*>\s*<\s*(\d+)\s*>\s*\}")


@dataclass(frozen=True, slots=True)
class Box:
    """Corners ``x1 <= x2``, ``y1 <= y2`` in one coordinate system (grid units or pixels)."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    def to_pixels(self, width: float, height: float) -> Box:
        """A grid box (0-100) in the pixels of a ``width`` x ``height`` image."""
        return Box(
            self.x1 * width / GRID,
            self.y1 * height / GRID,
            self.x2 * width / GRID,
            self.y2 * height / GRID,
        )


def box_from_xywh(bbox: tuple[float, float, float, float], width: float, height: float) -> Box:
    """A COCO/RefCOCO pixel box ``[x, y, w, h]`` on the 0-100 grid, truncated to integers.

    Raises:
        ValueError: a non-positive image size, a negative box size, or a box outside the
            image (more than a pixel beyond its edge: COCO boxes can overshoot by a fraction).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    x, y, w, h = bbox
    if w < 0 or h < 0:
        raise ValueError(f"box [x, y, w, h] = {list(bbox)} has a negative size")
    if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        raise ValueError(
            f"box [x, y, w, h] = {list(bbox)} lies outside the {width} x {height} image"
        )

    def grid(value: float, size: float) -> int:
        return min(GRID, max(0, int(value / size * GRID)))

    return Box(grid(x, width), grid(y, height), grid(x + w, width), grid(y + h, height))


def format_box(box: Box) -> str:
    """``{<x1><y1><x2><y2>}`` with integer corners (rounded if the box holds fractions)."""
    corners = (round(box.x1), round(box.y1), round(box.x2), round(box.y2))
    return "{" + "".join(f"<{value}>" for value in corners) + "}"


def parse_boxes(text: str) -> list[Box]:
    """Every ``{<x1><y1><x2><y2>}`` in ``text``, in order, corners sorted so ``x1 <= x2``.

    Corners outside 0-100 are clipped to it; a reply in another form (four bare numbers, a
    box missing a corner) yields nothing: the model did not write a box.
    """
    boxes = []
    for match in _BOX.finditer(text):
        a, b, c, d = (min(GRID, int(value)) for value in match.groups())
        boxes.append(Box(min(a, c), min(b, d), max(a, c), max(b, d)))
    return boxes


def parse_box(text: str) -> Box | None:
    """The first box in ``text``, or None (see :func:`parse_boxes`)."""
    boxes = parse_boxes(text)
    return boxes[0] if boxes else None


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes in the same coordinates (continuous areas).

    Degenerate boxes (no area) have IoU 0 with everything, themselves included.
    """
    inter = Box(max(a.x1, b.x1), max(a.y1, b.y1), min(a.x2, b.x2), min(a.y2, b.y2)).area
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0
