"""Write tests/fixtures/benchmarks/: tiny ScienceQA, MME, MMBench and SEED-Bench releases in
their published formats, answers to them, and the numbers each benchmark's OFFICIAL scorer
gives for those answers (``expected_<name>.json``), for tests/test_benchmarks_choices.py.

The official scorers run in a side venv (they need pandas, scikit-learn, loguru; none are
mllm dependencies) from files fetched outside this repository (never committed here):

- ScienceQA: LLaVA's ``llava/eval/eval_science_qa.py`` (haotian-liu/LLaVA, main);
- SEED-Bench: LLaVA's ``scripts/convert_seed_for_submission.py`` (same repository);
- MME: MME's ``eval_tool/calculation.py`` (from MME's ``eval_tool.zip``; a public copy is in
  zjunlp/Deco at ``eval_tool/calculation.py``);
- MMBench: ``MMBench_Evaluator.eval_result`` of lmms-eval's
  ``lmms_eval/tasks/mmbench/mmbench_evals.py`` (``pip download lmms-eval --no-deps``), the
  CircularEval of MMBench/VLMEvalKit, with its GPT fallback replaced by "no answer" (mllm
  asks no GPT; every fixture answer that MMBench's rules cannot read therefore counts wrong
  in both).

Regenerate (seconds)::

    python3.11 -m venv /tmp/mc_side/venv
    /tmp/mc_side/venv/bin/pip install pandas scikit-learn loguru requests pyyaml
    pip download lmms-eval --no-deps -d /tmp/mc_side/dl && unzip -d /tmp/mc_side/whl /tmp/mc_side/dl/*.whl
    # put eval_science_qa.py, convert_seed_for_submission.py, mme_calculation.py in /tmp/mc_side/official
    . .venv/bin/activate
    python scripts/make_mc_benchmark_fixtures.py --side-python /tmp/mc_side/venv/bin/python \\
        --official /tmp/mc_side/official \\
        --mmbench-evals /tmp/mc_side/whl/lmms_eval/tasks/mmbench/mmbench_evals.py

Everything here is deterministic; the data are made up (not copied from the benchmarks).
ScienceQA and SEED-Bench (both scored by LLaVA's scripts) are written here; MME's and
MMBench's writers are the sibling modules ``mme_fixtures.py`` and ``mmbench_fixtures.py``, and
``mc_fixture_files.py`` holds what all four share.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
from pathlib import Path

from mc_fixture_files import FIXTURES, png_bytes, run, write_json
from mmbench_fixtures import make_mmbench
from mme_fixtures import make_mme

# ScienceQA --------------------------------------------------------------------------------
SQA_ANSWERS = [
    ("B", "right"),
    ("B. dog", "right"),
    ("The answer is C.", "right"),
    ("The answer is (B).", "unread"),
    ("B.", "unread"),
    ("D", "past the options"),
    ("A", "wrong"),
    ("The answer is A. The answer is B.", "two"),
    ("C", "right"),
    ("I think B", "unread"),
]


def make_scienceqa(side_python: str, official: Path) -> None:
    root = FIXTURES / "scienceqa"
    shutil.rmtree(root, ignore_errors=True)
    subjects = ["natural science", "social science", "language science"]
    problems, test = {}, []
    for n, (prediction, _) in enumerate(SQA_ANSWERS):
        pid = str(100 + n)
        choices = ["cat", "dog", "bird"][: 2 + n % 2] if prediction != "D" else ["cat", "dog"]
        answer = {"B": 1, "C": 2}.get(re.sub(r"^.*?([A-D])\W*$", r"\1", prediction), 1)
        answer = min(answer, len(choices) - 1)
        problems[pid] = {
            "question": f"Which animal is in picture {n}?",
            "choices": choices,
            "answer": answer,
            "hint": "Look closely." if n % 3 == 0 else "",
            "image": "image.png",
            "subject": subjects[n % 3],
            "grade": f"grade{3 + n}",
            "split": "test",
        }
        test.append(pid)
    for pid in ("900", "901"):  # no image: not in ScienceQA-IMG
        problems[pid] = dict(problems["100"], image=None, question="Text only?")
        test.append(pid)
    problems["500"] = dict(problems["100"], split="train")
    write_json(root / "problems.json", problems)
    write_json(root / "pid_splits.json", {"train": ["500"], "test": test})
    for pid in test:
        if problems[pid]["image"]:
            (root / "images" / "test" / pid).mkdir(parents=True)
            (root / "images" / "test" / pid / "image.png").write_bytes(png_bytes(int(pid) % 256))
    answers = {pid: SQA_ANSWERS[n][0] for n, pid in enumerate(test[: len(SQA_ANSWERS)])}
    answers.update({"900": "A", "901": "B"})
    write_json(FIXTURES / "answers_scienceqa.json", answers)

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.jsonl"
        with result.open("w") as handle:
            for pid, text in answers.items():
                prompt = "question" + ("\n<image>" if problems[pid]["image"] else "")
                handle.write(
                    json.dumps({"question_id": pid, "prompt": prompt, "text": text}) + "\n"
                )
        stdout = run(
            [side_python, str(official / "eval_science_qa.py"), "--base-dir", str(root)]
            + ["--result-file", str(result), "--output-file", f"{tmp}/out.json"]
            + ["--output-result", f"{tmp}/res.json"]
        )
        verdicts = json.loads(Path(f"{tmp}/out.json").read_text())
    img = re.search(r"IMG-Accuracy: ([\d.]+)%", stdout).group(1)
    correct = sorted(item["question_id"] for item in verdicts["correct"] if item["is_multimodal"])
    write_json(
        FIXTURES / "expected_scienceqa.json",
        {
            "source": "LLaVA llava/eval/eval_science_qa.py",
            "stdout": stdout.strip(),
            "img_accuracy_percent": float(img),
            "img_correct_ids": correct,
        },
    )


# SEED-Bench --------------------------------------------------------------------------------
SEED_TYPES = {
    "Scene Understanding": 1,
    "Instance Identity": 2,
    "Instance Attributes": 3,
    "Action Recognition": 10,
}
SEED_REPLIES = ["A", "B", "C", "D", " B ", "A.", "The answer is C", "b", ""]


def make_seed(side_python: str, official: Path) -> None:
    root = FIXTURES / "seed"
    shutil.rmtree(root, ignore_errors=True)
    (root / "SEED-Bench-image").mkdir(parents=True)
    rng = random.Random(3)
    questions, answers = [], {}
    for n in range(12):
        kind = [1, 2, 3][n % 3]
        truth = "ABCD"[(n * 3) % 4]
        data_id = f"{1000 + n}_{7 * n}.jpg"
        (root / "SEED-Bench-image" / data_id).write_bytes(png_bytes(n * 20))
        questions.append(
            {
                "question_id": str(2000 + n),
                "question": f"What is item {n}?",
                "choice_a": "a cup",
                "choice_b": "a pen",
                "choice_c": "a hat",
                "choice_d": "a key",
                "answer": truth,
                "question_type_id": kind,
                "data_type": "image",
                "data_id": data_id,
            }
        )
        answers[str(2000 + n)] = truth if rng.random() < 0.5 else rng.choice(SEED_REPLIES)
    questions.append(
        {
            "question_id": "2999",
            "question": "What happens?",
            "choice_a": "x",
            "choice_b": "y",
            "choice_c": "z",
            "choice_d": "w",
            "answer": "A",
            "question_type_id": 10,
            "data_type": "video",
            "data_id": "v.mp4",
        }
    )
    write_json(root / "SEED-Bench.json", {"question_type": SEED_TYPES, "questions": questions})
    write_json(FIXTURES / "answers_seed.json", answers)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "merge.jsonl"
        # LLaVA's question file has integer ids and its outputs are stripped; the video
        # question gets an answer so that the script runs.
        lines = [
            {"question_id": int(q), "text": t.strip()} for q, t in {**answers, "2999": "A"}.items()
        ]
        result.write_text("".join(json.dumps(line) + "\n" for line in lines))
        stdout = run(
            [
                side_python,
                str(official / "convert_seed_for_submission.py"),
                "--annotation-file",
                str(root / "SEED-Bench.json"),
                "--result-file",
                str(result),
                "--result-upload-file",
                f"{tmp}/upload.jsonl",
            ]
        )
    names = {str(v): k for k, v in SEED_TYPES.items()}
    per_type = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"^(.+): ([\d.]+)%$", stdout, re.M)
    }
    write_json(
        FIXTURES / "expected_seed.json",
        {
            "source": "LLaVA scripts/convert_seed_for_submission.py",
            "stdout": stdout.strip(),
            "image_accuracy_percent": per_type.pop("image accuracy"),
            "per_type_percent": {
                k: v
                for k, v in per_type.items()
                if k in names.values() and k != "Action Recognition"
            },
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side-python", required=True)
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--mmbench-evals", type=Path, required=True)
    args = parser.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    make_scienceqa(args.side_python, args.official)
    make_mme(args.side_python, args.official)
    make_mmbench(args.side_python, args.mmbench_evals)
    make_seed(args.side_python, args.official)
    print(f"wrote {FIXTURES}")


if __name__ == "__main__":
    main()
