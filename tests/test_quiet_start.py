"""A healthy start says what matters in mllm's words, without libraries' warnings to learn to
ignore: no bitsandbytes when nothing is quantised, no DeepSpeed accelerator guess or op-builder
chatter, no transformers ``mean_resizing`` notice or "Loading weights" bars (one line per
component instead, from rank 0 only)."""

from __future__ import annotations

import logging
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
    "built successfully",  # DeepSpeed's op builder: the CPU shared-memory all-reduce op
    "Loading weights",  # transformers' bar for each from_pretrained
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
    assert console.count("model.vision: loaded ") == 1
    assert console.count("model.llm: loaded ") == 1

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


@pytest.mark.distributed
def test_two_ranks_start_as_quietly_as_one(tmp_path):
    """Rank 1 draws no bars and says nothing rank 0 already said."""
    ws = make_workspace(tmp_path / "ws")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(ws, tmp_path / "run"))
    result = run_train([str(path), "--stage", "align", "stages.align.max_steps=1"], nproc=2)
    console = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in console
    assert "[rank 1]" not in console
    assert console.count("device: cpu (gloo), 2 processes") == 1
    assert console.count("model.vision: loaded ") == 1
    assert console.count("model.llm: loaded ") == 1


def test_progress_bars_follow_the_rank():
    """Rank 0 keeps the hub's download bars (mllm logs a line per loaded component instead of
    transformers' "Loading weights" bars); every other rank draws no bar at all."""
    probe = (
        "import huggingface_hub.utils as hub, transformers.utils.logging as hf;"
        "from mllm.training.distributed import quiet_progress_bars;"
        "quiet_progress_bars(is_main={main});"
        "print(hub.are_progress_bars_disabled(), hf.is_progress_bar_enabled())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    for main, expected in ((True, "False True"), (False, "True False")):
        result = subprocess.run(
            [sys.executable, "-c", probe.format(main=main)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=120,
            check=True,
        )
        assert result.stdout.strip().splitlines()[-1] == expected


def test_a_load_logs_one_line_and_leaves_transformers_bars_as_they_were(caplog):
    from transformers.utils import logging as hf_logging

    from mllm.models.assembly import logged_load

    class TinyLM(torch.nn.Module):
        dtype = torch.bfloat16

    def hook(factory, args, kwargs):  # someone else's hook, there before the load
        return factory(*args, **kwargs)

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        with (
            caplog.at_level(logging.INFO, logger="mllm.models.assembly"),
            logged_load("model.llm", "some/llm") as loaded,
        ):
            bar = hf_logging.tqdm(range(3), desc="Loading weights")
            assert bar.disable and list(bar) == [0, 1, 2]
            loaded.append(TinyLM())
        assert hf_logging.set_tqdm_hook(previous) is hook
    finally:
        hf_logging.set_tqdm_hook(previous)
    assert caplog.messages == ["model.llm: loaded some/llm (TinyLM, bfloat16) in 0.0 s"]


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
