"""ScienceQA, MME, MMBench and SEED-Bench: reading the published formats, letter extraction,
and scores checked against the official scorers' numbers on the same fixtures.

The fixtures and ``expected_*.json`` come from ``scripts/make_mc_benchmark_fixtures.py``,
which runs LLaVA's ``eval_science_qa.py`` and ``convert_seed_for_submission.py``, MME's
``calculation.py`` and MMBench's CircularEval (lmms-eval's ``mmbench_evals.py``, GPT
fallback off) on them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mllm.eval.benchmarks import BENCHMARKS, BenchmarkDataError
from mllm.eval.benchmarks.choices import (
    MC_SUFFIX,
    format_options,
    mc_prompt,
    mmbench_letter,
    scienceqa_letter,
)
from mllm.eval.benchmarks.mme import mme_label

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def bench(name: str, root: Path | None = None, split: str | None = None):
    return BENCHMARKS.get(name).target(root or FIXTURES / name, split)


# Letters --------------------------------------------------------------------------------------
def test_options_and_prompt_follow_llava():
    assert format_options(["cat", "dog"]) == "A. cat\nB. dog"
    assert mc_prompt("Which?", ["cat", "dog"], "Context: x") == (
        f"Context: x\nWhich?\nA. cat\nB. dog\n{MC_SUFFIX}"
    )
    assert MC_SUFFIX == "Answer with the option's letter from the given choices directly."


@pytest.mark.parametrize(
    ("answer", "count", "letter"),
    [
        ("B", 3, "B"),
        ("B. dog", 3, "B"),
        ("The answer is C.", 3, "C"),
        ("The answer is (B).", 3, None),  # LLaVA's pattern wants the bare letter
        ("B.", 3, None),  # neither a lone letter nor "B. "
        ("C", 2, None),  # past the options
        ("The answer is A. The answer is B.", 3, None),  # two readings: none
        ("The answer is B", 3, None),  # the pattern wants one character after the letter
    ],
)
def test_scienceqa_letter(answer, count, letter):
    assert scienceqa_letter(answer, count) == letter


OPTIONS = {"A": "a red car", "B": "a blue boat", "C": "a green tree"}


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("The answer is (B).", "B"),
        ("(C)", "C"),
        ("B.", "B"),
        ("It is a blue boat", "B"),  # option text
        ("A green tree, I think", "C"),  # "A" as an article is not read as the letter
        ("a car or a boat", None),  # no option's whole text
        ("A or B", None),  # two letters
        ("I am not sure", None),
    ],
)
def test_mmbench_letter(answer, letter):
    assert mmbench_letter(answer, OPTIONS) == letter


@pytest.mark.parametrize(
    ("answer", "label"),
    [("Yes", "yes"), ("no", "no"), ("No, it is not.", "no"), ("not sure", "no"), ("y", "other")],
)
def test_mme_label(answer, label):
    assert mme_label(answer) == label


# Against the official scorers ----------------------------------------------------------------
def test_scienceqa_matches_llava_eval_science_qa():
    expected = load("expected_scienceqa.json")
    benchmark = bench("scienceqa")
    questions = benchmark.questions()
    # Only the image questions of the test split; LLaVA's prompt layout.
    assert [q.question_id for q in questions] == [str(100 + n) for n in range(10)]
    assert questions[0].text.startswith(
        "Context: Look closely.\nWhich animal is in picture 0?\nA. cat"
    )
    assert questions[0].image == FIXTURES / "scienceqa/images/test/100/image.png"
    answers = load("answers_scienceqa.json")
    report = benchmark.score({q.question_id: answers[q.question_id] for q in questions})
    assert report.count == 10
    assert report.metrics["accuracy"] * 100 == pytest.approx(expected["img_accuracy_percent"])
    # Breakdown from the official per-question verdicts and the problems' own fields.
    problems = load("scienceqa/problems.json")
    correct = set(expected["img_correct_ids"])
    nat = [
        pid
        for pid in answers
        if pid in benchmark.problems() and problems[pid]["subject"] == "natural science"
    ]
    assert report.per_category["NAT"]["accuracy"] == pytest.approx(
        len(correct & set(nat)) / len(nat)
    )


def test_mme_matches_calculation_py():
    expected = load("expected_mme.json")
    benchmark = bench("mme")
    questions = benchmark.questions()
    first = questions[0]
    assert first.text == "Is this existence 0?\nAnswer the question using a single word or phrase."
    # Both layouts: images beside the lists, and images/ + questions_answers_YN/.
    assert {q.image.parent.name for q in questions} >= {"existence", "images"}
    report = benchmark.score(load("answers_mme.json"))
    assert report.metrics["perception"] == pytest.approx(expected["perception"])
    assert report.metrics["cognition"] == pytest.approx(expected["cognition"])
    for subtask, score in expected["subtask_scores"].items():
        assert report.per_category[subtask]["score"] == pytest.approx(score), subtask


def test_mmbench_matches_circular_eval(tmp_path):
    root = tmp_path / "mmbench"
    shutil.copytree(FIXTURES / "mmbench", root)
    expected = load("expected_mmbench.json")
    benchmark = bench("mmbench", root)
    questions = benchmark.questions()
    ids = [q.question_id for q in questions]
    assert ids[:4] == ["0_shift0", "0_shift1", "0_shift2", "0_shift3"]
    assert len(ids) == 4 + 3 + 2 + 4 + 4
    # Shift 1 of question 0 starts from its second option; hint first.
    assert questions[1].text.startswith("Look.\nWhat is shown?\nA. a blue boat\nB. a green tree")
    assert questions[0].image.read_bytes().startswith(b"\x89PNG")
    assert questions[0].image.parent == root / ".mllm_images" / "mmbench_dev_fixture"
    report = benchmark.score(load("answers_mmbench.json"))
    assert report.count == 5
    assert report.metrics["accuracy"] == pytest.approx(expected["overall"])
    for category, value in expected["category"].items():
        assert report.per_category[category]["accuracy"] == pytest.approx(value)
    for category, value in expected["l2"].items():
        assert report.per_category[f"l2: {category}"]["accuracy"] == pytest.approx(value)


def test_mmbench_one_wrong_rotation_fails_the_question(tmp_path):
    root = tmp_path / "mmbench"
    shutil.copytree(FIXTURES / "mmbench", root)
    benchmark = bench("mmbench", root)
    truth = {qid: letter for found in benchmark._read().values() for qid, _, letter in found}
    assert benchmark.score(truth).metrics["accuracy"] == 1.0
    truth["2_shift1"] = "A" if truth["2_shift1"] == "B" else "B"
    report = benchmark.score(truth)
    assert report.metrics["accuracy"] == pytest.approx(4 / 5)


def test_seed_matches_llava_convert_seed():
    expected = load("expected_seed.json")
    benchmark = bench("seed")
    questions = benchmark.questions()
    assert len(questions) == 12  # the video question is left out
    assert questions[0].text == (
        f"What is item 0?\nA. a cup\nB. a pen\nC. a hat\nD. a key\n{MC_SUFFIX}"
    )
    assert questions[0].image == FIXTURES / "seed/SEED-Bench-image/1000_0.jpg"
    report = benchmark.score(load("answers_seed.json"))
    assert report.metrics["accuracy"] * 100 == pytest.approx(
        expected["image_accuracy_percent"], abs=0.005
    )
    for kind, percent in expected["per_type_percent"].items():
        assert report.per_category[kind]["accuracy"] * 100 == pytest.approx(percent, abs=0.005)


# Errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["scienceqa", "mme", "seed"])
def test_missing_and_unknown_answers_are_named(name):
    benchmark = bench(name)
    answers = {q.question_id: "A" for q in benchmark.questions()}
    dropped = next(iter(answers))
    del answers[dropped]
    with pytest.raises(BenchmarkDataError, match=f"1 questions have no answer.*{dropped}"):
        benchmark.score(answers)
    answers[dropped] = "A"
    answers["no-such-id"] = "A"
    with pytest.raises(BenchmarkDataError, match="no-such-id"):
        benchmark.score(answers)


def test_missing_files_are_named(tmp_path):
    for name, missing in [
        ("scienceqa", "problems.json"),
        ("mme", "existence"),
        ("seed", "SEED-Bench.json"),
        ("mmbench", "exactly one .tsv"),
    ]:
        with pytest.raises(BenchmarkDataError, match=missing):
            bench(name, tmp_path).questions()


def test_malformed_records_name_file_and_record(tmp_path):
    # ScienceQA: an answer index past the choices.
    sqa = tmp_path / "sqa"
    shutil.copytree(FIXTURES / "scienceqa", sqa)
    problems = json.loads((sqa / "problems.json").read_text())
    problems["103"]["answer"] = 7
    (sqa / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(BenchmarkDataError, match=r"problems.json, problem '103'.*'answer' 7"):
        bench("scienceqa", sqa).questions()

    # MME: a list with one question.
    mme = tmp_path / "mme"
    shutil.copytree(FIXTURES / "mme", mme)
    (mme / "count" / "0000.txt").write_text("Is there one?\tYes\n")
    with pytest.raises(BenchmarkDataError, match=r"count/0000.txt has 1 questions"):
        bench("mme", mme).questions()
    (mme / "count" / "0000.txt").write_text("Is there one?\tYes\nIs there two?\tMaybe\n")
    with pytest.raises(BenchmarkDataError, match=r"count/0000.txt, line 2"):
        bench("mme", mme).questions()

    # MMBench: an answer that is not among the row's options.
    mmb = tmp_path / "mmb"
    shutil.copytree(FIXTURES / "mmbench", mmb)
    tsv = mmb / "mmbench_dev_fixture.tsv"
    lines = tsv.read_text().splitlines()
    cells = lines[2].split("\t")
    cells[7] = "D"  # question 1 has three options
    lines[2] = "\t".join(cells)
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkDataError, match=r"mmbench_dev_fixture.tsv, line 3 \(index 1\)"):
        bench("mmbench", mmb).questions()

    # SEED: an answer outside A-D.
    seed = tmp_path / "seed"
    shutil.copytree(FIXTURES / "seed", seed)
    data = json.loads((seed / "SEED-Bench.json").read_text())
    data["questions"][4]["answer"] = "E"
    (seed / "SEED-Bench.json").write_text(json.dumps(data))
    with pytest.raises(BenchmarkDataError, match=r"SEED-Bench.json, question 4: answer 'E'"):
        bench("seed", seed).questions()
