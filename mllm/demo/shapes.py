"""A synthetic visual-QA dataset (coloured shapes on a background) in LLaVA's file formats.

Every answer depends on the image, so a model that scores well on the held-out split must
have learned to read its vision features. Each image shows 1-4 copies of one shape in one
colour, each in its own grid cell (:mod:`mllm.demo.scenes` draws them). Writes, under
``OUT_DIR``::

    images/{align,instruct,test}/NNNNNN.png   image paths in the JSON are relative to images/
    align.json          stage 1, LLaVA pretraining format (template ``plain``): image + caption
    instruct.json       stage 2, multi-turn short-answer dialogues (``vicuna_v1``), ~10% text-only;
                        half of the image ones end with a yes/no object question
    test/questions.jsonl, test/answers.jsonl   LLaVA eval format, one question per category
    test/shapes_pope_{random,popular,adversarial}.json   POPE format (:mod:`mllm.demo.pope`)

Variants: ``basic`` (flat gray, 2x2 quadrants, 4 shapes, 64 px) and ``hard`` (gradient and
noise backgrounds, 3x3 cells, 6 shapes, 48 px). Images need not match the vision tower's size:
the image processor resizes them (the demo tower sees 32 px). CPU-sized command::

    mllm demo-data demo_data/ --num-align 2000 --num-instruct 2000 --num-test 100
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from mllm.demo.pope import write_shapes_pope
from mllm.demo.scenes import (
    COLOURS,
    HARD_SHAPES,
    QUADRANTS,
    SHAPES,
    VARIANTS,
    Scene,
    get_variant,
    render,
    sample_scene,
)

__all__ = [
    "CAPTION_PROMPTS",
    "COLOURS",
    "HARD_SHAPES",
    "QUADRANTS",
    "QUESTIONS",
    "SHAPES",
    "SHORT_ANSWER",
    "VARIANTS",
    "Scene",
    "ShapesDataset",
    "applicable_categories",
    "make_shapes_dataset",
    "render",
    "sample_scene",
]

SHORT_ANSWER = "Answer the question using a single word or phrase."
# Phrasings fit one shape or several and any grid (no "corner"); the first is the test's.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("What color is the shape?", "What is the color of the shapes?", "Which color is it?"),
    "shape": ("What shape is in the image?", "What is the shape?", "Which shape is shown?"),
    "position": (
        "Where is the shape?",
        "Where is the shape located?",
        "In which part of the image is the shape?",
    ),
    "count": (
        "How many shapes are there?",
        "How many shapes are in the image?",
        "Count the shapes.",
    ),
}
CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short description of the image.",
    "What is in the picture?",
    "Summarize the visual content of the image.",
    "Write a terse caption for the image.",
)
TEXT_ONLY_FRACTION = 0.1
#: Share of image dialogues that end with a yes/no object question ("Is there a red circle in
#: the image?"), half of them answered "No": without any, a model answers "Yes" to every POPE
#: question (``mllm.demo.pope``), which measures nothing.
EXISTS_FRACTION = 0.5
EXISTS_QUESTION = "Is there a {colour} {shape} in the image?"


def applicable_categories(scene: Scene) -> list[str]:
    """Question categories that have one true short answer for ``scene``, in ``QUESTIONS`` order.

    ``position`` needs a single shape; the copies share colour and shape, so those always apply.
    """
    return [c for c in QUESTIONS if c != "position" or scene.count == 1]


@dataclass(frozen=True)
class ShapesDataset:
    """Paths of a dataset written by :func:`make_shapes_dataset`."""

    root: Path
    image_folder: Path  # image paths in every JSON file are relative to this folder
    align_json: Path
    instruct_json: Path
    questions: Path
    answers: Path


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
    applicable = applicable_categories(scene)
    categories = rng.sample(applicable, rng.randint(1, len(applicable)))
    conversations = []
    for turn, category in enumerate(categories):
        prefix = "<image>\n" if turn == 0 else ""
        conversations.append({"from": "human", "value": prefix + _question(rng, category)})
        conversations.append({"from": "gpt", "value": scene.answer(category)})
    return {"id": f"instruct-{index:06d}", "image": image, "conversations": conversations}


def _add_exists_turn(
    rng: random.Random, record: dict, scene: Scene, shapes: tuple[str, ...]
) -> None:
    """Append a yes/no object question to ``record`` (see ``EXISTS_FRACTION``); the absent
    object is any other (colour, shape) pair."""
    if rng.random() >= EXISTS_FRACTION:
        return
    present = (scene.colour, scene.shape)
    if rng.random() < 0.5:
        colour, shape, answer = *present, "Yes"
    else:
        pairs = [(c, s) for c in COLOURS for s in shapes if (c, s) != present]
        colour, shape, answer = *rng.choice(pairs), "No"
    question = EXISTS_QUESTION.format(colour=colour, shape=shape)
    record["conversations"] += [
        {"from": "human", "value": f"{question}\n{SHORT_ANSWER}"},
        {"from": "gpt", "value": answer},
    ]


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
    image_size: int | None = None,
    seed: int = 0,
    variant: str = "basic",
) -> ShapesDataset:
    """Write the shapes dataset; the same arguments always give the same bytes.

    Args:
        out_dir: Folder to write (existing files of the same names are overwritten).
        num_align: Stage-1 image-caption samples, one image each.
        num_instruct: Stage-2 samples; about 10% are text-only, the rest have one image
            with one question turn per category, 1 to all applicable ones, and half of them
            a yes/no object question last (``EXISTS_FRACTION``).
        num_test: Held-out images; each gives one question per applicable category (color,
            shape, count, and position when it shows a single shape).
        image_size: Square image side in pixels; ``None`` takes the variant's default (basic
            64, hard 48). Any size from 16 px per grid cell up works: the image processor
            resizes to the vision tower's input.
        seed: Seeds the training splits; the test split uses a derived seed and its images
            are checked to differ from every training image.
        variant: ``"basic"`` or ``"hard"`` (see :data:`mllm.demo.scenes.VARIANTS`).

    Returns:
        The paths of the written files.

    Raises:
        ValueError: for an unknown variant, an image too small for its grid or a negative count.
    """
    spec = get_variant(variant)
    image_size = spec.default_image_size if image_size is None else image_size
    if image_size < spec.min_image_size:
        raise ValueError(
            f"image_size={image_size} is too small to draw {variant!r} shapes; "
            f"use >= {spec.min_image_size}"
        )
    if min(num_align, num_instruct, num_test) < 0:
        raise ValueError("num_align, num_instruct and num_test must be >= 0")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    for split in ("align", "instruct", "test"):
        (images / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "test").mkdir(exist_ok=True)
    seen: set[Scene] = set()

    def new_scene(rng: random.Random) -> Scene:
        scene = sample_scene(rng, image_size, variant)
        seen.add(scene)
        return scene

    def save(split: str, index: int, scene: Scene) -> str:
        relative = f"{split}/{index:06d}.png"
        render(scene, image_size).save(images / relative)
        return relative

    rng = random.Random(seed)
    align = []
    for index in range(num_align):
        scene = new_scene(rng)
        align.append(_align_record(rng, index, save("align", index, scene), scene))

    text_only = set(rng.sample(range(num_instruct), round(TEXT_ONLY_FRACTION * num_instruct)))
    exists_rng = random.Random(f"shapes-exists-{seed}")  # leaves the other draws as they were
    instruct = []
    for index in range(num_instruct):
        if index in text_only:
            instruct.append(_text_only_record(rng, index))
            continue
        scene = new_scene(rng)
        record = _instruct_record(rng, index, save("instruct", index, scene), scene)
        _add_exists_turn(exists_rng, record, scene, spec.shapes)
        instruct.append(record)

    test_rng = random.Random(f"shapes-test-{seed}")
    questions, answers = [], []
    for index in range(num_test):
        scene = sample_scene(test_rng, image_size, variant)
        while scene in seen:  # keep held-out images out of the training splits
            scene = sample_scene(test_rng, image_size, variant)
        seen.add(scene)
        image = save("test", index, scene)
        for category in applicable_categories(scene):
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
    write_shapes_pope(out_dir, variant, seed)
    return dataset


if __name__ == "__main__":  # python -m mllm.demo.shapes: the same as mllm demo-data
    from mllm.commands.demo_data import main

    raise SystemExit(main())
