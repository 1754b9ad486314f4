"""POPE-style yes/no object questions about the shapes dataset's test images, so ``mllm eval
--benchmark pope`` runs on the demo.

An object is a (colour, shape) pair: a test image shows one ("Is there a red circle in the
image?" -> yes). Each image gets one present and one absent pair per split, so answers are
balanced as in POPE; the absent pair is drawn as POPE draws its negatives:

- ``random``: any pair the image does not show;
- ``popular``: the pair shown by the most test images among those it does not show;
- ``adversarial``: a pair sharing the colour or the shape of the one it shows (the demo's
  analogue of POPE's frequently co-occurring objects).

Written next to the test questions, in POPE's format (JSON lines of ``question_id``,
``image``, ``text``, ``label``; ``image`` relative to the test folder)::

    OUT_DIR/test/shapes_pope_random.json
    OUT_DIR/test/shapes_pope_popular.json
    OUT_DIR/test/shapes_pope_adversarial.json

``mllm eval --benchmark pope --data-root OUT_DIR/test`` reads them.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from mllm.demo.scenes import COLOURS, get_variant

SPLITS = ("random", "popular", "adversarial")
Pair = tuple[str, str]  # (colour, shape)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _test_objects(test_folder: Path) -> dict[str, Pair]:
    """Image path (relative to images/) -> its (colour, shape), from the test answers."""
    questions = _read_jsonl(test_folder / "questions.jsonl")
    answers = {r["question_id"]: r["answer"] for r in _read_jsonl(test_folder / "answers.jsonl")}
    found: dict[str, dict[str, str]] = {}
    for question in questions:
        if question["category"] in ("color", "shape"):
            found.setdefault(question["image"], {})[question["category"]] = answers[
                question["question_id"]
            ].lower()
    return {image: (values["color"], values["shape"]) for image, values in found.items()}


def _negative(split: str, present: Pair, pairs: list[Pair], counts: Counter, rng: random.Random) -> Pair:  # fmt: skip
    absent = [pair for pair in pairs if pair != present]
    if split == "random":
        return rng.choice(absent)
    if split == "popular":
        return max(absent, key=lambda pair: (counts[pair], -pairs.index(pair)))
    near = [pair for pair in absent if pair[0] == present[0] or pair[1] == present[1]]
    return rng.choice(near)


def write_shapes_pope(out_dir: Path, variant: str = "basic", seed: int = 0) -> dict[str, Path]:
    """Write the POPE files of the shapes dataset in ``out_dir`` (see the module docstring).

    Args:
        out_dir: a folder written by :func:`mllm.demo.shapes.make_shapes_dataset`.
        variant: its variant (which shapes a negative may name).
        seed: seeds the random and adversarial negatives.

    Returns:
        split -> the file written.
    """
    test_folder = Path(out_dir) / "test"
    objects = _test_objects(test_folder)
    pairs = [(colour, shape) for colour in COLOURS for shape in get_variant(variant).shapes]
    counts = Counter(objects.values())
    written = {}
    for split in SPLITS:
        rng = random.Random(f"shapes-pope-{split}-{seed}")
        records = []
        for image, present in objects.items():
            negative = _negative(split, present, pairs, counts, rng)
            for (colour, shape), label in ((present, "yes"), (negative, "no")):
                records.append(
                    {
                        "question_id": len(records) + 1,
                        "image": f"../images/{image}",
                        "text": f"Is there a {colour} {shape} in the image?",
                        "label": label,
                    }
                )
        path = test_folder / f"shapes_pope_{split}.json"
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
        written[split] = path
    return written
