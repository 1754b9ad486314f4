"""A synthetic visual-QA dataset (one coloured shape per image) in LLaVA's file formats.

Every answer depends on the image, so a model that scores well on the held-out split must
have learned to read its vision features. Writes, under ``OUT_DIR``::

    images/{align,instruct,test}/NNNNNN.png   image paths in the JSON are relative to images/
    align.json          stage 1, LLaVA pretraining format (template ``plain``): image + caption
    instruct.json       stage 2, multi-turn short-answer dialogues (``vicuna_v1``), ~10% text-only
    test/questions.jsonl, test/answers.jsonl   LLaVA eval format, one question per category

CPU-sized command::

    python -m mllm.demo.shapes demo_data/ --num-align 2000 --num-instruct 2000 --num-test 100
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

# Saturated colours far from each other and from any gray (the background is gray).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (40, 80, 235),
    "yellow": (240, 225, 40),
    "purple": (150, 50, 210),
    "orange": (250, 135, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
BACKGROUND_GRAY = (30, 130)  # inclusive range of the flat background level
# Shape side as a fraction of the image side (a quadrant is 0.5). At 0.22-0.34 a random
# patch-8 ViT learned shape poorly (~60% held-out) while colour and position were ~100%.
SIZE_RANGE = (0.34, 0.44)
SHORT_ANSWER = "Answer the question using a single word or phrase."
QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("What color is the shape?", "What is the color of the shape?", "Which color is it?"),
    "shape": ("What shape is in the image?", "What is the shape?", "Which shape is shown?"),
    "position": ("Where is the shape?", "Where is the shape located?", "Which corner is it in?"),
}
CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short description of the image.",
    "What is in the picture?",
    "Summarize the visual content of the image.",
    "Write a terse caption for the image.",
)
TEXT_ONLY_FRACTION = 0.1


@dataclass(frozen=True)
class Scene:
    """What one image shows; the pixel-level parameters make each image reproducible."""

    colour: str
    shape: str
    quadrant: str
    center: tuple[int, int]
    size: int
    background: int

    def answer(self, category: str) -> str:
        return {"color": self.colour, "shape": self.shape, "position": self.quadrant}[category]

    def caption(self) -> str:
        article = "An" if self.colour[0] in "aeiou" else "A"
        return f"{article} {self.colour} {self.shape} in the {self.quadrant}."


@dataclass(frozen=True)
class ShapesDataset:
    """Paths of a dataset written by :func:`make_shapes_dataset`."""

    root: Path
    image_folder: Path  # image paths in every JSON file are relative to this folder
    align_json: Path
    instruct_json: Path
    questions: Path
    answers: Path


def sample_scene(rng: random.Random, image_size: int) -> Scene:
    """Draw a random scene whose shape lies entirely inside its quadrant."""
    half = image_size // 2
    size = rng.randint(round(SIZE_RANGE[0] * image_size), round(SIZE_RANGE[1] * image_size))
    quadrant = rng.choice(QUADRANTS)
    x0 = half if quadrant.endswith("right") else 0
    y0 = half if quadrant.startswith("bottom") else 0
    lo, hi = size // 2 + 1, half - (size - size // 2) - 1
    center = (x0 + rng.randint(lo, hi), y0 + rng.randint(lo, hi))
    return Scene(
        colour=rng.choice(list(COLOURS)),
        shape=rng.choice(SHAPES),
        quadrant=quadrant,
        center=center,
        size=size,
        background=rng.randint(*BACKGROUND_GRAY),
    )


def render(scene: Scene, image_size: int) -> Image.Image:
    """Draw ``scene`` on a flat gray RGB canvas (no anti-aliasing: two colours only)."""
    gray = scene.background
    image = Image.new("RGB", (image_size, image_size), (gray, gray, gray))
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    cx, cy = scene.center
    left, top = cx - scene.size // 2, cy - scene.size // 2
    right, bottom = left + scene.size - 1, top + scene.size - 1
    if scene.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(cx, top), (right, bottom), (left, bottom)], fill=fill)
    elif scene.shape == "cross":
        bar = max(2, scene.size // 4)  # thin bars: a thick cross reads like a circle at patch 8
        a = left + (scene.size - bar) // 2
        draw.rectangle((a, top, a + bar - 1, bottom), fill=fill)
        a = top + (scene.size - bar) // 2
        draw.rectangle((left, a, right, a + bar - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; choose from {SHAPES}")
    return image


def _question(rng: random.Random, category: str) -> str:
    return f"{rng.choice(QUESTIONS[category])}\n{SHORT_ANSWER}"


def _align_record(rng: random.Random, index: int, image: str, scene: Scene) -> dict:
    return {
        "id": f"align-{index:06d}",
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{rng.choice(CAPTION_PROMPTS)}"},
            {"from": "gpt", "value": scene.caption()},
        ],
    }


def _instruct_record(rng: random.Random, index: int, image: str, scene: Scene) -> dict:
    categories = rng.sample(list(QUESTIONS), rng.randint(1, len(QUESTIONS)))
    conversations = []
    for turn, category in enumerate(categories):
        prefix = "<image>\n" if turn == 0 else ""
        conversations.append({"from": "human", "value": prefix + _question(rng, category)})
        conversations.append({"from": "gpt", "value": scene.answer(category)})
    return {"id": f"instruct-{index:06d}", "image": image, "conversations": conversations}


def _text_only_record(rng: random.Random, index: int) -> dict:
    """Trivial arithmetic, so batches mix samples with and without an image."""
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        question, answer = f"What is {a} plus {b}?", a + b
    else:
        a, b = max(a, b), min(a, b)
        question, answer = f"What is {a} minus {b}?", a - b
    return {
        "id": f"text-{index:06d}",
        "conversations": [
            {"from": "human", "value": f"{question}\n{SHORT_ANSWER}"},
            {"from": "gpt", "value": str(answer)},
        ],
    }


def _write_json(path: Path, records: list[dict]) -> None:
    path.write_text(json.dumps(records, indent=1) + "\n")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def make_shapes_dataset(
    out_dir: Path,
    *,
    num_align: int,
    num_instruct: int,
    num_test: int,
    image_size: int = 64,
    seed: int = 0,
) -> ShapesDataset:
    """Write the shapes dataset; the same arguments always give the same bytes.

    Args:
        out_dir: Folder to write (existing files of the same names are overwritten).
        num_align: Stage-1 image-caption samples, one image each.
        num_instruct: Stage-2 samples; about 10% are text-only, the rest have one image
            with 1-3 question turns.
        num_test: Held-out images; each gives three questions (color, shape, position).
        image_size: Square image side in pixels (at least 32).
        seed: Seeds the training splits; the test split uses a derived seed and its images
            are checked to differ from every training image.

    Returns:
        The paths of the written files.

    Raises:
        ValueError: for an image smaller than 32 pixels or a negative count.
    """
    if image_size < 32:
        raise ValueError(f"image_size={image_size} is too small to draw shapes; use >= 32")
    if min(num_align, num_instruct, num_test) < 0:
        raise ValueError("num_align, num_instruct and num_test must be >= 0")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    for split in ("align", "instruct", "test"):
        (images / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "test").mkdir(exist_ok=True)
    seen: set[Scene] = set()

    def save(split: str, index: int, scene: Scene) -> str:
        relative = f"{split}/{index:06d}.png"
        render(scene, image_size).save(images / relative)
        return relative

    rng = random.Random(seed)
    align = []
    for index in range(num_align):
        scene = sample_scene(rng, image_size)
        seen.add(scene)
        align.append(_align_record(rng, index, save("align", index, scene), scene))

    text_only = set(rng.sample(range(num_instruct), round(TEXT_ONLY_FRACTION * num_instruct)))
    instruct = []
    for index in range(num_instruct):
        if index in text_only:
            instruct.append(_text_only_record(rng, index))
            continue
        scene = sample_scene(rng, image_size)
        seen.add(scene)
        instruct.append(_instruct_record(rng, index, save("instruct", index, scene), scene))

    test_rng = random.Random(f"shapes-test-{seed}")
    questions, answers = [], []
    for index in range(num_test):
        scene = sample_scene(test_rng, image_size)
        while scene in seen:  # keep held-out images out of the training splits
            scene = sample_scene(test_rng, image_size)
        seen.add(scene)
        image = save("test", index, scene)
        for category in QUESTIONS:
            question_id = len(questions)
            text = f"{QUESTIONS[category][0]}\n{SHORT_ANSWER}"
            questions.append(
                {"question_id": question_id, "image": image, "text": text, "category": category}
            )
            answers.append({"question_id": question_id, "answer": scene.answer(category)})

    dataset = ShapesDataset(
        root=out_dir,
        image_folder=images,
        align_json=out_dir / "align.json",
        instruct_json=out_dir / "instruct.json",
        questions=out_dir / "test" / "questions.jsonl",
        answers=out_dir / "test" / "answers.jsonl",
    )
    _write_json(dataset.align_json, align)
    _write_json(dataset.instruct_json, instruct)
    _write_jsonl(dataset.questions, questions)
    _write_jsonl(dataset.answers, answers)
    return dataset


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m mllm.demo.shapes OUT_DIR --num-align N ...``."""
    parser = argparse.ArgumentParser(
        prog="mllm.demo.shapes", description="Write the synthetic shapes visual-QA dataset."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-align", type=int, default=2000)
    parser.add_argument("--num-instruct", type=int, default=2000)
    parser.add_argument(
        "--num-test", type=int, default=100, help="held-out images (3 questions each)"
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dataset = make_shapes_dataset(
        args.out_dir,
        num_align=args.num_align,
        num_instruct=args.num_instruct,
        num_test=args.num_test,
        image_size=args.image_size,
        seed=args.seed,
    )
    for name, path in vars(dataset).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
