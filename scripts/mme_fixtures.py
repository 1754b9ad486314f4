"""MME's fixture for ``make_mc_benchmark_fixtures.py``: a tiny release in MME's folder layout
(flat and nested subtasks), yes/no replies to it, and what MME's ``eval_tool/calculation.py``
scores for them.

MME stands apart from the LLaVA-scored benchmarks: its release is a folder tree of image and
question files per subtask, and its scorer reads one result file per subtask (acc and acc+).
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile
from pathlib import Path

from mc_fixture_files import FIXTURES, png_bytes, run, write_json

from mllm.eval.benchmarks.mme import COGNITION, PERCEPTION

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
    for t, subtask in enumerate(PERCEPTION + COGNITION):
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
