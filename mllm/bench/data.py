"""A synthetic instruction-tuning set with LLaVA-665k's spread of lengths, for benchmarks.

Padding and packing only matter when lengths differ, so the mix imitates LLaVA's: short
image captions, one-to-three-turn visual questions, long multi-turn image dialogues, and
text-only chat, short and long. Images are the shapes dataset's (``mllm.demo.shapes``), so
every answer is about the image. The same arguments always give the same files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from mllm.demo.shapes import CAPTION_PROMPTS, QUESTIONS, SHORT_ANSWER, render, sample_scene

#: Share of each kind of record (LLaVA-665k is mostly image QA, ~6% text-only ShareGPT).
MIX: dict[str, float] = {
    "caption": 0.30,
    "vqa": 0.35,
    "dialogue": 0.20,
    "text_short": 0.10,
    "text_long": 0.05,
}
#: Alignment data (LLaVA's 558K pretraining set): one short caption per image.
CAPTIONS: dict[str, float] = {"caption": 1.0}
#: The data shapes a benchmark can train on, by name.
SHAPES = {"mix": MIX, "captions": CAPTIONS}
_FOLLOW_UPS = (
    "Tell me more about it.",
    "Describe the shape in detail.",
    "What else do you notice?",
    "How would you describe the picture to a friend?",
)


@dataclass(frozen=True)
class LengthMix:
    """Paths of a written mix: ``records`` (vicuna_v1 conversations) and its image folder."""

    records: Path
    image_folder: Path


def _detail(rng: random.Random, scene) -> str:
    """A few sentences about the scene (a 'detailed description' answer)."""
    sentences = [
        scene.caption(),
        f"The {scene.shape} is {scene.colour} and sits in the {scene.quadrant} of the image.",
        f"The background is a flat gray, so the {scene.colour} {scene.shape} stands out.",
        f"Nothing else is in the picture apart from the {scene.shape}.",
    ]
    return " ".join(rng.sample(sentences, rng.randint(2, len(sentences))))


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."


def _record(rng: random.Random, kind: str, index: int, image: str | None, scene) -> dict:
    turns: list[tuple[str, str]] = []
    if kind == "caption":
        turns = [(rng.choice(CAPTION_PROMPTS), scene.caption())]
    elif kind == "vqa":
        for category in rng.sample(list(QUESTIONS), rng.randint(1, len(QUESTIONS))):
            question = f"{rng.choice(QUESTIONS[category])}\n{SHORT_ANSWER}"
            turns.append((question, scene.answer(category)))
    elif kind == "dialogue":
        for _ in range(rng.randint(4, 9)):
            if rng.random() < 0.5:
                category = rng.choice(list(QUESTIONS))
                turns.append((rng.choice(QUESTIONS[category]), scene.answer(category)))
            else:
                turns.append((rng.choice(_FOLLOW_UPS), _detail(rng, scene)))
    elif kind == "text_short":
        turns = [_arithmetic(rng) for _ in range(rng.randint(1, 3))]
    else:  # text_long
        turns = [_arithmetic(rng) for _ in range(rng.randint(6, 14))]
    conversations = []
    for turn, (question, answer) in enumerate(turns):
        prefix = "<image>\n" if image is not None and turn == 0 else ""
        conversations.append({"from": "human", "value": prefix + question})
        conversations.append({"from": "gpt", "value": answer})
    record = {"id": f"{kind}-{index:06d}", "conversations": conversations}
    if image is not None:
        record["image"] = image
    return record


def write_length_mix(
    out_dir: Path, *, num_samples: int, image_size: int = 32, seed: int = 0, shape: str = "mix"
) -> LengthMix:
    """Write ``out_dir/mix.json`` and its images (reused when already written alike).

    Args:
        out_dir: folder to write.
        num_samples: records in the mix.
        image_size: square image side in pixels (at least 32).
        seed: seeds the kinds, scenes and turns.
        shape: a key of :data:`SHAPES`: ``mix`` (LLaVA-665k's spread of lengths) or
            ``captions`` (single caption exchanges, as in alignment data).

    Returns:
        The records file and image folder.
    """
    out_dir = Path(out_dir)
    images = out_dir / "images"
    records_path = out_dir / "mix.json"
    stamp = out_dir / "mix_args.json"
    if shape not in SHAPES:
        raise ValueError(f"unknown data shape {shape!r}; choose one of {list(SHAPES)}")
    args = {"num_samples": num_samples, "image_size": image_size, "seed": seed, "shape": shape}
    if records_path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == args:
        return LengthMix(records_path, images)
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    kinds, weights = list(SHAPES[shape]), list(SHAPES[shape].values())
    records = []
    for index in range(num_samples):
        kind = rng.choices(kinds, weights)[0]
        image = scene = None
        if not kind.startswith("text"):
            scene = sample_scene(rng, image_size)
            image = f"{index:06d}.png"
            render(scene, image_size).save(images / image)
        records.append(_record(rng, kind, index, image, scene))
    records_path.write_text(json.dumps(records, indent=1) + "\n")
    stamp.write_text(json.dumps(args))
    return LengthMix(records_path, images)
