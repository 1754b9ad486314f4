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
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "benchmarks"


def png_bytes(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (shade, 255 - shade, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def run(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


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


# MME ----------------------------------------------------------------------------------------
MME_PERCEPTION = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
]
MME_COGNITION = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
]
MME_NESTED = {"posters", "celebrity", "scene", "landmark", "artwork"}
MME_REPLIES = [
    "Yes",
    "No",
    "yes.",
    "No, it is not.",
    "not sure",
    "y",
    "I cannot tell",
    "Yes, there is.",
    "no",
]


def make_mme(side_python: str, official: Path) -> None:
    root = FIXTURES / "mme"
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(16)
    answers, result_lines = {}, {}
    for t, subtask in enumerate(MME_PERCEPTION + MME_COGNITION):
        nested = subtask in MME_NESTED
        text_dir = root / subtask / ("questions_answers_YN" if nested else "")
        image_dir = root / subtask / ("images" if nested else "")
        text_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(1 + t % 3):
            name = f"{i:04d}"
            suffix = ".jpg" if nested else ".png"
            (image_dir / f"{name}{suffix}").write_bytes(png_bytes(t * 10 + i))
            pair = [
                (f"Is this {subtask} {i}? Please answer yes or no.", "Yes"),
                (f"Is this not {subtask} {i}? Please answer yes or no.", "No"),
            ]
            (text_dir / f"{name}.txt").write_text(
                "".join(f"{q}\t{a}\n" for q, a in pair), encoding="utf-8"
            )
            for number, (question, truth) in enumerate(pair):
                # Mostly right, so that some images have both right (acc+).
                reply = truth if rng.random() < 0.5 else rng.choice(MME_REPLIES)
                answers[f"{subtask}/{name}{suffix}/{number}"] = reply
                lines.append(f"{name}{suffix}\t{question}\t{truth}\t{reply}\n")
        result_lines[subtask] = lines
    write_json(FIXTURES / "answers_mme.json", answers)
    with tempfile.TemporaryDirectory() as tmp:
        for subtask, lines in result_lines.items():
            Path(tmp, f"{subtask}.txt").write_text("".join(lines), encoding="utf-8")
        stdout = run([side_python, str(official / "mme_calculation.py"), "--results_dir", tmp])
    totals = [float(x) for x in re.findall(r"total score: ([\d.]+)", stdout)]
    scores = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"\t (\w+)  score: ([\d.]+)", stdout)
    }
    write_json(
        FIXTURES / "expected_mme.json",
        {
            "source": "MME eval_tool/calculation.py",
            "perception": totals[0],
            "cognition": totals[1],
            "subtask_scores": scores,
        },
    )


# MMBench -----------------------------------------------------------------------------------
MMB_QUESTIONS = [
    (
        "What is shown?",
        ["a red car", "a blue boat", "a green tree", "a dog"],
        "C",
        "Look.",
        "object",
        "perception",
    ),
    ("Which season is it?", ["winter", "summer", "autumn"], "A", "", "scene", "perception"),
    ("Is the man happy?", ["yes", "no"], "B", "", "emotion", "reasoning"),
    ("How many cats?", ["one", "two", "three", "four"], "D", "Count them.", "object", "perception"),
    ("What color is the sky?", ["gray", "blue", "black", "pink"], "B", "", "scene", "perception"),
]


def rotations(options: list[str], answer: str) -> list[tuple[list[str], str]]:
    index = "ABCD".index(answer)
    return [
        (options[k:] + options[:k], "ABCD"[(index - k) % len(options)]) for k in range(len(options))
    ]


def mmbench_reply(rng: random.Random, options: list[str], answer: str) -> str:
    text = options["ABCD".index(answer)]
    wrong = next(c for c in "ABCD"[: len(options)] if c != answer)
    forms = [
        answer,
        f"({answer})",
        f"The answer is ({answer}).",
        f"{answer}.",
        text.capitalize(),
        f"It is {text}",
        wrong,
        "I am not sure",
        f"A picture of {text} here",
    ]
    return answer if rng.random() < 0.55 else rng.choice(forms)


def make_mmbench(side_python: str, mmbench_evals: Path) -> None:
    root = FIXTURES / "mmbench"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = random.Random(7)
    header = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "image",
        "source",
        "l2-category",
        "split",
    ]
    rows, records, answers = [], [], {}
    for base, (question, options, answer, hint, category, l2) in enumerate(MMB_QUESTIONS):
        image = base64.b64encode(png_bytes(base * 40)).decode()
        shifts = rotations(options, answer)
        # Question 3 ships its rotations in the TSV, as the release does; the others do not.
        in_file = shifts if base == 3 else shifts[:1]
        for k, (opts, truth) in enumerate(in_file):
            cells = opts + ["nan"] * (4 - len(opts))
            rows.append(
                [
                    str(base + k * 1_000_000),
                    question,
                    hint or "nan",
                    *cells,
                    truth,
                    category,
                    image if k == 0 else str(base),
                    "made",
                    l2,
                    "dev",
                ]
            )
        for k, (opts, truth) in enumerate(shifts):
            reply = mmbench_reply(rng, opts, truth)
            answers[f"{base}_shift{k}"] = reply
            record = {
                "index": base + k * 1_000_000,
                "question": question,
                "answer": truth,
                "prediction": reply,
                "hint": hint or "nan",
                "source": "made",
                "split": "dev",
                "category": category,
                "L2-category": l2,
            }
            for letter in "ABCD":
                position = "ABCD".index(letter)
                record[letter] = opts[position] if position < len(opts) else float("nan")
            records.append(record)
    (root / "mmbench_dev_fixture.tsv").write_text(
        "\n".join("\t".join(row) for row in [header, *rows]) + "\n", encoding="utf-8"
    )
    write_json(FIXTURES / "answers_mmbench.json", answers)
    driver = f"""
import importlib.util, json, math, sys
spec = importlib.util.spec_from_file_location("mmbench_evals", {str(mmbench_evals)!r})
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
class NoGPT(module.MMBench_Evaluator):
    def extract_answer_from_item(self, item):
        return False, "no GPT"
records = json.loads(sys.stdin.read())
for r in records:
    for c in "ABCD":
        if r[c] is None: r[c] = float("nan")
overall, category, l2 = NoGPT().eval_result(records, eval_method="openai")
print(json.dumps({{"overall": overall, "category": category, "l2": l2}}))
"""
    out = subprocess.run(
        [side_python, "-c", driver],
        input=json.dumps(records),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    write_json(
        FIXTURES / "expected_mmbench.json",
        {"source": "lmms-eval mmbench_evals.MMBench_Evaluator.eval_result, no GPT", **result},
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
