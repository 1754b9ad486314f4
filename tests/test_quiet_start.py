"""A healthy start says what matters in mllm's words, without libraries' warnings to learn to
ignore: no bitsandbytes when nothing is quantised, no DeepSpeed accelerator guess, no
transformers ``mean_resizing`` notice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from training_utils import REPO, make_workspace, run_train, tiny_recipe, write_recipe

from mllm.training.lr_schedule import build_lr_scheduler

NOISE = (
    "gemm_4bit_forward",  # bitsandbytes imported (with the `kernels` package, on CPU)
    "trust_remote_code",
    "Setting accelerator to CPU",  # DeepSpeed guessing the device
    "mean_resizing",  # transformers announcing how it grew the embeddings
)


def _quiet_mllm(*args: str) -> subprocess.CompletedProcess:
    """Run ``mllm ARGS`` as a user would; it must succeed and print none of ``NOISE``."""
    result = subprocess.run(
        [sys.executable, "-m", "mllm.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=True,
    )
    for noise in NOISE:
        assert noise not in result.stdout + result.stderr
    return result


def test_a_tiny_run_and_a_model_load_print_no_library_noise(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(ws, tmp_path / "run"))
    result = run_train([str(path), "--stage", "align", "stages.align.max_steps=2"])
    console = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in console
    # Said once, in our words: device, attention kernel, embedding rows added.
    assert console.count("device: cpu (gloo), 1 process, 1 thread each") == 1
    assert console.count("model.llm.attn_implementation: auto -> sdpa") == 1
    assert console.count("added 1 row to the LLM's input and output embeddings") == 1

    image = next((ws["images"]).rglob("*.png"))
    chat = _quiet_mllm(
        "chat",
        "--model",
        str(tmp_path / "run/align/final"),
        "--image",
        str(image),
        "--prompt",
        "What shape?",
        "--max-new-tokens",
        "2",
    )
    assert "device: cpu (float32)" in chat.stderr


def test_make_tiny_prints_no_library_noise(tmp_path):
    # transformers' save_pretrained imports DeepSpeed (through accelerate) whenever it is
    # installed; mllm names the device first, so DeepSpeed does not guess and warn.
    _quiet_mllm("make-tiny", str(tmp_path / "tiny"))
    assert (tmp_path / "tiny/llama/config.json").is_file()


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_matches_transformers(schedule):
    """mllm's schedules are transformers' ``get_scheduler`` curves, step for step."""
    from transformers import get_scheduler

    def lrs(make) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = make(optimizer)
        values = []
        for _ in range(12):
            values.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return values

    name = {"constant": "constant_with_warmup"}.get(schedule, schedule)
    theirs = lrs(lambda opt: get_scheduler(name, opt, num_warmup_steps=3, num_training_steps=10))
    ours = lrs(lambda opt: build_lr_scheduler(opt, schedule, 3, 10))
    assert ours == theirs
