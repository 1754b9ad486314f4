"""POPE: question files in POPE's format, scores equal to LLaVA's eval_pope.py on fixtures
(scripts/make_benchmark_fixtures.py), and the demo's own POPE split of the shapes images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm.demo.shapes import make_shapes_dataset
from mllm.eval.benchmarks import BENCHMARKS, BenchmarkDataError
from mllm.eval.benchmarks.pope import parse_yes_no

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
OFFICIAL = json.loads((FIXTURES / "official.json").read_text())["pope"]
PREDICTIONS = json.loads((FIXTURES / "pope" / "predictions.json").read_text())
NAMES = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1 score", "yes_ratio": "Yes ratio"}  # fmt: skip


def pope(root: Path, split: str | None = None):
    return BENCHMARKS.get("pope").target(root, split)


def test_scores_match_official_per_split():
    report = pope(FIXTURES / "pope").score(PREDICTIONS)
    assert list(report.per_category) == ["random", "popular", "adversarial"]
    for split, values in report.per_category.items():
        for ours, theirs in NAMES.items():
            assert values[ours] == pytest.approx(OFFICIAL[split][theirs]), (split, ours)
    mean_f1 = sum(OFFICIAL[s]["F1 score"] for s in OFFICIAL) / 3
    assert report.metrics["f1"] == pytest.approx(mean_f1)
    assert report.count == len(PREDICTIONS)


def test_one_split():
    only = {k: v for k, v in PREDICTIONS.items() if k.startswith("popular/")}
    report = pope(FIXTURES / "pope", "popular").score(only)
    assert report.metrics["accuracy"] == pytest.approx(OFFICIAL["popular"]["Accuracy"])
    with pytest.raises(BenchmarkDataError, match="no answer for"):
        pope(FIXTURES / "pope", "popular").score({})


def test_parsing():
    assert parse_yes_no("No, there is none.") == "no"
    assert parse_yes_no("There is a dog. It is not a cat.") == "yes"  # first sentence only
    assert parse_yes_no("NO") == "yes"  # as the reference: only No, no, not count
    assert parse_yes_no("Not.") == "yes"


def test_questions_prompt_ids_images():
    questions = pope(FIXTURES / "pope").questions()
    first = questions[0]
    assert first.question_id == "random/1"
    assert (
        first.text
        == "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    )
    assert first.image == FIXTURES / "pope" / "val2014" / "COCO_val2014_000000000001.jpg"
    assert first.category == "random"


def test_malformed(tmp_path):
    with pytest.raises(BenchmarkDataError, match="coco_pope_random.json: file not found"):
        pope(tmp_path).questions()
    (tmp_path / "coco_pope_random.json").write_text(
        '{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}\n'
        '{"question_id": 2, "image": "a.jpg", "text": "Is there a dog?", "label": "maybe"}\n'
    )
    with pytest.raises(BenchmarkDataError, match=r"coco_pope_random.json:2: label must be"):
        pope(tmp_path, "random").questions()
    with pytest.raises(BenchmarkDataError, match="unknown split"):
        pope(tmp_path, "hard")


def test_demo_pope_files(tmp_path):
    make_shapes_dataset(tmp_path, num_align=0, num_instruct=0, num_test=20)
    benchmark = pope(tmp_path / "test")
    questions = benchmark.questions()
    assert len(questions) == 3 * 2 * 20
    assert all(q.image.is_file() for q in questions)
    for split in ("random", "popular", "adversarial"):
        records = [
            json.loads(line)
            for line in (tmp_path / "test" / f"shapes_pope_{split}.json").read_text().splitlines()
        ]
        assert [r["label"] for r in records] == ["yes", "no"] * 20  # balanced
        for yes, no in zip(records[::2], records[1::2], strict=True):
            assert yes["image"] == no["image"] and yes["text"] != no["text"]
            if split == "adversarial":  # shares the colour or the shape
                shown = set(yes["text"].split()[3:5])
                assert len(shown & set(no["text"].split()[3:5])) == 1
    # a model answering from the image perfectly scores 1.0
    perfect = {}
    for split in ("random", "popular", "adversarial"):
        for line in (tmp_path / "test" / f"shapes_pope_{split}.json").read_text().splitlines():
            record = json.loads(line)
            perfect[f"{split}/{record['question_id']}"] = record["label"].capitalize()
    assert benchmark.score(perfect).metrics["accuracy"] == 1.0
