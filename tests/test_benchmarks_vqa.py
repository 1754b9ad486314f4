"""VQAv2, TextVQA and GQA: questions from the published formats, and scores that match the
official scorers on tiny fixtures (run by scripts/make_benchmark_fixtures.py): LLaVA's
m4c_evaluator for VQAv2 and TextVQA; for GQA, LLaVA's convert_gqa_for_eval.py then GQA's
eval.py, as LLaVA's gqa.sh runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm.eval.benchmarks import BENCHMARKS, BenchmarkDataError
from mllm.eval.benchmarks.gqa import normalize_gqa_answer
from mllm.eval.benchmarks.vqa_accuracy import normalize_vqa_answer, soft_accuracy

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
OFFICIAL = json.loads((FIXTURES / "official.json").read_text())
PREDICTIONS = json.loads((FIXTURES / "vqa_predictions.json").read_text())


def make(name: str, root: Path, split: str | None = None):
    return BENCHMARKS.get(name).target(root, split)


@pytest.mark.parametrize("probe", sorted(OFFICIAL["normalised"]))
def test_normaliser_matches_evalai(probe):
    assert normalize_vqa_answer(probe) == OFFICIAL["normalised"][probe]


def test_vqav2_matches_official_per_question_and_overall():
    benchmark = make("vqav2", FIXTURES / "vqav2")
    report = benchmark.score(PREDICTIONS)
    official = OFFICIAL["vqa"]["vqav2"]
    assert report.metrics["accuracy"] == pytest.approx(official["accuracy"], abs=1e-12)
    assert report.count == len(PREDICTIONS)
    annotations = json.loads(
        (FIXTURES / "vqav2" / "v2_mscoco_val2014_annotations.json").read_text()
    )
    for record in annotations["annotations"]:
        qid = str(record["question_id"])
        humans = [a["answer"] for a in record["answers"]]
        assert soft_accuracy(PREDICTIONS[qid], humans) == pytest.approx(
            official["per_question"][qid]
        )
    # breakdowns: means of the official per-question scores over each group
    for kind, prefix in (("answer_type", ""), ("question_type", "question_type: ")):
        groups: dict[str, list[float]] = {}
        for record in annotations["annotations"]:
            groups.setdefault(prefix + record[kind], []).append(
                official["per_question"][str(record["question_id"])]
            )
        for name, values in groups.items():
            assert report.per_category[name]["accuracy"] == pytest.approx(sum(values) / len(values))
    assert list(report.per_category)[:3] == ["number", "other", "yes/no"]


def test_vqav2_questions_prompt_and_image_layout():
    questions = make("vqav2", FIXTURES / "vqav2").questions()
    first = questions[0]
    assert first.question_id == 1000
    assert (
        first.text == "What color is the bus?\nAnswer the question using a single word or phrase."
    )
    assert first.image == FIXTURES / "vqav2" / "val2014" / "COCO_val2014_000000000042.jpg"
    assert first.category == "other"


def test_textvqa_matches_official():
    report = make("textvqa", FIXTURES / "textvqa").score(PREDICTIONS)
    assert report.metrics["accuracy"] == pytest.approx(OFFICIAL["vqa"]["vqav2"]["accuracy"])


def test_textvqa_prompts_with_and_without_ocr():
    plain = make("textvqa", FIXTURES / "textvqa").questions()[0]
    ocr = make("textvqa", FIXTURES / "textvqa", "val_ocr").questions()
    suffix = "Answer the question using a single word or phrase."
    assert plain.text == f"What color is the bus?\n{suffix}"
    assert plain.image == FIXTURES / "textvqa" / "train_images" / "img0000.jpg"
    assert ocr[0].text == f"What color is the bus?\nReference OCR token: BUS, 42\n{suffix}"
    assert ocr[1].text == f"How many dogs are there?\n{suffix}"  # no tokens: no line


def test_missing_and_unknown_answers_are_named():
    benchmark = make("vqav2", FIXTURES / "vqav2")
    partial = dict(PREDICTIONS)
    del partial["1003"]
    partial["999999"] = "x"
    with pytest.raises(BenchmarkDataError, match=r"no answer for 1 question.*1003.*999999"):
        benchmark.score(partial)
    # integer keys are the same questions as string keys
    assert benchmark.score({int(k): v for k, v in PREDICTIONS.items()}).count == len(PREDICTIONS)


def test_malformed_files_name_file_and_record(tmp_path):
    with pytest.raises(
        BenchmarkDataError, match="v2_OpenEnded_mscoco_val2014_questions.json: file not found"
    ):
        make("vqav2", tmp_path).questions()
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps(
            {"questions": [{"question_id": 1, "image_id": 2, "question": "q"}, {"question_id": 2}]}
        )
    )
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text("{not json")
    with pytest.raises(BenchmarkDataError, match="annotations.json: not valid JSON"):
        make("vqav2", tmp_path).questions()
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(
        BenchmarkDataError, match=r"questions\[1\]: missing key\(s\) image_id, question"
    ):
        make("vqav2", tmp_path).questions()
    with pytest.raises(BenchmarkDataError, match="unknown split"):
        make("vqav2", tmp_path, "val2015")
    with pytest.raises(BenchmarkDataError, match="EvalAI"):
        make("vqav2", tmp_path, "test-dev2015").score({})


GQA_QUESTIONS = {
    "201": {"imageId": "n1", "question": "Is the sky blue?", "answer": "yes", "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"}},
    "202": {"imageId": "n2", "question": "What is on the table?", "answer": "laptop", "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
    "203": {"imageId": "n2", "question": "Which color is the cup?", "answer": "white", "types": {"structural": "query", "semantic": "attr", "detailed": "chooseAttr"}},
    "204": {"imageId": "n3", "question": "Are there both cars and trees?", "answer": "no", "types": {"structural": "logical", "semantic": "obj", "detailed": "and"}},
}  # fmt: skip


def test_gqa_hand_worked(tmp_path):
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(GQA_QUESTIONS))
    benchmark = make("gqa", tmp_path)
    questions = benchmark.questions()
    assert (
        questions[0].text == "Is the sky blue?\nAnswer the question using a single word or phrase."
    )
    assert questions[0].image == tmp_path / "images" / "n1.jpg"
    # LLaVA's convert_gqa_for_eval: rstrip('.') then lower(); GQA's eval.py: exact match.
    # "Yes." -> "yes" (right); "Laptop.." -> "laptop" (right); "a white cup" != "white"
    # (no article removal); "No " keeps its space (no strip) -> wrong. 2 of 4 right.
    report = benchmark.score({"201": "Yes.", "202": "Laptop..", "203": "a white cup", "204": "No "})
    assert report.metrics["accuracy"] == 0.5
    assert report.per_category["structural: query"]["accuracy"] == 0.5
    assert report.per_category["structural: verify"]["accuracy"] == 1.0
    assert report.per_category["structural: logical"]["accuracy"] == 0.0
    assert report.per_category["semantic: attr"]["accuracy"] == 0.5
    assert report.per_category["semantic: rel"]["accuracy"] == 1.0


def test_gqa_matches_official():
    benchmark = make("gqa", FIXTURES / "gqa")
    predictions = json.loads((FIXTURES / "gqa" / "predictions.json").read_text())
    official = OFFICIAL["gqa"]
    for qid, said in predictions.items():  # LLaVA's converter, as the official run applied it
        assert normalize_gqa_answer(said) == official["converted"][qid]
    report = benchmark.score(predictions)
    assert report.count == len(predictions)
    assert report.metrics["accuracy"] == pytest.approx(official["accuracy"], abs=1e-12)
    expected = {
        f"{kind}: {name}": value
        for kind in ("structural", "semantic")
        for name, value in official[kind].items()
    }
    assert set(report.per_category) == set(expected)
    for name, value in expected.items():
        assert report.per_category[name]["accuracy"] == pytest.approx(value, abs=1e-12), name


def test_gqa_malformed_record(tmp_path):
    broken = {"201": GQA_QUESTIONS["201"], "202": {"imageId": "n2", "question": "q", "answer": "a", "types": {"semantic": "rel"}}}  # fmt: skip
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(broken))
    with pytest.raises(
        BenchmarkDataError, match=r"question 202.types: missing key\(s\) structural"
    ):
        make("gqa", tmp_path).questions()
