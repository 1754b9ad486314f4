"""The shapes demo's referring/grounding split: "where is the red star?" -> its box as text.

Each image shows 1-3 shapes, no two of one colour or one shape, anywhere on a flat gray
background (not in grid cells: the answer is a box, so position must be read finely). Every
shape is a referring expression, "the red star", whose answer is its bounding box as
MiniGPT-v2 writes it, ``{<x1><y1><x2><y2>}`` on a 0-100 grid. Writes, under ``OUT_DIR``::

    images/train/NNNNNN.png, test/images/NNNNNN.png
    refs_train.jsonl     the training images in the grounding format (mllm.data.grounding)
    train.json           the same converted to LLaVA records as MiniGPT-v2 samples them, a
                         single-turn record per expression:
                         "[refer] give me the location of the red star" ->
                         "{<55><12><83><40>}" (template minigpt_v2)
    test/refcoco_val.json  held-out expressions in MiniGPT-v2's RefCOCO evaluation format, so
                         ``mllm eval --benchmark refcoco --data-root OUT_DIR/test`` scores them

``mllm demo-data OUT --num-grounding N`` writes it to ``OUT/grounding``; CPU-sized command::

    python -m mllm.demo.grounding demo_grounding/ --num-train 4000 --num-test 100
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from mllm.data.grounding import convert_grounding
from mllm.demo.scenes import COLOURS, HARD_SHAPES, draw_shape

#: Shape side as a fraction of the image side: 16-24 px at 64 px, two to three patches of 8.
SIZE_RANGE = (0.25, 0.375)
GRAY_RANGE = (30, 130)
MAX_TRIES = 200


@dataclass(frozen=True)
class Item:
    """One shape of a grounding scene; ``box`` is its pixel box ``(x, y, w, h)``."""

    colour: str
    shape: str
    box: tuple[int, int, int, int]

    @property
    def expression(self) -> str:
        return f"the {self.colour} {self.shape}"


@dataclass(frozen=True)
class GroundingScene:
    items: tuple[Item, ...]
    gray: int


@dataclass(frozen=True)
class GroundingDataset:
    """Paths of a dataset written by :func:`make_grounding_dataset`."""

    root: Path
    image_folder: Path  # train.json's image paths are relative to it
    refs: Path
    train_json: Path
    test_root: Path  # the refcoco benchmark's --data-root


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Boxes closer than a pixel."""
    return not (
        a[0] + a[2] < b[0] or b[0] + b[2] < a[0] or a[1] + a[3] < b[1] or b[1] + b[3] < a[1]
    )


def _count(rng: random.Random) -> int:
    """A quarter of the scenes hold one shape: where it is, without telling shapes apart, is
    what a model from scratch learns first. The rest hold two or three."""
    return 1 if rng.random() < 0.25 else rng.randint(2, 3)


def sample_grounding_scene(rng: random.Random, image_size: int) -> GroundingScene:
    """1-3 shapes at random, non-touching places inside the image, no two of one colour or
    one shape (a tiny model from scratch binds colour far sooner than shape)."""
    colours = rng.sample(list(COLOURS), 3)
    shapes = rng.sample(HARD_SHAPES, 3)
    pairs = list(zip(colours, shapes, strict=True))[: _count(rng)]
    low, high = (round(f * image_size) for f in SIZE_RANGE)
    items: list[Item] = []
    for colour, shape in pairs:
        for _ in range(MAX_TRIES):
            size = rng.randint(low, high)
            x, y = rng.randint(0, image_size - size), rng.randint(0, image_size - size)
            box = (x, y, size, size)
            if not any(_overlaps(box, other.box) for other in items):
                items.append(Item(colour, shape, box))
                break
    return GroundingScene(tuple(items), rng.randint(*GRAY_RANGE))


def render_grounding(scene: GroundingScene, image_size: int) -> Image.Image:
    """Draw the scene; each shape fills its box exactly (``draw_shape`` centres a box)."""
    image = Image.new("RGB", (image_size, image_size), (scene.gray,) * 3)
    draw = ImageDraw.Draw(image)
    for item in scene.items:
        x, y, size, _ = item.box
        draw_shape(draw, item.shape, (x + size // 2, y + size // 2), size, COLOURS[item.colour])
    return image


def make_grounding_dataset(
    out_dir: Path, *, num_train: int, num_test: int, image_size: int = 64, seed: int = 0
) -> GroundingDataset:
    """Write the grounding split; the same arguments always give the same bytes.

    Args:
        out_dir: Folder to write (files of the same names are overwritten).
        num_train: Training images; each gives a single-turn ``[refer]`` record per shape
            (MiniGPT-v2's sampling; it grounds far better than a conversation per image).
        num_test: Held-out images; each gives one question per shape.
        image_size: Square image side in pixels (the tower's processor resizes).
        seed: Seeds the training images; the test split uses a derived seed.

    Raises:
        ValueError: a negative count or an image under 32 px.
    """
    if min(num_train, num_test) < 0 or image_size < 32:
        raise ValueError("num_train and num_test must be >= 0 and image_size >= 32")
    out_dir = Path(out_dir)
    train_images, test_root = out_dir / "images" / "train", out_dir / "test"
    train_images.mkdir(parents=True, exist_ok=True)
    (test_root / "images").mkdir(parents=True, exist_ok=True)

    rng = random.Random(seed)
    refs = []
    for index in range(num_train):
        scene = sample_grounding_scene(rng, image_size)
        relative = f"train/{index:06d}.png"
        render_grounding(scene, image_size).save(out_dir / "images" / relative)
        refs.append(
            {
                "id": f"grounding-{index:06d}",
                "image": relative,
                "width": image_size,
                "height": image_size,
                "refs": [
                    {"bbox": list(item.box), "sentences": [item.expression]} for item in scene.items
                ],
            }
        )
    dataset = GroundingDataset(
        root=out_dir,
        image_folder=out_dir / "images",
        refs=out_dir / "refs_train.jsonl",
        train_json=out_dir / "train.json",
        test_root=test_root,
    )
    dataset.refs.write_text("".join(json.dumps(record) + "\n" for record in refs))
    records = convert_grounding(dataset.refs, tasks=("refer",), seed=seed)
    dataset.train_json.write_text(json.dumps(records, indent=1) + "\n")

    test_rng = random.Random(f"grounding-test-{seed}")
    questions = []
    for index in range(num_test):
        scene = sample_grounding_scene(test_rng, image_size)
        relative = f"images/{index:06d}.png"
        render_grounding(scene, image_size).save(test_root / relative)
        for k, item in enumerate(scene.items):
            questions.append(
                {
                    "img_id": f"shapes_{index:06d}_{k}",
                    "image": relative,
                    "sents": item.expression,
                    "bbox": list(item.box),
                    "height": image_size,
                    "width": image_size,
                }
            )
    (test_root / "refcoco_val.json").write_text(json.dumps(questions, indent=1) + "\n")
    return dataset


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mllm.demo.grounding OUT_DIR --num-train N --num-test M``."""
    parser = argparse.ArgumentParser(
        prog="python -m mllm.demo.grounding", description="Write the shapes grounding split."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dataset = make_grounding_dataset(
        args.out_dir,
        num_train=args.num_train,
        num_test=args.num_test,
        image_size=args.image_size,
        seed=args.seed,
    )
    for name, path in vars(dataset).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
