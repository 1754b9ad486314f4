"""Validation during training (``stages.S.eval``) and early stopping (``stages.S.early_stop``).

The accuracy must be what ``mllm eval`` would report for the same questions, the loss the
token-weighted mean of the training loss over the held-out samples, and both the same with one
process and with two under ZeRO-2 and ZeRO-3. Held-out records must never be trained on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from training_utils import make_workspace, run_train, tiny_recipe, write_recipe

import mllm
from mllm.checkpoint import read_manifest
from mllm.config import RecipeError, validate_recipe
from mllm.config.checks import check_data_paths
from mllm.config.schema import EarlyStopConfig, EvalConfig
from mllm.data.recipe_templates import special_tokens_for, stage_template
from mllm.data.records import DataError, hold_out
from mllm.data.stage_data import build_dataset, build_stage_datasets
from mllm.eval.run import answer_questions
from mllm.eval.scoring import is_correct
from mllm.models import build_model
from mllm.training.distributed import Runtime
from mllm.training.early_stop import EarlyStopping
from mllm.training.metrics import read_metrics
from mllm.training.validation import Validator, _shard_batches


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


# ---------------------------------------------------------------- pieces


def test_hold_out_depends_on_the_seed_only_and_keeps_both_sides():
    kept, held = hold_out(50, 0.1, seed=3)
    assert len(held) == 5 and sorted(kept + held) == list(range(50))
    assert hold_out(50, 0.1, seed=3) == (kept, held)
    assert hold_out(50, 0.1, seed=4)[1] != held
    assert len(hold_out(10, 0.001, seed=0)[1]) == 1  # at least one held out
    assert len(hold_out(3, 0.99, seed=0)[0]) == 1  # at least one left to train on
    with pytest.raises(DataError, match="1 record"):
        hold_out(1, 0.5, seed=0)


@pytest.mark.parametrize("count", [0, 1, 5, 7, 8])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_rank_gets_the_same_number_of_batches_and_all_items_once(count, world):
    shards = [list(_shard_batches(list(range(count)), rank, world, 2)) for rank in range(world)]
    assert len({len(batches) for batches in shards}) == 1
    seen = sorted(item for batches in shards for batch in batches for item in batch)
    assert seen == list(range(count))


@pytest.mark.parametrize(
    ("metric", "values", "min_delta", "best_step", "stops_after"),
    [
        ("val_loss", [3.0, 2.0, 2.5, 1.99], 0.0, 4, None),
        ("val_loss", [3.0, 2.0, 1.95, 1.92], 0.1, 2, 4),  # 0.05 and 0.08 are not enough
        ("val_accuracy", [0.2, 0.5, 0.5, 0.4], 0.0, 2, 4),
        ("val_accuracy", [0.2, 0.1, 0.3, 0.3], 0.0, 3, None),
    ],
)
def test_early_stopping_counts_validations_without_improvement(
    metric, values, min_delta, best_step, stops_after
):
    tracker = EarlyStopping(EarlyStopConfig(metric=metric, patience=2, min_delta=min_delta))
    stopped = None
    for step, value in enumerate(values, start=1):
        tracker.update(step, {metric: value})
        if tracker.should_stop and stopped is None:
            stopped = step
    assert tracker.best_step == best_step
    assert stopped == stops_after
    again = EarlyStopping(tracker.config)
    again.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert again == tracker


def test_recipe_checks_name_the_eval_keys(ws, tmp_path):
    def problems(**stage) -> dict[str, str]:
        raw = tiny_recipe(ws, tmp_path / "run", align=stage)
        try:
            recipe = validate_recipe(raw, "test")
        except RecipeError as err:
            return dict(err.problems)
        return dict(check_data_paths(recipe, list(recipe.stages)))

    assert "stages.align.eval" in problems(eval={"split": 0.1, "path": str(ws["align"])})
    assert "stages.align.eval" in problems(eval={"every": 2})
    assert "stages.align.eval.image_folder" in problems(
        eval={"split": 0.1, "image_folder": str(ws["images"])}
    )
    assert "stages.align.eval.path" in problems(eval={"path": str(tmp_path / "missing.json")})
    assert "stages.align.early_stop" in problems(eval={"split": 0.1}, early_stop={})
    assert "stages.align.early_stop.metric" in problems(
        eval={"split": 0.1, "every": 1, "max_new_tokens": 0},
        early_stop={"metric": "val_accuracy"},
    )
    assert not problems(eval={"split": 0.1, "every": 1}, early_stop={"patience": 2})


def test_held_out_records_are_not_trained_on(ws, tmp_path):
    raw = tiny_recipe(ws, tmp_path / "run", align={"eval": {"split": 0.25}})
    recipe = validate_recipe(raw, "test")
    stage = recipe.stages["align"]
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    template = stage_template(recipe, stage)
    train, held = build_stage_datasets(stage, built, template, recipe.seed)
    ids = {
        name: {d.kept_record(i)[0]["id"] for i in range(len(d))}
        for name, d in (("train", train), ("held", held))
    }
    everything = build_dataset(stage.data, built, template)
    assert not ids["train"] & ids["held"]
    assert len(ids["held"]) == 8 and len(ids["train"]) + 8 == len(everything)
    # An error in a held-out record names its place in the data file, not in the held-out set.
    where = held.kept_record(0)[1]
    assert where.startswith(f"{ws['align']}: record ")


# ---------------------------------------------------------------- against mllm eval


TEXT_QUESTION = ("How many sides does a triangle have?", "3")


def _eval_records(trained_shapes) -> list[dict]:
    """The held-out colour and count questions as LLaVA records, plus a two-exchange record
    (loss only), a reference too long for the answer budget (loss only) and a text-only
    question."""
    records = [
        {
            "id": f"q{index}",
            "image": str(question.image.relative_to(trained_shapes.image_folder)),
            "conversations": [
                {"from": "human", "value": f"<image>\n{question.text}"},
                {"from": "gpt", "value": question.answer},
            ],
        }
        for index, question in enumerate(trained_shapes.held_out)
    ]
    first, second = trained_shapes.held_out[:2]
    records.append(
        {
            "id": "two-turns",
            "image": str(first.image.relative_to(trained_shapes.image_folder)),
            "conversations": [
                {"from": "human", "value": f"<image>\n{first.text}"},
                {"from": "gpt", "value": first.answer},
                {"from": "human", "value": second.text},
                {"from": "gpt", "value": second.answer},
            ],
        }
    )
    records.append(
        {
            "id": "long",
            "image": str(second.image.relative_to(trained_shapes.image_folder)),
            "conversations": [
                {"from": "human", "value": f"<image>\n{second.text}"},
                {"from": "gpt", "value": " ".join([second.answer] * 12)},
            ],
        }
    )
    records.append(  # a text-only question, as LLaVA's instruct mix has
        {
            "id": "text",
            "conversations": [
                {"from": "human", "value": TEXT_QUESTION[0]},
                {"from": "gpt", "value": TEXT_QUESTION[1]},
            ],
        }
    )
    return records


def test_validation_scores_what_mllm_eval_scores(trained_shapes, tmp_path):
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps(_eval_records(trained_shapes)))
    loaded = mllm.load(trained_shapes.checkpoint)
    recipe, built = loaded.recipe, loaded.built
    stage = recipe.stages["instruct"]
    data = stage.data.model_copy(
        update={"path": [str(eval_json)], "image_folder": str(trained_shapes.image_folder)}
    )
    held = build_dataset(data, built, loaded.template)
    config = EvalConfig(path=[str(eval_json)], batch_size=5, max_new_tokens=8)
    validator = Validator(
        held,
        config,
        built=built,
        recipe=recipe,
        template=loaded.template,
        runtime=Runtime(0, 1, 0, torch.device("cpu")),
    )
    values = validator.run(built.model)

    # Accuracy: mllm eval's loop and scorer on the same questions.
    questions = [
        {
            "question_id": i,
            "image": str(q.image.relative_to(trained_shapes.image_folder)),
            "text": q.text,
        }
        for i, q in enumerate(trained_shapes.held_out)
    ]
    questions.append({"question_id": len(questions), "text": TEXT_QUESTION[0]})
    answers = [q.answer for q in trained_shapes.held_out] + [TEXT_QUESTION[1]]
    predictions = answer_questions(loaded, questions, trained_shapes.image_folder, max_new_tokens=8)
    hits = [is_correct(p["text"], a) for p, a in zip(predictions, answers, strict=True)]
    asked = len(trained_shapes.held_out) + 1  # not two-turns, not long
    assert values["val_questions"] == asked
    assert values["val_accuracy"] == sum(hits) / asked
    assert values["val_accuracy_image"] == sum(hits[:-1]) / (asked - 1)
    assert values["val_accuracy_text"] == hits[-1]
    assert values["val_accuracy_image"] > 0.8  # a trained model: the number means something

    # Loss: the training loss of each sample alone, weighted by its target tokens.
    total, tokens = 0.0, 0
    with torch.no_grad():
        for index in range(len(held)):
            sample = held[index]
            labels = sample["labels"][None]
            count = int((labels[:, 1:] != -100).sum())
            loss = built.model(
                input_ids=sample["input_ids"][None],
                labels=labels,
                pixel_values=sample["pixel_values"],
            ).loss
            total += float(loss) * count
            tokens += count
    assert values["val_samples"] == len(held) == len(trained_shapes.held_out) + 3
    assert values["val_tokens"] == tokens
    assert values["val_loss"] == pytest.approx(total / tokens, rel=1e-5)


def _tune_recipe(trained_shapes, tmp_path: Path, eval_json: Path) -> dict:
    """One short stage from the trained checkpoint whose updates are too small to change the
    validation: its values are then the checkpoint's, however many processes run it."""
    raw = yaml.safe_load(trained_shapes.recipe.read_text())
    stage = raw["stages"]["instruct"]
    stage.update(
        init_from=str(trained_shapes.checkpoint),
        train={"vision": "frozen", "projector": "full", "llm": "frozen"},
        optim={"lr": 1e-12, "warmup_ratio": 0.0},
        max_steps=2,
        global_batch_size=4,
        micro_batch_size=2,
        eval={
            "path": str(eval_json),
            "image_folder": str(trained_shapes.image_folder),
            "every": 1,
            "batch_size": 3,
            "max_new_tokens": 8,
        },
    )
    raw["output_dir"] = str(tmp_path / "out")
    raw["stages"] = {"tune": stage}
    return raw


def _validation_rows(stage_dir: Path) -> list[dict]:
    return [row for row in read_metrics(stage_dir / "metrics.jsonl") if "val_loss" in row]


@pytest.mark.distributed
def test_sharded_validation_equals_one_process(trained_shapes, tmp_path):
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps(_eval_records(trained_shapes)))
    results = {}
    for name, nproc, launcher, zero in [
        ("single", 1, "torchrun", None),
        ("zero2", 2, "torchrun", "zero_configs/zero2.json"),
        ("zero3", 2, "deepspeed", "zero_configs/zero3.json"),
    ]:
        raw = _tune_recipe(trained_shapes, tmp_path / name, eval_json)
        raw["stages"]["tune"]["zero_config"] = zero
        # the sharded runs start as `mllm train` modules, the way launchers start them
        run_train(
            [str(write_recipe(tmp_path / f"{name}.yaml", raw))],
            nproc=nproc,
            launcher=launcher,
            module=nproc > 1,
        )
        rows = _validation_rows(tmp_path / name / "out" / "tune")
        assert [row["step"] for row in rows] == [1, 2]
        results[name] = rows[-1]
        manifest = read_manifest(tmp_path / name / "out" / "tune" / "final")
        assert manifest["metrics"]["val_accuracy"] == rows[-1]["val_accuracy"]
    single = results["single"]
    assert single["val_accuracy_image"] > 0.8
    for name in ("zero2", "zero3"):
        sharded = results[name]
        for key in ("val_accuracy", "val_accuracy_image", "val_accuracy_text", "val_questions"):
            assert sharded[key] == single[key], (name, key)
        for key in ("val_samples", "val_tokens"):
            assert sharded[key] == single[key], (name, key)
        assert sharded["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4), name


# ---------------------------------------------------------------- early stopping


def test_early_stop_keeps_the_best_and_a_resumed_run_stops_at_the_same_step(ws, tmp_path):
    # min_delta is far above any change: the first validation stays the best, and the run
    # stops once `patience` validations in a row have not beaten it.
    raw = tiny_recipe(
        ws,
        tmp_path / "run",
        align={
            "max_steps": 6,
            "save_every": 2,
            "eval": {"split": 0.25, "every": 1, "max_new_tokens": 0},
            "early_stop": {"metric": "val_loss", "patience": 2, "min_delta": 100.0},
        },
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    result = run_train([str(recipe), "--stage", "align"], module=True)  # as `mllm train`
    stage_dir = tmp_path / "run" / "align"
    assert [row["step"] for row in _validation_rows(stage_dir)] == [1, 2, 3]
    final, best = read_manifest(stage_dir / "final"), read_manifest(stage_dir / "best")
    assert final["step"] == 3 and best["step"] == 1
    assert best["validation"]["val_loss"] == _validation_rows(stage_dir)[0]["val_loss"]
    assert "val_loss has not improved" in final["summary"]["stopped_early"]
    assert "stops at step 3" in result.stderr

    # Resume from the step-2 checkpoint (one stale validation behind it): the run must stop at
    # step 3 again, not start counting afresh and run on to step 6.
    shutil.rmtree(stage_dir / "final")
    assert [p.name for p in (stage_dir / "checkpoints").iterdir()] == ["step_00000002"]
    run_train([str(recipe), "--stage", "align", "--resume"])
    assert read_manifest(stage_dir / "final")["step"] == 3
    assert read_manifest(stage_dir / "best")["step"] == 1
