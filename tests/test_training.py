"""Training: which parameters learn per stage, checkpoints under ZeRO, resume, stage chaining."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from training_utils import REPO, make_workspace, run_train, tiny_recipe, write_recipe

from mllm.checkpoint import CheckpointError, load_mllm_checkpoint, read_manifest
from mllm.config import RecipeError, validate_recipe
from mllm.config.schema import LastBlocks
from mllm.data.recipe_templates import special_tokens_for
from mllm.errors import UsageError
from mllm.models import build_model
from mllm.training.metrics import read_metrics
from mllm.training.setup import enable_gradient_checkpointing, resolve_init_from
from mllm.training.stage import apply_stage, build_optimizer, parameter_groups


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


def test_optimizer_is_fused_adamw_with_the_loops_steps(ws, tmp_path):
    """The stage's AdamW runs torch's fused kernel on CPU and steps as the per-tensor loop
    does, per group (learning rate, weight decay)."""
    raw = tiny_recipe(ws, tmp_path, instruct={"optim": {"lr": 1e-2, "projector_lr": 3e-2}})
    recipe = validate_recipe(raw, "test")
    optim = recipe.stages["instruct"].optim
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    apply_stage(built.model, recipe.stages["instruct"].train)
    groups = parameter_groups(built.model, optim)
    fused = build_optimizer(groups, optim)
    assert fused.defaults["fused"] is True
    copies = {id(p): p.detach().clone().requires_grad_(True) for g in groups for p in g["params"]}
    loop = torch.optim.AdamW(
        [{**g, "params": [copies[id(p)] for p in g["params"]]} for g in groups],
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        foreach=False,
    )
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for group in groups:
            for param in group["params"]:
                grad = torch.randn(param.shape, generator=generator)
                param.grad, copies[id(param)].grad = grad, grad.clone()
        fused.step()
        loop.step()
    for group in groups:
        for param in group["params"]:
            torch.testing.assert_close(param.detach(), copies[id(param)].detach())


def _last_block_recipe(ws, tmp_path, **optim):
    # feature_layer -1: the tower's last block feeds the features (with -2 it gets no gradient).
    raw = tiny_recipe(
        ws,
        tmp_path,
        instruct={
            "train": {"vision": {"mode": "full", "last_blocks": 1}},
            "optim": {"lr": 2e-5, **optim},
        },
    )
    raw["model"]["vision"]["feature_layer"] = -1
    return validate_recipe(raw, "test")


def test_vision_last_blocks_train_alone_at_vision_lr(ws, tmp_path):
    recipe = _last_block_recipe(ws, tmp_path, vision_lr=1e-4)
    stage = recipe.stages["instruct"]
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    model = built.model
    table = apply_stage(model, stage.train)
    layers = model.vision.encoder.encoder.layers
    last = {f"vision.encoder.encoder.layers.{len(layers) - 1}.{n}" for n, _ in layers[-1].named_parameters()}  # fmt: skip
    trainable = {
        n for n, p in model.named_parameters() if p.requires_grad and n.startswith("vision.")
    }
    assert trainable == last and len(layers) > 1
    assert table["vision"][0] == sum(p.numel() for p in layers[-1].parameters())
    assert layers[-1].training and not layers[0].training and not model.vision.encoder.training
    n = model.num_image_tokens
    ids = torch.tensor([[1] + [model.image_token_id] * n + [5, 6, 7, 2]])
    model(input_ids=ids, labels=ids, pixel_values=torch.randn(1, 3, 32, 32)).loss.backward()
    assert _grad_owners(model)["vision"] == last
    lrs = {id(p): g["lr"] for g in parameter_groups(model, stage.optim) for p in g["params"]}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert lrs[id(param)] == (1e-4 if name.startswith("vision.") else 2e-5), name


def test_vision_last_blocks_errors(ws, tmp_path):
    recipe = _last_block_recipe(ws, tmp_path)
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    too_many = recipe.stages["instruct"].train.model_copy(
        update={"vision": LastBlocks(last_blocks=99)}
    )
    with pytest.raises(UsageError, match=r"stages.instruct.train.vision.last_blocks: 99, but the vision tower has 2 blocks"):  # fmt: skip
        apply_stage(built.model, too_many, key="stages.instruct.frozen_modules")
    raw = tiny_recipe(ws, tmp_path, align={"optim": {"vision_lr": 1e-4}})
    with pytest.raises(RecipeError, match=r"stages.align.optim.vision_lr.*vision is frozen"):
        validate_recipe(raw, "test")


def test_missing_init_from_fails_before_training(ws, tmp_path):
    recipe = validate_recipe(tiny_recipe(ws, tmp_path), "test")
    with pytest.raises(
        CheckpointError, match=r"stages.instruct.init_from='stage:align'.*not a complete|no such"
    ):
        resolve_init_from(recipe, "instruct")


def test_two_stages_single_process_then_resume_matches(ws, tmp_path):
    # Stage 1 trains the projector and the tower's last block (ShareGPT4V's partial tower);
    # stage 2 keeps both frozen: its output must hold stage 1's exactly.
    raw = tiny_recipe(
        ws,
        tmp_path / "run",
        align={
            "max_steps": 6,
            "save_every": 3,
            "log_every": 1,
            "train": {"vision": {"mode": "full", "last_blocks": 1}},
            "optim": {"vision_lr": 1e-3},
        },
        instruct={"train": {"projector": "frozen"}, "max_steps": 2},
    )
    raw["model"]["vision"]["feature_layer"] = -1
    recipe_path = write_recipe(tmp_path / "recipe.yaml", raw)
    run_train([str(recipe_path)])
    align_dir, instruct_dir = tmp_path / "run/align", tmp_path / "run/instruct"
    align_final = load_file(align_dir / "final/model.safetensors")
    assert set(k.split(".")[0] for k in align_final) == {"projector", "vision"}  # what trained
    instruct_final = load_file(instruct_dir / "final/model.safetensors")
    assert set(k.split(".")[0] for k in instruct_final) == {"projector", "vision", "llm"}
    pretrained = load_file(ws["clip"] / "model.safetensors")
    for name, tensor in align_final.items():
        if name.startswith("vision."):  # only the last block moved
            moved = not torch.equal(tensor, pretrained[name.removeprefix("vision.encoder.")])
            assert moved == name.startswith("vision.encoder.encoder.layers.1."), name
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
    # Stage 2 also trains the tower's last block: a partial tower under ZeRO.
    partial_tower = {"train": {"vision": {"mode": "full", "last_blocks": 1}}}
    raw = tiny_recipe(
        ws, tmp_path / "run", align=stage_settings, instruct={**stage_settings, **partial_tower}
    )
    raw["model"]["vision"]["feature_layer"] = -1
    recipe_path = write_recipe(tmp_path / "recipe.yaml", raw)
    run_train([str(recipe_path)], nproc=2, launcher=launcher)
    for stage in ("align", "instruct"):
        checkpoint = tmp_path / f"run/{stage}/checkpoints/step_00000002"
        ours = load_file(checkpoint / "model.safetensors")
        reference = _consolidated(checkpoint / "engine")
        # DeepSpeed's own consolidation of the fp32 master weights equals what we gathered.
        trained = {k: v for k, v in ours.items() if k in reference}
        assert trained and set(reference) <= set(ours)
        if stage == "instruct":
            assert any(k.startswith("vision.encoder.encoder.layers.1.") for k in reference)
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
