"""Training: which parameters learn per stage, checkpoints under ZeRO, resume, stage chaining."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from training_utils import REPO, make_workspace, run_train, tiny_recipe, write_recipe

from mllm.checkpoint import CheckpointError, load_mllm_checkpoint, read_manifest
from mllm.config import validate_recipe
from mllm.data.recipe_templates import special_tokens_for
from mllm.models import build_model
from mllm.training.metrics import read_metrics
from mllm.training.setup import enable_gradient_checkpointing, resolve_init_from
from mllm.training.stage import apply_stage, parameter_groups


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def _grad_owners(model) -> dict[str, set[str]]:
    owners: dict[str, set[str]] = {"vision": set(), "projector": set(), "llm": set()}
    for name, param in model.named_parameters():
        if param.grad is not None and param.grad.abs().sum() > 0:
            owners[name.split(".")[0]].add(name)
    return owners


@pytest.mark.parametrize(
    ("stage", "learning"),
    [("align", {"projector"}), ("instruct", {"projector", "llm"})],
)
def test_exactly_the_stage_components_get_gradients(ws, tmp_path, stage, learning):
    recipe = validate_recipe(tiny_recipe(ws, tmp_path), "test")
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    table = apply_stage(built.model, recipe.stages[stage].train)
    for name, (trainable, total) in table.items():
        assert trainable == (total if name in learning else 0)
    n = built.model.num_image_tokens
    ids = torch.tensor([[1] + [built.model.image_token_id] * n + [5, 6, 7, 2]])
    built.model(input_ids=ids, labels=ids, pixel_values=torch.randn(1, 3, 32, 32)).loss.backward()
    owners = _grad_owners(built.model)
    assert {name for name, params in owners.items() if params} == learning
    # Every trainable parameter is in exactly one optimizer group, frozen ones in none.
    grouped = [
        p for g in parameter_groups(built.model, recipe.stages[stage].optim) for p in g["params"]
    ]
    assert len(grouped) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in built.model.parameters() if p.requires_grad}


def test_projector_lr_gets_its_own_group(ws, tmp_path):
    raw = tiny_recipe(ws, tmp_path, instruct={"optim": {"lr": 2e-5, "projector_lr": 1e-3}})
    recipe = validate_recipe(raw, "test")
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    apply_stage(built.model, recipe.stages["instruct"].train)
    groups = parameter_groups(built.model, recipe.stages["instruct"].optim)
    projector_ids = {id(p) for p in built.model.projector.parameters()}
    for group in groups:
        in_projector = {id(p) in projector_ids for p in group["params"]}
        assert len(in_projector) == 1
        assert group["lr"] == (1e-3 if in_projector.pop() else 2e-5)


def test_missing_init_from_fails_before_training(ws, tmp_path):
    recipe = validate_recipe(tiny_recipe(ws, tmp_path), "test")
    with pytest.raises(
        CheckpointError, match=r"stages.instruct.init_from='stage:align'.*not a complete|no such"
    ):
        resolve_init_from(recipe, "instruct")


def test_two_stages_single_process_then_resume_matches(ws, tmp_path):
    # Stage 2 keeps the projector frozen: its output must hold stage 1's projector exactly.
    raw = tiny_recipe(
        ws,
        tmp_path / "run",
        align={"max_steps": 6, "save_every": 3, "log_every": 1},
        instruct={"train": {"projector": "frozen"}, "max_steps": 2},
    )
    recipe_path = write_recipe(tmp_path / "recipe.yaml", raw)
    run_train([str(recipe_path)])
    align_dir, instruct_dir = tmp_path / "run/align", tmp_path / "run/instruct"
    align_final = load_file(align_dir / "final/model.safetensors")
    assert set(k.split(".")[0] for k in align_final) == {"projector"}  # only what stage 1 trained
    instruct_final = load_file(instruct_dir / "final/model.safetensors")
    assert set(k.split(".")[0] for k in instruct_final) == {"projector", "llm"}
    for name, tensor in align_final.items():
        torch.testing.assert_close(instruct_final[name], tensor, rtol=0, atol=0)
    manifest = read_manifest(instruct_dir / "final")
    assert manifest["stage"] == "instruct" and manifest["step"] == 2
    assert {"torch", "transformers"} <= set(manifest["versions"])
    _check_llava_format_eval(ws, instruct_dir / "final", tmp_path)

    # Resume: copy the step-3 checkpoint of stage 1 into a fresh run and continue it.
    losses = {row["step"]: row["loss"] for row in read_metrics(align_dir / "metrics.jsonl")}
    assert sorted(losses) == list(range(1, 7))
    resumed = tmp_path / "resumed"
    (resumed / "align/checkpoints").mkdir(parents=True)
    shutil.copytree(
        align_dir / "checkpoints/step_00000003", resumed / "align/checkpoints/step_00000003"
    )
    raw["output_dir"] = str(resumed)
    run_train([str(write_recipe(tmp_path / "resume.yaml", raw)), "--stage", "align", "--resume"])
    resumed_losses = {
        row["step"]: row["loss"] for row in read_metrics(resumed / "align/metrics.jsonl")
    }
    assert sorted(resumed_losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed_losses[step] == losses[step], step  # bit-identical on CPU in fp32
    for name, tensor in load_file(resumed / "align/final/model.safetensors").items():
        torch.testing.assert_close(tensor, align_final[name], rtol=0, atol=0)


def _check_llava_format_eval(ws, checkpoint, tmp_path) -> None:
    """`mllm eval` reads LLaVA questions, writes LLaVA answers, and scores them per category."""
    from mllm.cli import main as cli

    predictions = tmp_path / "predictions.jsonl"
    questions = ws["data"] / "test/questions.jsonl"
    args = ["eval", "--model", str(checkpoint), "--questions", str(questions)]
    args += ["--image-folder", str(ws["images"]), "--output", str(predictions)]
    args += ["--answers", str(ws["data"] / "test/answers.jsonl"), "--max-new-tokens", "4"]
    assert cli(args) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    expected = [json.loads(line) for line in questions.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [q["question_id"] for q in expected]
    assert all(set(r) == {"question_id", "prompt", "text", "model_id"} for r in rows)
    assert rows[0]["prompt"] == expected[0]["text"] and rows[0]["model_id"] == "tiny"


def _consolidated(engine_dir) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(
        str(engine_dir), tag="state", exclude_frozen_parameters=True
    )


def test_gradient_checkpointing_gives_the_same_gradients(ws, tmp_path):
    recipe = validate_recipe(tiny_recipe(ws, tmp_path), "test")
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
        apply_stage(built.model, recipe.stages["instruct"].train)
        built.model.train()
        if checkpointing:
            enable_gradient_checkpointing(built.model)
        n = built.model.num_image_tokens
        ids = torch.tensor([[1] + [built.model.image_token_id] * n + [5, 6, 7, 2]])
        pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        built.model(input_ids=ids, labels=ids, pixel_values=pixels).loss.backward()
        grads.append(
            {k: p.grad.clone() for k, p in built.model.named_parameters() if p.grad is not None}
        )
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


@pytest.mark.distributed
@pytest.mark.parametrize(("zero", "launcher"), [("zero2", "torchrun"), ("zero3", "deepspeed")])
def test_two_process_zero_checkpoint_loads_in_one_process(ws, tmp_path, zero, launcher):
    stage_settings = {
        "zero_config": str(REPO / "zero_configs" / f"{zero}.json"),
        "max_steps": 3,
        "save_every": 2,
        "micro_batch_size": 1,
    }
    raw = tiny_recipe(ws, tmp_path / "run", align=stage_settings, instruct=stage_settings)
    recipe_path = write_recipe(tmp_path / "recipe.yaml", raw)
    run_train([str(recipe_path)], nproc=2, launcher=launcher)
    for stage in ("align", "instruct"):
        checkpoint = tmp_path / f"run/{stage}/checkpoints/step_00000002"
        ours = load_file(checkpoint / "model.safetensors")
        reference = _consolidated(checkpoint / "engine")
        # DeepSpeed's own consolidation of the fp32 master weights equals what we gathered.
        trained = {k: v for k, v in ours.items() if k in reference}
        assert trained and set(reference) <= set(ours)
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
    # The final stage output loads in one process without DeepSpeed and runs.
    loaded = load_mllm_checkpoint(tmp_path / "run/instruct/final")
    final = load_file(tmp_path / "run/instruct/final/model.safetensors")
    for name, param in loaded.built.model.named_parameters():
        if name in final:
            torch.testing.assert_close(param.detach(), final[name], rtol=0, atol=0)
    rows = read_metrics(tmp_path / "run/instruct/metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)
    json.dumps(rows)
