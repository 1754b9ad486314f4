"""A visual-QA task that needs resolution: which 1-px texture fills a small square?

Each image (64 x 64, 48 x 64 or 64 x 48) shows one square of 16-24 px on a flat background,
filled with horizontal stripes, vertical stripes, a checkerboard (all 1 px, in two colours
that average to the square's mean colour) or that mean colour alone. At full resolution any
two differ over much of the square; halved, as the ``pad`` mode halves them for a 32-px tower,
every pair of neighbouring pixels averages to the mean and the four become the same flat
square (to within 3 of 255 levels).
The texture's contrast fades over its outer 3 px so that its edges, where the averaging
window is cut, do not give the texture away either (:data:`EDGE_TAPER`). So a model that sees
the image at its tower's size can only guess, and LLaVA-NeXT's ``anyres`` tiles, which show
the image at full resolution, carry the answer (``recipes/tiny/resolution_anyres.yaml``
records both runs). Writes, under ``OUT_DIR``::

    images/train/NNNNNN.png, images/test/NNNNNN.png   paths relative to images/
    train.json          one record per image, a single question (template vicuna_v1)
    test/questions.jsonl, test/answers.jsonl   held-out questions in LLaVA's eval format
                        (category: the answer), scored by ``mllm eval --answers``

CPU-sized command::

    python -m mllm.demo.resolution demo_resolution/ --num-train 2000 --num-test 100
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: ``(height, width)`` of the images. Under ``pad`` each becomes a 64-px square and is halved
#: for a 32-px tower, an even factor that cancels 1-px textures exactly; 48-px sides leave
#: padding in the anyres grid, which ``spatial_unpad`` then cuts away.
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (48, 64), (64, 48))
PATTERNS: tuple[str, ...] = ("horizontal", "vertical", "checkered", "plain")
SQUARE_SIDES = (16, 20, 24)
#: Contrast of the texture's outer rows and columns, outermost first. Without it the cut
#: averaging window at a striped edge leaves a faint line (up to 20 of 255 levels) that tells
#: stripes from checks; with it the halved images differ by at most 3 levels (rounding and the
#: resize's overshoot at the square's edge).
EDGE_TAPER = (1 / 6, 1 / 2, 5 / 6)
MEAN_RANGE = (75, 180)  # each channel of the square's mean colour
CONTRAST_RANGE = (40, 75)  # the two texture colours are the mean +- this on every channel
SHORT_ANSWER = "Answer the question using a single word or phrase."
#: The first is the held-out questions' phrasing.
QUESTIONS = (
    "What pattern fills the small square?",
    "Which texture does the square have?",
    "What is the pattern inside the square?",
    "Describe the texture of the square.",
)


@dataclass(frozen=True)
class TextureScene:
    """One image: a ``side``-px square at ``(top, left)`` on a ``background`` of ``size``.

    ``mean`` is the square's average colour; its two texture colours are ``mean +- contrast``,
    the first one at the square's corner when ``phase`` is 0.
    """

    size: tuple[int, int]
    pattern: str
    side: int
    top: int
    left: int
    background: tuple[int, int, int]
    mean: tuple[int, int, int]
    contrast: tuple[int, int, int]
    phase: int


@dataclass(frozen=True)
class ResolutionDataset:
    """Paths of a dataset written by :func:`make_resolution_dataset`."""

    root: Path
    image_folder: Path  # image paths in train.json and the questions are relative to it
    train_json: Path
    questions: Path
    answers: Path


def sample_texture_scene(rng: random.Random) -> TextureScene:
    """A scene with every choice uniform. The square starts on even pixels, so the halving
    pairs never straddle its edge; its texture is a grey-level contrast starting with the
    lighter colour (phase 0), so every 8-px patch of an anyres tile sees it the same way and
    a tower from scratch learns it in a few hundred steps (with random colour contrasts and
    phases it had learnt nothing after 600 steps, even with larger squares)."""
    height, width = rng.choice(IMAGE_SIZES)
    side = rng.choice(SQUARE_SIDES)
    contrast = rng.randint(*CONTRAST_RANGE)
    return TextureScene(
        size=(height, width),
        pattern=rng.choice(PATTERNS),
        side=side,
        top=2 * rng.randint(0, (height - side) // 2),
        left=2 * rng.randint(0, (width - side) // 2),
        background=tuple(rng.randint(0, 255) for _ in range(3)),
        mean=tuple(rng.randint(*MEAN_RANGE) for _ in range(3)),
        contrast=(contrast,) * 3,
        phase=0,
    )


def texture_signs(pattern: str, side: int, phase: int) -> np.ndarray:
    """``[side, side]`` weights in [-1, 1] of the contrast: +-1 alternating along the pattern's
    direction (0 for ``plain``), faded at the edges by :data:`EDGE_TAPER`."""
    rows, cols = np.mgrid[0:side, 0:side]
    if pattern == "horizontal":
        signs = (-1.0) ** (rows + phase)
    elif pattern == "vertical":
        signs = (-1.0) ** (cols + phase)
    elif pattern == "checkered":
        signs = (-1.0) ** (rows + cols + phase)
    elif pattern == "plain":
        signs = np.zeros((side, side))
    else:
        raise ValueError(f"unknown pattern {pattern!r}; choose one of {PATTERNS}")
    envelope = np.ones(side)
    for depth, weight in enumerate(EDGE_TAPER):
        envelope[depth] = envelope[side - 1 - depth] = weight
    return signs * envelope[:, None] * envelope[None, :]


def render_texture(scene: TextureScene) -> Image.Image:
    """The scene as an RGB image; texture values are rounded half away from the mean, so
    the two colours of every pixel pair stay symmetric about it."""
    height, width = scene.size
    pixels = np.empty((height, width, 3))
    pixels[:] = scene.background
    offset = texture_signs(scene.pattern, scene.side, scene.phase)[..., None] * scene.contrast
    offset = np.sign(offset) * np.floor(np.abs(offset) + 0.5)  # [side, side, 3]
    square = (slice(scene.top, scene.top + scene.side), slice(scene.left, scene.left + scene.side))
    pixels[square] = np.asarray(scene.mean, dtype=float) + offset
    return Image.fromarray(pixels.astype(np.uint8))


def _record(rng: random.Random, index: int, image: str, scene: TextureScene) -> dict:
    return {
        "id": f"resolution-{index:06d}",
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{rng.choice(QUESTIONS)}\n{SHORT_ANSWER}"},
            {"from": "gpt", "value": scene.pattern},
        ],
    }


def make_resolution_dataset(
    out_dir: Path, *, num_train: int, num_test: int, seed: int = 0
) -> ResolutionDataset:
    """Write the texture task; the same arguments always give the same bytes.

    Args:
        out_dir: Folder to write (files of the same names are overwritten).
        num_train: Training images, one single-question record each.
        num_test: Held-out images, one question each.
        seed: Seeds the training split; the test split uses a derived seed.

    Returns:
        The paths of the written files.

    Raises:
        ValueError: a negative count.
    """
    if min(num_train, num_test) < 0:
        raise ValueError("num_train and num_test must be >= 0")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    for split in ("train", "test"):
        (images / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "test").mkdir(exist_ok=True)
    dataset = ResolutionDataset(
        root=out_dir,
        image_folder=images,
        train_json=out_dir / "train.json",
        questions=out_dir / "test" / "questions.jsonl",
        answers=out_dir / "test" / "answers.jsonl",
    )

    rng = random.Random(seed)
    records = []
    for index in range(num_train):
        scene = sample_texture_scene(rng)
        relative = f"train/{index:06d}.png"
        render_texture(scene).save(images / relative)
        records.append(_record(rng, index, relative, scene))
    dataset.train_json.write_text(json.dumps(records, indent=1) + "\n")

    test_rng = random.Random(f"resolution-test-{seed}")
    questions, answers = [], []
    for index in range(num_test):
        scene = sample_texture_scene(test_rng)
        relative = f"test/{index:06d}.png"
        render_texture(scene).save(images / relative)
        text = f"{QUESTIONS[0]}\n{SHORT_ANSWER}"
        questions.append(
            {"question_id": index, "image": relative, "text": text, "category": scene.pattern}
        )
        answers.append({"question_id": index, "answer": scene.pattern})
    dataset.questions.write_text("".join(json.dumps(q) + "\n" for q in questions))
    dataset.answers.write_text("".join(json.dumps(a) + "\n" for a in answers))
    return dataset


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mllm.demo.resolution OUT_DIR --num-train N --num-test M``."""
    parser = argparse.ArgumentParser(
        prog="python -m mllm.demo.resolution",
        description="Write the texture task that needs more than a 32-px view.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dataset = make_resolution_dataset(
        args.out_dir, num_train=args.num_train, num_test=args.num_test, seed=args.seed
    )
    for name, path in vars(dataset).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
