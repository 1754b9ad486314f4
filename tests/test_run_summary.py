"""A run's account of itself: the grad norm per logged step, one summary per stage (console and
manifest), and a resumed run that appends to ``metrics.jsonl`` without repeating steps."""

from __future__ import annotations

import shutil

import pytest
import torch
from training_utils import make_workspace, run_train, tiny_recipe, write_recipe

from mllm.checkpoint import read_manifest
from mllm.config import validate_recipe
from mllm.data.recipe_templates import special_tokens_for, stage_template
from mllm.data.stage_data import build_collator, build_dataset
from mllm.models import build_model
from mllm.training.metrics import read_metrics
from mllm.training.sampler import StepBatchSampler
from mllm.training.setup import seed_everything
from mllm.training.stage import apply_stage


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def _first_step_grad_norm(raw: dict) -> float:
    """The norm of the first optimizer step's gradients, recomputed the way scripts/train.py
    builds the stage (seed, model, stage, data order) with one micro-batch per step."""
    recipe = validate_recipe(raw, "test")
    stage = recipe.stages["align"]
    seed_everything(recipe.seed)
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    apply_stage(built.model, stage.train)
    built.model.vision.eval()  # frozen components run in eval mode, as in the trainer
    dataset = build_dataset(stage.data, built, stage_template(recipe, stage))
    sampler = StepBatchSampler(
        len(dataset),
        micro_batch_size=stage.micro_batch_size,
        accumulation=1,
        rank=0,
        world_size=1,
        seed=recipe.seed,
        total_steps=1,
        start_step=0,
    )
    collate = build_collator(stage.data, built.tokenizer.pad_token_id)
    batch = collate([dataset[i] for i in next(iter(sampler))])
    batch.pop("skipped", None)
    batch.pop("num_tokens", None)
    built.model(**batch).loss.backward()
    grads = [p.grad for p in built.model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads))


def test_grad_norm_is_the_steps_global_norm_before_clipping(ws, tmp_path):
    # One micro-batch per step and clipping far below the norm: the logged value is the
    # norm clip_grad_norm_ sees, not the clipped one.
    raw = tiny_recipe(
        ws,
        tmp_path / "run",
        align={
            "max_steps": 1,
            "global_batch_size": 2,
            "optim": {"max_grad_norm": 1e-3},
        },
    )
    run_train([str(write_recipe(tmp_path / "r.yaml", raw)), "--stage", "align"])
    (row,) = read_metrics(tmp_path / "run/align/metrics.jsonl")
    assert row["grad_norm"] > 1e-3
    assert row["grad_norm"] == pytest.approx(_first_step_grad_norm(raw), rel=1e-5)


def test_a_stage_ends_with_one_summary_in_the_console_and_the_manifest(ws, tmp_path):
    raw = tiny_recipe(ws, tmp_path / "run", align={"max_steps": 3, "log_every": 1})
    result = run_train([str(write_recipe(tmp_path / "r.yaml", raw)), "--stage", "align"])
    console = result.stdout + result.stderr
    assert console.count("stage align done:") == 1

    rows = read_metrics(tmp_path / "run/align/metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(row["grad_norm"] > 0 for row in rows)

    final = tmp_path / "run/align/final"
    summary = read_manifest(final)["summary"]
    assert summary["stage"] == "align"
    assert summary["steps"] == 3 and summary["start_step"] == 0
    assert summary["samples"] == 3 * 4  # steps x global batch
    assert summary["tokens"] > 0 and summary["padding_tokens"] >= 0
    assert 0 <= summary["padding_share"] < 1
    assert summary["wall_s"] > 0 and summary["samples_per_s"] > 0 and summary["tokens_per_s"] > 0
    assert summary["final_loss"] == rows[-1]["loss"]
    assert summary["peak_rss_mib"] > 100  # torch alone is more
    assert summary["peak_cuda_mib"] is None  # CPU run
    assert summary["output"] == str(final)
    assert f"-> {final}" in console


def test_resume_appends_to_metrics_without_repeating_steps(ws, tmp_path):
    raw = tiny_recipe(ws, tmp_path / "run", align={"max_steps": 4, "save_every": 2, "log_every": 1})
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    run_train([str(recipe), "--stage", "align"])
    stage_dir = tmp_path / "run/align"
    first = read_metrics(stage_dir / "metrics.jsonl")
    assert [row["step"] for row in first] == [1, 2, 3, 4]

    # As after a kill at step 4: rows 3-4 were logged, only step 2 was checkpointed.
    shutil.rmtree(stage_dir / "final")
    result = run_train([str(recipe), "--stage", "align", "--resume"])
    rows = read_metrics(stage_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # each step once
    assert rows[:2] == first[:2]  # rows before the checkpoint are kept as they were
    for again, before in zip(rows[2:], first[2:], strict=True):
        assert again["loss"] == before["loss"]  # bit-identical on CPU in fp32
        assert again["grad_norm"] == before["grad_norm"]
    summary = read_manifest(stage_dir / "final")["summary"]
    assert (summary["start_step"], summary["steps"], summary["samples"]) == (2, 2, 2 * 4)
    assert "stage align done: 2 steps (resumed at step 2)" in result.stdout + result.stderr
