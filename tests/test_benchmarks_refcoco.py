"""RefCOCO grounding: MiniGPT-v2's evaluation files, boxes parsed from answers, accuracy at
IoU >= 0.5 worked by hand, and the demo's referring split read as a RefCOCO split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm.demo.grounding import make_grounding_dataset
from mllm.eval.benchmarks import BENCHMARKS, BenchmarkDataError

# (record, answer, IoU worked by hand). A 640x428 COCO image and a 100x100 one.
CASES = [
    # MiniGPT-v2's refcoco_val.json record 0. Answer -> pixels (467.2, 0, 640, 115.56);
    # truth (468.3, 0.91, 640, 117.03): overlap 171.7 x 114.65 = 19685.4, areas 19937.8 and
    # 19968.8, union 20221.2 -> 0.9735: a hit.
    (
        {"img_id": "COCO_train2014_000000580957_4", "sents": "white dish in the top right corner",
         "bbox": [468.3, 0.91, 171.7, 116.12], "height": 428, "width": 640},
        "{<73><0><100><27>}</s>",
        0.9735,
    ),
    # Twice the true height: overlap 10 x 10, union 10 x 20 -> exactly 0.5, a hit at >= 0.5
    # (MiniGPT-v2's inclusive pixels give 121 / 231 = 0.524 > 0.5: a hit there too).
    (
        {"img_id": "COCO_train2014_000000000001_0", "sents": "the tall one",
         "bbox": [0, 0, 10, 10], "height": 100, "width": 100},
        "It is at { <0><0> <10><20> }.",
        0.5,
    ),
    # Shifted by half its width: overlap 5 x 10 = 50, union 150 -> 1/3, a miss.
    (
        {"img_id": "COCO_train2014_000000000001_1", "sents": "the left one",
         "bbox": [0, 0, 10, 10], "height": 100, "width": 100},
        "{<5><0><15><10>}",
        1 / 3,
    ),
    # No box in the answer: a miss, not parsed (IoU counted as 0 in the mean).
    (
        {"img_id": "COCO_train2014_000000000001_2", "sents": "the bowl",
         "bbox": [20, 20, 10, 10], "height": 100, "width": 100},
        "a bowl on the table",
        None,
    ),
]  # fmt: skip


def write(root: Path, records: list[dict], name: str = "refcoco_val.json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(records))
    return root


def refcoco(root: Path, split: str | None = None, name: str = "refcoco"):
    return BENCHMARKS.get(name).target(root, split)


def test_questions_use_minigpt_v2s_prompt_and_image_names(tmp_path):
    root = write(tmp_path, [case[0] for case in CASES])
    (root / "train2014").mkdir()
    (root / "COCO_train2014_000000000001.jpg").touch()
    questions = refcoco(root).questions()
    assert [q.question_id for q in questions] == ["val/0", "val/1", "val/2", "val/3"]
    assert questions[0].text == "[refer] give me the location of white dish in the top right corner"
    assert questions[0].image == root / "train2014" / "COCO_train2014_000000580957.jpg"
    assert questions[1].image == root / "COCO_train2014_000000000001.jpg"
    assert {q.category for q in questions} == {"val"}


def test_accuracy_at_iou_half_hand_worked(tmp_path):
    benchmark = refcoco(write(tmp_path, [case[0] for case in CASES]))
    report = benchmark.score({f"val/{i}": answer for i, (_, answer, _) in enumerate(CASES)})
    ious = [value or 0.0 for _, _, value in CASES]
    assert report.count == 4
    assert report.metrics["accuracy"] == 0.5  # cases 0 and 1
    assert report.metrics["parsed"] == 0.75
    assert report.metrics["mean_iou"] == pytest.approx(sum(ious) / 4, abs=1e-4)
    assert report.per_category == {"val": report.metrics}


def test_minigpt_v2_layout_other_datasets_and_splits(tmp_path):
    write(tmp_path / "refcocog", [CASES[1][0]], "refcocog_test.json")
    benchmark = refcoco(tmp_path, "test", name="refcocog")
    assert benchmark.question_file() == tmp_path / "refcocog" / "refcocog_test.json"
    assert benchmark.score({"test/0": "{<0><0><10><10>}"}).metrics["accuracy"] == 1.0
    with pytest.raises(BenchmarkDataError, match="unknown split 'testA'; choose one of: val, test"):
        refcoco(tmp_path, "testA", name="refcocog")
    with pytest.raises(BenchmarkDataError, match="refcoco\\+_testB.json: file not found"):
        refcoco(tmp_path, "testB", name="refcoco+").questions()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [1, 2, 3]}, "record 1: bbox must be 4 numbers"),
        ({"bbox": [1, 2, -3, 4]}, "record 1: bbox .* has a negative size"),
        ({"width": 0}, "record 1: width must be a positive number"),
        ({"sents": ""}, "record 1: sents must be a non-empty string"),
    ],
)
def test_malformed_records_name_file_and_record(tmp_path, change, message):
    good = CASES[1][0]
    root = write(tmp_path, [good, {**good, **change}])
    with pytest.raises(BenchmarkDataError, match=message) as info:
        refcoco(root).questions()
    assert str(root / "refcoco_val.json") in str(info.value)


def test_answers_must_match_questions(tmp_path):
    root = write(tmp_path, [CASES[2][0]])
    with pytest.raises(BenchmarkDataError, match="no answer for 1 question"):
        refcoco(root).score({})


def test_the_demo_referring_split_reads_as_refcoco(tmp_path):
    dataset = make_grounding_dataset(tmp_path, num_train=0, num_test=4, seed=2)
    benchmark = refcoco(dataset.test_root)
    questions = benchmark.questions()
    assert all(q.image.is_file() for q in questions)
    assert questions[0].text.startswith("[refer] give me the location of the ")
    records = json.loads((dataset.test_root / "refcoco_val.json").read_text())
    perfect = {}
    for question, record in zip(questions, records, strict=True):
        x, y, w, h = (value * 100 / 64 for value in record["bbox"])
        perfect[question.question_id] = (
            f"{{<{round(x)}><{round(y)}><{round(x + w)}><{round(y + h)}>}}"
        )
    assert benchmark.score(perfect).metrics["accuracy"] == 1.0
