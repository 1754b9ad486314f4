"""What the shapes dataset's images show, and how they are drawn: variants, scenes, rendering.

A scene is ``count`` copies of one shape in one colour, each wholly inside its own cell of a
grid (2x2 quadrants for ``basic``, 3x3 for ``hard``), so counting means counting occupied
cells. Answers are capitalised (``"Purple"``, ``"Top left"``, ``"3"``) because real tokenizers
split those differently from lower-case words and bare digits, and the demo must exercise that.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Saturated colours far from each other and from any gray: backgrounds are near-gray (channel
# spread <= 60 even with noise), every colour here has a channel spread >= 150.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (40, 80, 235),
    "yellow": (240, 225, 40),
    "purple": (150, 50, 210),
    "orange": (250, 135, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
# Each added shape is close to a basic one (diamond: a turned square, round-ish; star: spiky
# like a cross). Hexagons and pentagons were left out: at the ~9 px a 3x3 cell keeps after a
# 48 -> 32 px resize they are nearly circles.
HARD_SHAPES = (*SHAPES, "diamond", "star")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")  # 2x2 cells, row-major
GRID_3X3 = (
    *("top left", "top", "top right"),
    *("left", "center", "right"),
    *("bottom left", "bottom", "bottom right"),
)
PLURALS = {"cross": "crosses"}  # every other shape takes an "s"
NUMBER_WORDS = ("One", "Two", "Three", "Four")
MAX_COUNT = len(NUMBER_WORDS)
MIN_CELL = 16  # pixels per grid cell at the least (basic's 32 px); smaller copies lose shape


@dataclass(frozen=True)
class Variant:
    """One version of the task: which shapes, which grid, which backgrounds, what image size."""

    name: str
    shapes: tuple[str, ...]
    cells: tuple[str, ...]  # names of the grid cells, row-major; their number is a square
    # Shape side as a fraction of a cell's side. For basic (0.68-0.88 of a quadrant, i.e.
    # 0.34-0.44 of the image): at 0.44-0.68 a random patch-8 ViT learned shape poorly (~60%).
    size_range: tuple[float, float]
    gray_range: tuple[int, int]  # inclusive range of the background's gray level(s)
    tint: int  # each background colour's channels lie within +-tint of its gray level
    noise: int  # per-pixel, per-channel noise amplitude on the background
    default_image_size: int

    @property
    def grid(self) -> int:
        return math.isqrt(len(self.cells))

    @property
    def min_image_size(self) -> int:
        return MIN_CELL * self.grid


VARIANTS: dict[str, Variant] = {
    # One flat gray per image, four corners, four shapes.
    "basic": Variant("basic", SHAPES, QUADRANTS, (0.68, 0.88), (30, 130), 0, 0, 64),
    # Two-colour gradients with faint noise, nine cells, six shapes, and an image size other
    # than the demo tower's 32 px, so the image processor's resize is part of the task. A
    # 3x3 cell is 10.7 px at 32, so copies are ~9 px there (13-14 px at 48). The closest
    # pairs (cross/diamond, diamond/star) differ by ~14 px of coverage at 32 px: between
    # basic at 32 px (>= 24, learned 100%) and 7-11 px shapes, learned poorly (9-12).
    "hard": Variant("hard", HARD_SHAPES, GRID_3X3, (0.8, 0.92), (30, 150), 16, 6, 48),
}


def get_variant(name: str) -> Variant:
    """The variant called ``name``; a ``ValueError`` lists the choices."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}")
    return VARIANTS[name]


@dataclass(frozen=True)
class Background:
    """A linear gradient from ``start`` to ``end`` along ``angle`` degrees, plus noise."""

    start: tuple[int, int, int]
    end: tuple[int, int, int]
    angle: int
    noise: int  # amplitude; 0 draws no noise
    seed: int  # seeds the noise, so an image is a pure function of its scene

    def draw(self, image_size: int) -> Image.Image:
        if self.start == self.end and self.noise == 0:
            return Image.new("RGB", (image_size, image_size), self.start)
        coords = np.arange(image_size) / max(image_size - 1, 1)
        radians = math.radians(self.angle)
        along = np.cos(radians) * coords[None, :] + np.sin(radians) * coords[:, None]
        along = (along - along.min()) / max(np.ptp(along), 1e-9)  # [height, width] in [0, 1]
        start, end = np.array(self.start, float), np.array(self.end, float)
        pixels = start + along[..., None] * (end - start)  # [height, width, 3]
        if self.noise:
            noise_rng = np.random.default_rng(self.seed)
            pixels += noise_rng.integers(-self.noise, self.noise + 1, pixels.shape)
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


@dataclass(frozen=True)
class Scene:
    """What one image shows; the pixel-level parameters make each image reproducible."""

    colour: str
    shape: str
    cells: tuple[str, ...]  # the cell of each copy, in grid order
    centers: tuple[tuple[int, int], ...]  # pixel centre of each copy
    size: int  # side of each copy's bounding box in pixels
    background: Background

    @property
    def count(self) -> int:
        return len(self.cells)

    @property
    def position(self) -> str:
        """The occupied cells, e.g. ``"top left"`` or ``"top left and bottom right"``."""
        return _join(self.cells)

    @property
    def quadrant(self) -> str:
        """Alias of :attr:`position` (``mllm.bench`` reads it)."""
        return self.position

    def answer(self, category: str) -> str:
        """The short answer to a question of ``category``, capitalised like a person writes it.

        The dataset asks ``position`` only of single-shape scenes; for several it names all.
        """
        if category == "count":
            return str(self.count)
        values = {"color": self.colour, "shape": self.shape, "position": self.position}
        return values[category].capitalize()

    def caption(self) -> str:
        """A sentence stating colour, shape, count and where the copies are."""
        if self.count == 1:
            article = "An" if self.colour[0] in "aeiou" else "A"
            return f"{article} {self.colour} {self.shape} {_where(self.cells[0])}."
        plural = PLURALS.get(self.shape, f"{self.shape}s")
        return f"{NUMBER_WORDS[self.count - 1]} {self.colour} {plural}: {self.position}."


def _join(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _where(cell: str) -> str:
    """``"in the top left"``, ``"at the top"``, ``"on the left"``, ``"in the center"``."""
    if cell in ("top", "bottom"):
        return f"at the {cell}"
    if cell in ("left", "right"):
        return f"on the {cell}"
    return f"in the {cell}"


def _count(rng: random.Random) -> int:
    """Half the scenes hold one shape (so position stays well trained), the rest 2-4."""
    return 1 if rng.random() < 0.5 else rng.randint(2, MAX_COUNT)


def _place(rng: random.Random, start: int, stop: int, size: int) -> int:
    """A centre coordinate keeping a ``size``-px copy inside ``[start, stop)``, a pixel spare."""
    return rng.randint(start + size // 2 + 1, stop - (size - size // 2) - 1)


def _sample_background(rng: random.Random, spec: Variant) -> Background:
    """One flat gray, or a gradient between two faintly tinted grays under noise."""
    if spec.tint == 0 and spec.noise == 0:
        gray = rng.randint(*spec.gray_range)
        return Background((gray,) * 3, (gray,) * 3, angle=0, noise=0, seed=0)

    def tinted() -> tuple[int, int, int]:
        level = rng.randint(*spec.gray_range)
        r, g, b = (min(255, max(0, level + rng.randint(-spec.tint, spec.tint))) for _ in "rgb")
        return r, g, b

    start, end = tinted(), tinted()
    return Background(start, end, rng.randrange(0, 360, 15), spec.noise, rng.getrandbits(32))


def sample_scene(rng: random.Random, image_size: int, variant: str = "basic") -> Scene:
    """Draw a random scene whose copies each lie entirely inside their own cell.

    Args:
        rng: the only source of randomness (the noise seed is drawn from it too).
        image_size: square image side in pixels, at least the variant's ``min_image_size``.
            Cells split the image as evenly as integers allow (``i * image_size // grid``).
        variant: a name in :data:`VARIANTS`.

    Returns:
        The scene; :func:`render` draws it.
    """
    spec = get_variant(variant)
    grid = spec.grid
    cell = image_size // grid  # the smallest cell; every copy fits it with a pixel to spare
    low, high = (round(fraction * cell) for fraction in spec.size_range)
    size = rng.randint(low, min(high, cell - 2))
    indices = sorted(rng.sample(range(len(spec.cells)), _count(rng)))
    centers = []
    for index in indices:
        row, column = divmod(index, grid)
        x = _place(rng, column * image_size // grid, (column + 1) * image_size // grid, size)
        y = _place(rng, row * image_size // grid, (row + 1) * image_size // grid, size)
        centers.append((x, y))
    colour, shape = rng.choice(list(COLOURS)), rng.choice(spec.shapes)
    cells = tuple(spec.cells[i] for i in indices)
    return Scene(colour, shape, cells, tuple(centers), size, _sample_background(rng, spec))


def render(scene: Scene, image_size: int) -> Image.Image:
    """Draw ``scene`` on its background (shapes without anti-aliasing: one flat colour each)."""
    image = scene.background.draw(image_size)
    draw = ImageDraw.Draw(image)
    for center in scene.centers:
        draw_shape(draw, scene.shape, center, scene.size, COLOURS[scene.colour])
    return image


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, center: tuple[int, int], size: int, fill: tuple
) -> None:
    """Draw one ``size``-px copy of ``shape`` centred on ``center`` (no anti-aliasing)."""
    cx, cy = center
    left, top = cx - size // 2, cy - size // 2
    right, bottom = left + size - 1, top + size - 1
    if shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, top), (right, bottom), (left, bottom)], fill=fill)
    elif shape == "cross":
        bar = max(2, size // 4)  # thin bars: a thick cross reads like a circle at patch 8
        a = left + (size - bar) // 2
        draw.rectangle((a, top, a + bar - 1, bottom), fill=fill)
        a = top + (size - bar) // 2
        draw.rectangle((left, a, right, a + bar - 1), fill=fill)
    elif shape == "diamond":
        middle_x, middle_y = (left + right) / 2, (top + bottom) / 2
        draw.polygon(
            [(middle_x, top), (right, middle_y), (middle_x, bottom), (left, middle_y)], fill=fill
        )
    elif shape == "star":
        draw.polygon(_star(left, top, right, bottom), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {HARD_SHAPES}")


def _star(left: int, top: int, right: int, bottom: int) -> list[tuple[float, float]]:
    """A five-pointed star, point up, stretched to fill the box (fat arms survive a resize)."""
    points = []
    for k in range(10):
        radius = 1.0 if k % 2 == 0 else 0.5
        angle = math.radians(-90 + 36 * k)
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    return [
        (
            left + (x - x_lo) / (x_hi - x_lo) * (right - left),
            top + (y - y_lo) / (y_hi - y_lo) * (bottom - top),
        )
        for x, y in points
    ]
