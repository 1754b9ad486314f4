"""CHAIR: against the reference scorer (Rohrbach et al.'s chair.py, Python 3 port) on the
fixture captions of ``scripts/make_chair_fixtures.py``, and on a hand-worked example.

The reference ran on mllm's own synonym table, so any difference is in the rules. The few
readings where mllm deliberately differs are named in ``DIVERGENT`` and taken out of the
captions before comparing; everything else must agree object for object.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mllm.eval.benchmarks import BENCHMARKS, BenchmarkDataError
from mllm.eval.benchmarks.chair import find_mentions, synonym_table

FIXTURE = Path(__file__).parent / "fixtures" / "benchmarks" / "chair"

# caption id -> (words the reference reads differently on purpose, the objects it reads there);
# see chair.py's module docstring.
DIVERGENT = {
    "139": (["bus"], []),  # pattern singularises "bus" to "bu": the reference sees no bus
    "1353": (["bus"], []),
    "1584": (["glass", "ties"], []),  # ... "glass" to "glas", "ties" to "ty"
    "1761": (["baby"], ["person"]),  # "baby puppy": its qualifier list has "dog", not puppies
}


def without(caption: str, words: list[str]) -> str:
    return re.sub(rf"\b({'|'.join(words)})\b", "", caption) if words else caption


def test_chair_agrees_with_the_reference_scorer():
    reference = json.loads((FIXTURE / "official.json").read_text())
    captions = json.loads((FIXTURE / "answers.json").read_text())
    assert len(captions) == 18
    answers, mentions, hallucinated = {}, 0, 0
    for image_id, caption in captions.items():
        words, reference_only = DIVERGENT.get(image_id, ([], []))
        entry = reference["captions"][image_id]
        assert not set(reference_only) & set(entry["hallucinated"])
        expected = Counter(entry["mentions"]) - Counter(reference_only)
        answers[int(image_id)] = without(caption, words)
        assert Counter(m.category for m in find_mentions(answers[int(image_id)])) == expected, (
            image_id,
            caption,
        )
        if words:  # the divergent words do read differently for mllm
            assert Counter(m.category for m in find_mentions(caption)) != Counter(entry["mentions"])
        mentions += expected.total()
        hallucinated += len(entry["hallucinated"])
    benchmark = BENCHMARKS.get("chair").target(FIXTURE)
    truth = benchmark._truth(set(captions))
    assert {i: sorted(t) for i, t in truth.items()} == {
        i: entry["truth"] for i, entry in reference["captions"].items()
    }
    report = benchmark.score(answers)
    assert report.metrics["chair_s"] == pytest.approx(reference["chair_s"], abs=1e-12)
    assert report.metrics["chair_i"] == pytest.approx(hallucinated / mentions, abs=1e-12)
    assert report.metrics["mentions"] == mentions


def test_synonym_table_covers_the_80_categories():
    categories = set(synonym_table().values())
    assert len(categories) == 80
    assert synonym_table()["hot dog"] == "hot dog" and synonym_table()["sofa"] == "couch"


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Two men ride bikes past buses.", ["person", "bicycle", "bus"]),
        ("A teddy bear beside hot dogs.", ["teddy bear", "hot dog"]),  # phrases beat words
        ("A baby elephant and an adult giraffe.", ["elephant", "giraffe"]),  # not persons
        ("Passenger trains at a station.", ["train"]),
        ("A toilet seat is up next to the sink.", ["toilet", "sink"]),  # no chair
        ("Knives and wine glasses on shelves.", ["knife", "wine glass"]),
        ("People watch the kites.", ["person", "kite"]),
    ],
)
def test_mentions(caption, expected):
    assert [m.category for m in find_mentions(caption)] == expected


def write_coco(root):
    (root / "annotations").mkdir()
    instances = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 18, "name": "dog"},
            {"id": 62, "name": "chair"},
            {"id": 3, "name": "car"},
        ],  # fmt: skip
        "annotations": [
            {"image_id": 1, "category_id": 1},
            {"image_id": 1, "category_id": 18},
            {"image_id": 2, "category_id": 62},
            {"image_id": 3, "category_id": 3},
        ],
    }
    captions = {"annotations": [{"image_id": 2, "caption": "A cat sleeps on a chair."}]}
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(instances))
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(captions))


def test_chair_hand_worked(tmp_path):
    write_coco(tmp_path)
    benchmark = BENCHMARKS.get("chair").target(tmp_path)
    questions = benchmark.questions()
    assert [q.question_id for q in questions] == [1, 2, 3]  # fewer than 500: all
    assert questions[0].text == "Please describe this image in detail."
    assert questions[0].image == tmp_path / "val2014" / "COCO_val2014_000000000001.jpg"
    assert benchmark.max_new_tokens == 512
    captions = {
        # truth {person, dog}: man -> person, dog, frisbee (hallucinated) -> 3 mentions, 1 wrong
        1: "A man throws a frisbee to his dog.",
        # truth {chair, cat (from the human caption)}: cat, chair, chair -> 3 mentions, 0 wrong
        2: "A cat on a chair. The chair is red.",
        # truth {car}: car, person (woman), person (people): 3 mentions, 2 wrong
        3: "A car with a woman; people nearby.",
    }
    report = benchmark.score(captions)
    # CHAIRs: 2 of 3 captions hallucinate; CHAIRi: 3 wrong of 9 mentions
    assert report.metrics["chair_s"] == pytest.approx(2 / 3)
    assert report.metrics["chair_i"] == pytest.approx(3 / 9)
    assert report.metrics["mentions"] == 9
    with pytest.raises(BenchmarkDataError, match="no answer for 1 question"):
        benchmark.score({1: "x", 2: "y"})


def test_chair_image_list_and_errors(tmp_path):
    with pytest.raises(BenchmarkDataError, match="instances_val2014.json: file not found"):
        BENCHMARKS.get("chair").target(tmp_path).questions()
    write_coco(tmp_path)
    (tmp_path / "chair_image_ids.txt").write_text("3\n1\n")
    assert [q.question_id for q in BENCHMARKS.get("chair").target(tmp_path).questions()] == [3, 1]
    (tmp_path / "chair_image_ids.txt").write_text("3\nabc\n")
    with pytest.raises(BenchmarkDataError, match="chair_image_ids.txt: not a COCO image id: 'abc'"):
        BENCHMARKS.get("chair").target(tmp_path).questions()
