"""Faults: SIGKILL loses at most the steps since the last checkpoint; SIGTERM saves one first."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from training_utils import REPO, make_workspace, run_train, tiny_recipe, train_command, write_recipe

from mllm.training.metrics import read_metrics

STEPS = 30
SETTINGS = {"max_steps": STEPS, "save_every": 5, "log_every": 1, "micro_batch_size": 1}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def _losses(stage_dir) -> dict[int, float]:
    rows = read_metrics(stage_dir / "metrics.jsonl")
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps)), "a step was logged twice"
    return {row["step"]: row["loss"] for row in rows}


def _start_and_interrupt(args: list[str], nproc: int, stage_dir, sig: int) -> int:
    """Start training, wait for its first periodic checkpoint, send ``sig`` to every process."""
    command, env = train_command(args, nproc=nproc)
    process = subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not (stage_dir / "checkpoints/step_00000005").exists():
        assert process.poll() is None, process.stderr.read().decode()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    if sig == signal.SIGKILL:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.send_signal(sig)
    process.wait(timeout=120)
    return process.returncode


@pytest.mark.distributed
def test_sigkill_two_processes_then_resume_matches(ws, tmp_path):
    raw = tiny_recipe(ws, tmp_path / "reference", align=SETTINGS)
    run_train([str(write_recipe(tmp_path / "reference.yaml", raw)), "--stage", "align"], nproc=2)
    reference = _losses(tmp_path / "reference/align")

    raw["output_dir"] = str(tmp_path / "run")
    recipe = str(write_recipe(tmp_path / "run.yaml", raw))
    stage_dir = tmp_path / "run/align"
    _start_and_interrupt([recipe, "--stage", "align"], 2, stage_dir, signal.SIGKILL)
    assert not (stage_dir / "final").exists(), "the run finished before it was killed"
    run_train([recipe, "--stage", "align", "--resume"], nproc=2)
    assert _losses(stage_dir) == reference  # same data order, bit-identical losses


def test_sigterm_saves_a_checkpoint_and_resumes(ws, tmp_path):
    raw = tiny_recipe(ws, tmp_path / "reference", align=SETTINGS)
    run_train([str(write_recipe(tmp_path / "reference.yaml", raw)), "--stage", "align"])
    reference = _losses(tmp_path / "reference/align")

    raw["output_dir"] = str(tmp_path / "run")
    recipe = str(write_recipe(tmp_path / "run.yaml", raw))
    stage_dir = tmp_path / "run/align"
    code = _start_and_interrupt([recipe, "--stage", "align"], 1, stage_dir, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert not (stage_dir / "final").exists()
    saved = sorted(p.name for p in (stage_dir / "checkpoints").iterdir())
    stopped_at = int(saved[-1].split("_")[1])
    assert 5 <= stopped_at < STEPS
    assert max(_losses(stage_dir)) == stopped_at  # it stopped right after saving
    run_train([recipe, "--stage", "align", "--resume"])
    assert _losses(stage_dir) == reference
