"""MMBench's fixture for ``make_mc_benchmark_fixtures.py``: a tiny dev TSV, replies to every
circular rotation of its questions, and what lmms-eval's ``MMBench_Evaluator.eval_result``
scores for them with its GPT fallback replaced by "no answer".

MMBench stands apart from the other benchmarks: CircularEval asks each question once per
rotation of its options (:func:`rotations`), the release ships only some rotations, and the
scorer is a class in lmms-eval, driven here by a small program run in the side venv.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
from pathlib import Path

from mc_fixture_files import FIXTURES, png_bytes, run, write_json

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
    out = run([side_python, "-c", driver], stdin=json.dumps(records))
    result = json.loads(out.strip().splitlines()[-1])
    write_json(
        FIXTURES / "expected_mmbench.json",
        {"source": "lmms-eval mmbench_evals.MMBench_Evaluator.eval_result, no GPT", **result},
    )
