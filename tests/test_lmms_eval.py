"""lmms-eval runs the ``mllm`` model (registered by entry point) on tiny local tasks.

The tasks (``tests/fixtures/lmms_eval_tasks/shapes_color/``) ask the trained shapes model its
held-out colour and count questions; lmms-eval's exact-match score must equal ``mllm eval``'s
on the same questions. Skipped where lmms-eval is not installed
(``bash scripts/install.sh dev,lmms-eval`` installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from mllm.cli import main as cli
from mllm.eval.scoring import is_correct

pytest.importorskip(
    "lmms_eval.evaluator", reason="lmms-eval is not installed (scripts/install.sh dev,lmms-eval)"
)

TASKS = Path(__file__).parent / "fixtures" / "lmms_eval_tasks"


def test_mllm_is_registered_through_the_entry_point():
    (entry,) = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "mllm"]
    manifest = entry.load()()
    assert manifest.simple_class_path == "mllm.integrations.lmms_eval.MllmModel"


def _mllm_eval_accuracy(trained_shapes, tmp_path: Path, capsys) -> float:
    rows = [
        {"question_id": i, "image": q.image.name, "text": q.text, "answer": q.answer}
        for i, q in enumerate(trained_shapes.held_out)
    ]
    tmp_path.mkdir()
    questions, answers = tmp_path / "questions.jsonl", tmp_path / "answers.jsonl"
    questions.write_text("".join(json.dumps({**r, "answer": None}) + "\n" for r in rows))
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "--model", str(trained_shapes.checkpoint), "--questions", str(questions)]
    args += ["--answers", str(answers), "--output", str(tmp_path / "predictions.jsonl")]
    args += ["--image-folder", str(trained_shapes.held_out[0].image.parent), "--batch-size", "4"]
    assert cli(args) == 0
    with open(tmp_path / "predictions.jsonl") as lines:
        texts = [json.loads(line)["text"] for line in lines]
    capsys.readouterr()
    held_out = trained_shapes.held_out
    correct = sum(is_correct(t, q.answer) for t, q in zip(texts, held_out, strict=True))
    return correct / len(rows)


def test_lmms_eval_scores_the_trained_model_as_mllm_eval_does(trained_shapes, tmp_path, capsys):
    expected = _mllm_eval_accuracy(trained_shapes, tmp_path / "mllm_eval", capsys)
    held_out = trained_shapes.held_out
    work = tmp_path / "lmms_eval"
    work.mkdir()
    with open(work / "shapes_color.jsonl", "w") as out:
        for q in held_out:
            out.write(
                json.dumps({"image": str(q.image), "text": q.text, "answer": q.answer}) + "\n"
            )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "lmms_eval", "--model", "mllm"]
    command += ["--model_args", f"pretrained={trained_shapes.checkpoint}"]
    command += ["--tasks", "shapes_color", "--include_path", str(TASKS)]
    command += ["--batch_size", "4", "--output_path", str(work / "results")]
    result = subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (results_file,) = (work / "results").rglob("*results*.json")
    results = json.loads(results_file.read_text())["results"]
    assert results["shapes_color"]["exact_match,none"] == pytest.approx(expected)
    assert expected == 1.0  # the trained model answers every held-out question
