"""A tiny model trained on the colour questions of the shapes task, once per test session.

Trained through the real ``scripts/train.py`` (one instruct stage, every part trained in full)
on about 600 colour questions of ``mllm demo-data``; it then names the colour of held-out
shapes (12/12 when this was written, ~60-75 s on 2 busy cores). Generation, chat and
serving tests use it to check real answers rather than the output of random weights.

Set ``MLLM_TEST_TRAINED_SHAPES=DIR`` to train into DIR and reuse it in later sessions while
developing (it retrains when the recipe changes). ``tests/conftest.py`` loads this module as a
plugin, so there is one fixture and training runs once, however many modules ask for it.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from training_utils import run_train, tiny_recipe, write_recipe

from mllm.demo.shapes import SHORT_ANSWER, make_shapes_dataset
from mllm.tiny import make_tiny_models

COLOUR_QUESTION = f"What color is the shape?\n{SHORT_ANSWER}"


@dataclass(frozen=True)
class Question:
    image: Path
    text: str
    answer: str


@dataclass(frozen=True)
class TrainedShapes:
    checkpoint: Path  # RUN/instruct/final
    recipe: Path  # the recipe it was trained with (its untrained models: model.*.path)
    image_folder: Path
    held_out: list[Question]  # colour questions on test images


def _colour_records(instruct_json: Path) -> list[dict]:
    """Each instruct sample's colour question alone, as a one-exchange conversation."""
    records = []
    for record in json.loads(instruct_json.read_text()):
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            if "image" in record and "color" in human["value"]:
                question = human["value"].removeprefix("<image>\n")
                records.append(
                    {
                        "id": record["id"],
                        "image": record["image"],
                        "conversations": [
                            {"from": "human", "value": f"<image>\n{question}"},
                            {"from": "gpt", "value": gpt["value"]},
                        ],
                    }
                )
    return records


@functools.cache
def build_trained_shapes(root: Path) -> TrainedShapes:
    models = make_tiny_models(
        root / "models", image_size=32, patch_size=8, llm_hidden=32, vision_hidden=32
    )
    data = make_shapes_dataset(
        root / "data", num_align=1, num_instruct=1000, num_test=12, image_size=32
    )
    colour_json = root / "colour.json"
    colour_json.write_text(json.dumps(_colour_records(data.instruct_json)))
    workspace = {**models, "images": data.image_folder, "align": data.align_json}
    recipe = tiny_recipe({**workspace, "instruct": colour_json}, root / "run")
    instruct = recipe["stages"]["instruct"]
    del instruct["init_from"]
    instruct.update(
        train={"vision": "full", "projector": "full", "llm": "full"},
        optim={"lr": 4e-3, "warmup_ratio": 0.0},
        max_steps=350,
        global_batch_size=16,
        micro_batch_size=16,
    )
    recipe["stages"] = {"instruct": instruct}
    checkpoint = root / "run" / "instruct" / "final"
    recipe_path = root / "recipe.yaml"
    previous = recipe_path.read_text() if recipe_path.is_file() else None
    write_recipe(recipe_path, recipe)
    if previous != recipe_path.read_text() or not (checkpoint / "manifest.json").is_file():
        run_train([str(recipe_path)])
    answers = {
        json.loads(line)["question_id"]: json.loads(line)["answer"]
        for line in data.answers.read_text().splitlines()
    }
    held_out = [
        Question(data.image_folder / q["image"], COLOUR_QUESTION, answers[q["question_id"]])
        for q in map(json.loads, data.questions.read_text().splitlines())
        if q["category"] == "color"
    ]
    return TrainedShapes(checkpoint, recipe_path, data.image_folder, held_out)


@pytest.fixture(scope="session")
def trained_shapes(tmp_path_factory: pytest.TempPathFactory) -> TrainedShapes:
    """The trained model; ``MLLM_TEST_TRAINED_SHAPES=DIR`` keeps it in DIR between sessions."""
    keep = os.environ.get("MLLM_TEST_TRAINED_SHAPES")
    root = Path(keep) if keep else tmp_path_factory.getbasetemp() / "trained_shapes"
    return build_trained_shapes(root.resolve())
