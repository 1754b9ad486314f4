"""Normalised exact-match scoring of LLaVA-format predictions, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm.eval.scoring import main, normalize_answer, score


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Red", "red"),
        ("  The red.  ", "red"),
        ("A circle", "circle"),
        ("an orange", "orange"),
        ("Top-left", "top left"),
        ("top   left\n", "top left"),
        ("Two", "2"),
        ("ten dogs!", "10 dogs"),
        ("none", "0"),
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("yes, it is", "yes it is"),
        ("don't", "don't"),
        ("'quoted'", "quoted"),
        ("(blue)", "blue"),
        ("theater", "theater"),  # articles are whole words only
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    questions = [
        {"question_id": 0, "image": "a.png", "text": "Q", "category": "color"},
        {"question_id": 1, "image": "a.png", "text": "Q", "category": "shape"},
        {"question_id": 2, "image": "b.png", "text": "Q", "category": "color"},
        {"question_id": 3, "image": "b.png", "text": "Q", "category": "position"},
    ]
    answers = [
        {"question_id": 0, "answer": "red"},
        {"question_id": 1, "answer": "circle"},
        {"question_id": 2, "answer": "blue"},
        {"question_id": 3, "answer": ["top left", "upper left"]},
    ]
    texts = ["Red.", "square", "The blue", "upper-left"]
    predictions = [
        {"question_id": i, "prompt": "Q", "text": t, "model_id": "tiny"}
        for i, t in enumerate(texts)
    ]
    return {
        "questions": write_jsonl(tmp_path / "questions.jsonl", questions),
        "answers": write_jsonl(tmp_path / "answers.jsonl", answers),
        "predictions": write_jsonl(tmp_path / "predictions.jsonl", predictions[::-1]),
    }


def test_score_overall_and_per_category(files: dict[str, Path]) -> None:
    result = score(files["predictions"], files["answers"], files["questions"])
    assert (result["correct"], result["count"], result["accuracy"]) == (3, 4, 0.75)
    assert result["per_category"] == {
        "color": {"accuracy": 1.0, "correct": 2, "count": 2},
        "position": {"accuracy": 1.0, "correct": 1, "count": 1},
        "shape": {"accuracy": 0.0, "correct": 0, "count": 1},
    }
    assert score(files["predictions"], files["answers"])["per_category"] == {}


def test_malformed_line_names_file_and_line(files: dict[str, Path]) -> None:
    with files["predictions"].open("a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"predictions\.jsonl:5: not valid JSON"):
        score(files["predictions"], files["answers"])


def test_missing_key_and_repeated_id_name_the_line(files: dict[str, Path], tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 0, "answer": "red"}, {"answer": 1}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing key\(s\) question_id"):
        score(files["predictions"], bad)
    twice = write_jsonl(tmp_path / "twice.jsonl", [{"question_id": 7, "text": "a"}] * 2)
    with pytest.raises(ValueError, match=r"twice\.jsonl:2: question_id 7 repeats line 1"):
        score(twice, files["answers"])


def test_unknown_and_unanswered_question_ids_are_errors(
    files: dict[str, Path], tmp_path: Path
) -> None:
    extra = files["predictions"].read_text() + json.dumps({"question_id": 99, "text": "x"}) + "\n"
    (tmp_path / "extra.jsonl").write_text(extra)
    with pytest.raises(ValueError, match=r"extra\.jsonl:5: question_id 99 has no answer"):
        score(tmp_path / "extra.jsonl", files["answers"])
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"question_id": 0, "text": "red"}])
    with pytest.raises(ValueError, match=r"no prediction for question_id 1, 2, 3"):
        score(partial, files["answers"])


def test_cli_prints_json(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        str(files["predictions"]),
        str(files["answers"]),
        "--questions",
        str(files["questions"]),
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 0.75
