"""LoRA / QLoRA stages: what trains, checkpoints with adapters, resume, merge, and recipe rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from training_utils import REPO, make_workspace, run_train, tiny_recipe, write_recipe

from mllm.checkpoint import load_mllm_checkpoint, read_manifest
from mllm.config import RecipeError, load_recipe, validate_recipe
from mllm.data.recipe_templates import special_tokens_for
from mllm.models import build_model
from mllm.models.families import get_family
from mllm.models.llm import qlora_unavailable_reason
from mllm.models.lora import is_adapted, lora_settings, merge_adapters
from mllm.training.environment import check_environment
from mllm.training.metrics import read_metrics
from mllm.training.stage import apply_stage, parameter_groups

QLORA_SKIP = qlora_unavailable_reason()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def _lora_recipe(ws, out, mode="lora", **instruct):
    settings = {"train": {"llm": mode}, **instruct}
    return tiny_recipe(ws, out, instruct=settings)


def _batch(model):
    n = model.num_image_tokens
    ids = torch.tensor([[1] + [model.image_token_id] * n + [5, 6, 7, 2]])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return ids, pixels


def _randomise_adapters(model, seed=0):
    """LoRA B starts at zero (a no-op); give it values so merges and gradients are non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.copy_(0.1 * torch.randn(param.shape, generator=generator))


def test_lora_stage_trains_only_adapters_and_projector(ws, tmp_path):
    raw = _lora_recipe(ws, tmp_path, optim={"lr": 2e-4, "projector_lr": 2e-5})
    recipe = validate_recipe(raw, "test")
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    stage = recipe.stages["instruct"]
    table = apply_stage(built.model, stage.train, lora_settings(recipe, "instruct"))
    assert is_adapted(built.model.llm)
    assert table["vision"][0] == 0 and table["projector"][0] == table["projector"][1]
    assert 0 < table["llm"][0] < table["llm"][1]
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert all(n.startswith("projector.") or "lora_" in n for n in trainable)
    assert any(n.startswith("projector.") for n in trainable)
    _randomise_adapters(built.model)
    ids, pixels = _batch(built.model)
    built.model(input_ids=ids, labels=ids, pixel_values=pixels).loss.backward()
    with_grad = {
        n for n, p in built.model.named_parameters() if p.grad is not None and p.grad.abs().sum()
    }
    assert with_grad == trainable  # every adapter and projector weight learns, nothing else
    groups = parameter_groups(built.model, stage.optim)
    projector_ids = {id(p) for p in built.model.projector.parameters()}
    for group in groups:
        in_projector = {id(p) in projector_ids for p in group["params"]}
        assert len(in_projector) == 1  # the projector is outside the wrapper, with its own LR
        assert group["lr"] == (2e-5 if in_projector.pop() else 2e-4)


def test_lora_targets_default_to_every_linear_of_the_family(ws, tmp_path):
    recipe = validate_recipe(_lora_recipe(ws, tmp_path), "test")
    settings = lora_settings(recipe, "instruct")
    assert settings.target_modules == list(get_family("llama").lora_target_modules)
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    apply_stage(built.model, recipe.stages["instruct"].train, settings)
    wrapped = {
        n.rsplit(".", 1)[-1] for n, m in built.model.llm.named_modules() if hasattr(m, "lora_A")
    }
    assert wrapped == set(settings.target_modules)
    num_layers = built.model.llm.config.num_hidden_layers
    lora_a = [n for n, _ in built.model.llm.named_parameters() if "lora_A" in n]
    assert len(lora_a) == num_layers * len(settings.target_modules)
    assert not any("lm_head" in n or "embed" in n for n in lora_a)


@pytest.mark.parametrize(
    ("instruct", "key", "reason"),
    [
        ({"train": {"projector": "lora"}}, "stages.instruct.train.projector", "trains fully"),
        ({"lora": {"r": 4}}, "stages.instruct.lora", "no component of this stage is lora"),
        (
            {"train": {"llm": "qlora"}, "zero_config": str(REPO / "zero_configs/zero3.json")},
            "stages.instruct.zero_config",
            "ZeRO-3 cannot partition 4-bit",
        ),
    ],
)
def test_adapter_rules_fail_at_load(ws, tmp_path, instruct, key, reason):
    with pytest.raises(RecipeError) as error:
        validate_recipe(tiny_recipe(ws, tmp_path, instruct=instruct), "bad.yaml")
    assert key in str(error.value) and reason in str(error.value)


def test_qlora_after_a_stage_that_trained_the_llm_fails_at_load(ws, tmp_path):
    raw = tiny_recipe(ws, tmp_path, align={"train": {"llm": "full"}})
    raw["stages"]["instruct"]["train"]["llm"] = "qlora"
    with pytest.raises(RecipeError, match=r"stages.instruct.train.llm.*stage 'align'"):
        validate_recipe(raw, "bad.yaml")


def test_lora_override_on_the_demo_recipe(monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(REPO / "recipes/tiny/shapes_mlp.yaml", ["stages.instruct.train.llm=lora"])
    assert recipe.stages["instruct"].train.llm == "lora"
    assert lora_settings(recipe, "instruct").target_modules


def test_shipped_lora_recipes_have_llava_settings(monkeypatch):
    monkeypatch.chdir(REPO)
    lora = load_recipe(REPO / "recipes/llava_v1_5_lora.yaml").stages["instruct"]
    assert (lora.train.llm, lora.lora.r, lora.lora.alpha) == ("lora", 128, 256)
    assert (lora.optim.lr, lora.optim.projector_lr) == (2e-4, 2e-5)
    qlora = load_recipe(REPO / "recipes/llava_v1_5_qlora.yaml").stages["instruct"]
    assert qlora.train.llm == "qlora" and qlora.lora.quant_type == "nf4" and qlora.lora.double_quant


def test_qlora_where_it_cannot_run_fails_before_the_first_stage(ws, tmp_path, monkeypatch):
    import mllm.models.llm as probes

    monkeypatch.setattr(probes, "qlora_unavailable_reason", lambda: "no kernels (test)")
    raw = _lora_recipe(ws, tmp_path / "run", mode="qlora")
    recipe = validate_recipe(raw, "test")
    assert check_environment(recipe, ["align"]) == []
    problems = check_environment(recipe, ["align", "instruct"])
    assert problems == ["stages.instruct.train.llm: qlora cannot run here: no kernels (test)"]
    # The entry script, in a fresh process where the probe says no (stands for a machine
    # without usable bitsandbytes kernels).
    script = (
        "import sys, runpy, mllm.models.llm as c; "
        "c.qlora_unavailable_reason = lambda: 'no kernels (test)'; "
        f"sys.argv = ['train.py', {str(write_recipe(tmp_path / 'r.yaml', raw))!r}]; "
        f"runpy.run_path({str(REPO / 'scripts/train.py')!r}, run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode != 0
    assert "stages.instruct.train.llm: qlora cannot run here: no kernels" in result.stderr
    assert not (tmp_path / "run/align").exists()  # failed at start, not after stage 1


def _logits(loaded, ids, pixels):
    with torch.no_grad():
        return loaded.built.model(input_ids=ids, pixel_values=pixels).logits


def test_lora_train_resume_merge_and_next_stage(ws, tmp_path):
    """One process: a LoRA stage saves adapters + projector, resumes bit-identically, merges to a
    standalone model with the same logits, and a later stage starts from the merged LLM."""
    raw = _lora_recipe(ws, tmp_path / "run", max_steps=6, save_every=3, optim={"lr": 1e-2})
    raw["stages"]["align"]["max_steps"] = 1
    raw["stages"]["polish"] = {
        **raw["stages"]["align"],
        "init_from": "stage:instruct",
        "data": raw["stages"]["instruct"]["data"],
        "train": {"vision": "frozen", "projector": "full", "llm": "frozen"},
    }
    recipe_path = write_recipe(tmp_path / "recipe.yaml", raw)
    run_train([str(recipe_path)])
    final = tmp_path / "run/instruct/final"
    saved = load_file(final / "model.safetensors")
    assert {k.split(".")[0] for k in saved} == {"projector", "llm"}
    assert all("lora_" in k for k in saved if k.startswith("llm."))  # the base is not copied
    adapter = read_manifest(final)["adapters"]["llm"]
    assert adapter["mode"] == "lora" and adapter["base"] == "pretrained"
    assert adapter["target_modules"] == list(get_family("llama").lora_target_modules)

    # --resume from the step-3 checkpoint gives the same losses and weights (LLaVA's fails).
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "run/instruct/metrics.jsonl")}
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run/align", resumed / "align")
    (resumed / "instruct/checkpoints").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "run/instruct/checkpoints/step_00000003",
        resumed / "instruct/checkpoints/step_00000003",
    )
    raw["output_dir"] = str(resumed)
    resume_path = write_recipe(tmp_path / "resume.yaml", raw)
    run_train([str(resume_path), "--stage", "instruct", "--resume"])
    again = {r["step"]: r["loss"] for r in read_metrics(resumed / "instruct/metrics.jsonl")}
    assert sorted(again) == [4, 5, 6]
    for step in (4, 5, 6):
        assert again[step] == losses[step], step
    for name, tensor in load_file(resumed / "instruct/final/model.safetensors").items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)

    # Inference rebuilds the adapters; the merged folder gives the same logits without peft.
    loaded = load_mllm_checkpoint(final)
    assert is_adapted(loaded.built.model.llm)
    ids, pixels = _batch(loaded.built.model)
    reference = _logits(loaded, ids, pixels)
    from mllm.cli import main as cli

    assert cli(["merge", str(final), "--out", str(tmp_path / "merged")]) == 0
    merged = load_mllm_checkpoint(tmp_path / "merged")
    assert not is_adapted(merged.built.model.llm)
    assert not any("lora" in n for n, _ in merged.built.model.named_parameters())
    torch.testing.assert_close(_logits(merged, ids, pixels), reference, rtol=0, atol=1e-4)
    assert (tmp_path / "merged/llm/config.json").is_file()
    from transformers import AutoModelForCausalLM

    standalone = AutoModelForCausalLM.from_pretrained(tmp_path / "merged/llm")
    out = standalone.generate(
        torch.tensor([[1, 5, 6]]), max_new_tokens=3, min_new_tokens=3, do_sample=False
    )
    assert out.shape == (1, 6)
    _check_eval_runs(ws, tmp_path / "merged", tmp_path)

    # The stage after the LoRA stage starts from the merged LLM and saves it whole.
    polish = load_file(tmp_path / "run/polish/final/model.safetensors")
    merged_llm = dict(merged.built.model.llm.named_parameters())
    llm_tensors = {k[len("llm.") :]: v for k, v in polish.items() if k.startswith("llm.")}
    assert llm_tensors and not any("lora" in k for k in llm_tensors)
    for name, tensor in llm_tensors.items():
        torch.testing.assert_close(tensor, merged_llm[name].detach(), rtol=0, atol=1e-6)


def _check_eval_runs(ws, checkpoint, tmp_path):
    from mllm.cli import main as cli

    predictions = tmp_path / "predictions.jsonl"
    args = ["eval", "--model", str(checkpoint), "--questions"]
    args += [str(ws["data"] / "test/questions.jsonl"), "--image-folder", str(ws["images"])]
    args += ["--output", str(predictions), "--max-new-tokens", "3"]
    assert cli(args) == 0
    assert [json.loads(line) for line in predictions.read_text().splitlines()]


@pytest.mark.distributed
def test_two_process_zero3_lora_saves_resumes_and_merges(ws, tmp_path):
    zero3 = {
        "zero_config": str(REPO / "zero_configs/zero3.json"),
        "micro_batch_size": 1,
        "max_steps": 4,
        "save_every": 2,
    }
    raw = tiny_recipe(ws, tmp_path / "run", align={**zero3, "max_steps": 1, "save_every": None})
    raw["stages"]["instruct"].update({**zero3, "train": {**raw["stages"]["instruct"]["train"]}})
    raw["stages"]["instruct"]["train"]["llm"] = "lora"
    # A stage after the LoRA stage merges its adapters on load (gathered under ZeRO-3).
    raw["stages"]["polish"] = {**raw["stages"]["align"], "init_from": "stage:instruct"}
    run_train([str(write_recipe(tmp_path / "recipe.yaml", raw))], nproc=2, launcher="deepspeed")
    final = tmp_path / "run/instruct/final"
    saved = load_file(final / "model.safetensors")
    lora = [k for k in saved if k.startswith("llm.")]
    assert lora and all("lora_" in k for k in lora)
    assert all(t.numel() > 0 for t in saved.values())  # gathered, not ZeRO-3 shards

    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "run/instruct/metrics.jsonl")}
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run/align", resumed / "align")
    (resumed / "instruct/checkpoints").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "run/instruct/checkpoints/step_00000002",
        resumed / "instruct/checkpoints/step_00000002",
    )
    raw["output_dir"] = str(resumed)
    resume_path = write_recipe(tmp_path / "resume.yaml", raw)
    run_train([str(resume_path), "--stage", "instruct", "--resume"], nproc=2, launcher="deepspeed")
    again = {r["step"]: r["loss"] for r in read_metrics(resumed / "instruct/metrics.jsonl")}
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        assert again[step] == pytest.approx(losses[step], rel=1e-6, abs=1e-7), step
    for name, tensor in load_file(resumed / "instruct/final/model.safetensors").items():
        torch.testing.assert_close(tensor, saved[name], rtol=1e-5, atol=1e-6)

    # Loads in one process without DeepSpeed; the merged model gives the same logits.
    loaded = load_mllm_checkpoint(final)
    ids, pixels = _batch(loaded.built.model)
    reference = _logits(loaded, ids, pixels)
    from mllm.merge import merge_checkpoint

    merged = load_mllm_checkpoint(merge_checkpoint(final, tmp_path / "merged"))
    torch.testing.assert_close(_logits(merged, ids, pixels), reference, rtol=0, atol=1e-4)
    polish = load_file(tmp_path / "run/polish/final/model.safetensors")
    merged_llm = dict(merged.built.model.llm.named_parameters())
    llm_tensors = {k[len("llm.") :]: v for k, v in polish.items() if k.startswith("llm.")}
    assert llm_tensors.keys() == merged_llm.keys()
    for name, tensor in llm_tensors.items():
        torch.testing.assert_close(tensor, merged_llm[name].detach(), rtol=0, atol=1e-6)


def test_merge_equals_unmerged_in_memory(ws, tmp_path):
    recipe = validate_recipe(_lora_recipe(ws, tmp_path), "test")
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    apply_stage(built.model, recipe.stages["instruct"].train, lora_settings(recipe, "instruct"))
    _randomise_adapters(built.model)
    built.model.eval()
    ids, pixels = _batch(built.model)
    with torch.no_grad():
        before = built.model(input_ids=ids, pixel_values=pixels).logits
        merge_adapters(built.model)
        after = built.model(input_ids=ids, pixel_values=pixels).logits
    assert not is_adapted(built.model.llm)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)


# ------------------------------------------------------------------ QLoRA


def _qlora_model(ws, tmp_path):
    recipe = validate_recipe(_lora_recipe(ws, tmp_path, mode="qlora"), "test")
    settings = lora_settings(recipe, "instruct")
    built = build_model(
        recipe.model, special_tokens=special_tokens_for(recipe), quantize_llm=settings
    )
    apply_stage(built.model, recipe.stages["instruct"].train, settings)
    _randomise_adapters(built.model)
    return built


@pytest.mark.skipif(QLORA_SKIP is not None, reason=f"QLoRA cannot run here: {QLORA_SKIP}")
def test_qlora_gradients_match_a_dequantised_reference(ws, tmp_path):
    """The AVX512-BF16 trap: a no-grad forward first (as eval or generate would do) must not
    change the gradients of the adapters, which must equal those of a full-precision model
    holding the dequantised weights."""
    import bitsandbytes as bnb

    from mllm.models.lora import dequantise_4bit_layer

    built = _qlora_model(ws, tmp_path)
    model = built.model
    layers = [m for m in model.llm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(not m.support_avx512bf16_for_cpu for m in layers)
    num_layers = model.llm.config.num_hidden_layers
    assert len(layers) == num_layers * 7  # every linear of the decoder, not the head
    ids, pixels = _batch(model)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, pixel_values=pixels)  # would repack the weights on such CPUs
    model.train()
    model.llm.eval()  # no LoRA dropout, so both models compute the same function

    def lora_grads(m):
        m.zero_grad()
        m(input_ids=ids, labels=ids, pixel_values=pixels).loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if "lora_" in n}

    quantised = lora_grads(model)
    # Reference: the same model with each 4-bit base layer replaced by its dequantised weights.
    for module in list(model.llm.modules()):
        if hasattr(module, "base_layer") and isinstance(module.base_layer, bnb.nn.Linear4bit):
            module.base_layer = dequantise_4bit_layer(module.base_layer, torch.float32)
    reference = lora_grads(model)
    assert quantised.keys() == reference.keys() and len(quantised) == 2 * len(layers)
    for name, grad in reference.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(quantised[name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(QLORA_SKIP is not None, reason=f"QLoRA cannot run here: {QLORA_SKIP}")
def test_qlora_stage_trains_saves_and_merges(ws, tmp_path):
    raw = _lora_recipe(ws, tmp_path / "run", mode="qlora", max_steps=2)
    raw["stages"]["align"]["max_steps"] = 1
    run_train([str(write_recipe(tmp_path / "recipe.yaml", raw))])
    final = tmp_path / "run/instruct/final"
    saved = load_file(final / "model.safetensors")
    assert all("lora_" in k for k in saved if k.startswith("llm."))
    assert read_manifest(final)["adapters"]["llm"]["mode"] == "qlora"
    rows = read_metrics(tmp_path / "run/instruct/metrics.jsonl")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    loaded = load_mllm_checkpoint(final)
    ids, pixels = _batch(loaded.built.model)
    reference = _logits(loaded, ids, pixels)
    from mllm.merge import merge_checkpoint

    merged = load_mllm_checkpoint(merge_checkpoint(final, tmp_path / "merged"))
    assert not any("lora" in n for n, _ in merged.built.model.named_parameters())
    assert "quantization_config" not in json.loads(
        (tmp_path / "merged/llm/config.json").read_text()
    )
    torch.testing.assert_close(_logits(merged, ids, pixels), reference, rtol=0, atol=1e-4)


@pytest.mark.skipif(QLORA_SKIP is not None, reason=f"QLoRA cannot run here: {QLORA_SKIP}")
def test_4bit_layers_never_repack_for_avx512_bf16():
    """The guard itself, for machines where the CPU lacks AVX512-BF16 (the flag starts off)."""
    import bitsandbytes as bnb

    from mllm.models.llm import disable_cpu_repacking

    model = torch.nn.Sequential(bnb.nn.Linear4bit(64, 64), torch.nn.Linear(64, 2))
    model[0].support_avx512bf16_for_cpu = True
    assert disable_cpu_repacking(model) == 1
    assert model[0].support_avx512bf16_for_cpu is False
