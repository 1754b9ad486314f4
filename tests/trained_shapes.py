"""A tiny model trained on the colour and count questions of the shapes task, once per session.

Trained through the real ``scripts/train.py`` (one instruct stage, every part trained in full)
on the colour and count questions of ``mllm demo-data``; it then names the colour and the
number of held-out shapes. Its answers are what real tokenizers split badly: ``"3"`` is
``'▁', '3'`` and ``"Yellow"`` is ``'▁', '<0x59>', ...`` in the tiny general-text tokenizer,
so a model that answers them has learned to write the lone ``'▁'`` first. Generation, chat
and serving tests use it to check real answers rather than the output of random weights.

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

from mllm.data import IGNORE_INDEX, get_template, tokenize_conversation
from mllm.demo.shapes import make_shapes_dataset
from mllm.tiny import make_tiny_models

CATEGORIES = ("color", "count")


@dataclass(frozen=True)
class Question:
    image: Path
    text: str
    answer: str


def answer_targets(loaded, question: Question, answer: str) -> list[int]:
    """The target ids training gives ``answer`` to ``question``: what generation must write.

    ``loaded`` is a :class:`mllm.inference.LoadedModel` of the trained checkpoint.
    """
    conversation = [
        {"from": "human", "value": f"<image>\n{question.text}"},
        {"from": "gpt", "value": answer},
    ]
    sample = tokenize_conversation(
        conversation,
        get_template(loaded.template),
        loaded.built.tokenizer,
        image_token=loaded.built.image_token,
        num_image_tokens=loaded.built.model.num_image_tokens,
        max_length=4096,
    )
    return [label for label in sample.labels if label != IGNORE_INDEX]


@dataclass(frozen=True)
class TrainedShapes:
    checkpoint: Path  # RUN/instruct/final
    recipe: Path  # the recipe it was trained with (its untrained models: model.*.path)
    image_folder: Path
    held_out: list[Question]  # colour and count questions on test images


def _question_records(instruct_json: Path) -> list[dict]:
    """Each instruct sample's colour and count questions alone, as one-exchange conversations."""
    records = []
    for record in json.loads(instruct_json.read_text()):
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            question = human["value"].lower()
            if "image" in record and ("color" in question or "how many" in question):
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
        root / "data", num_align=1, num_instruct=3000, num_test=12, image_size=32
    )
    questions_json = root / "questions.json"
    questions_json.write_text(json.dumps(_question_records(data.instruct_json)))
    workspace = {**models, "images": data.image_folder, "align": data.align_json}
    recipe = tiny_recipe({**workspace, "instruct": questions_json}, root / "run")
    instruct = recipe["stages"]["instruct"]
    del instruct["init_from"]
    instruct.update(
        train={"vision": "full", "projector": "full", "llm": "full"},
        optim={"lr": 2e-3, "warmup_ratio": 0.05},
        max_steps=1000,
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
        Question(data.image_folder / q["image"], q["text"], answers[q["question_id"]])
        for q in map(json.loads, data.questions.read_text().splitlines())
        if q["category"] in CATEGORIES
    ]
    return TrainedShapes(checkpoint, recipe_path, data.image_folder, held_out)


@pytest.fixture(scope="session")
def trained_shapes(tmp_path_factory: pytest.TempPathFactory) -> TrainedShapes:
    """The trained model; ``MLLM_TEST_TRAINED_SHAPES=DIR`` keeps it in DIR between sessions."""
    keep = os.environ.get("MLLM_TEST_TRAINED_SHAPES")
    root = Path(keep) if keep else tmp_path_factory.getbasetemp() / "trained_shapes"
    return build_trained_shapes(root.resolve())


@pytest.fixture(scope="module")
def loaded(trained_shapes: TrainedShapes):
    """The trained model as ``mllm.load`` gives it, one torch thread (as in a served process)."""
    import torch

    import mllm

    torch.set_num_threads(1)
    return mllm.load(trained_shapes.checkpoint)


@pytest.fixture(scope="module")
def untrained(trained_shapes: TrainedShapes):
    """The trained model's architecture with random weights: its answers rarely stop, so they
    run to the budget."""
    import torch

    from mllm.checkpoint import LoadedModel
    from mllm.config import load_recipe
    from mllm.data.recipe_templates import special_tokens_for
    from mllm.models.assembly import build_model

    recipe = load_recipe(trained_shapes.recipe)
    torch.manual_seed(0)
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    built.model.eval()
    return LoadedModel(built, recipe, "vicuna_v1", "pad", {})
