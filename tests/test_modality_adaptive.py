"""mPLUG-Owl2's modality-adaptive LLM: image tokens take their own norms and K/V projections.

Checked on tiny random models in fp32: with the copies equal to the originals the model is the
plain one; image and text positions reach different parameters; the KV cache, packing, LoRA
(with merge), ``train.llm: visual``, save/load and ZeRO-3 keep that.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from training_utils import (
    REPO,
    make_workspace,
    run_train,
    tiny_recipe,
    workspace_dataset,
    write_recipe,
)

from mllm.checkpoint import load_mllm_checkpoint, read_manifest
from mllm.config import RecipeError, load_recipe, validate_recipe
from mllm.data import DataCollator, get_template
from mllm.data.packing import PackingCollator
from mllm.data.recipe_templates import special_tokens_for
from mllm.models import build_model
from mllm.models.lora import is_adapted, lora_settings, merge_adapters
from mllm.models.modality_adaptive import (
    ADAPTED_MODULES,
    ModalitySplit,
    modality_positions,
    visual_parameters,
)
from mllm.training.setup import enable_gradient_checkpointing
from mllm.training.stage import apply_stage


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def _recipe(ws, out, adaptive=True, **instruct):
    raw = tiny_recipe(ws, out, instruct=instruct or None)
    raw["model"]["llm"]["modality_adaptive"] = adaptive
    return raw


def _build(ws, tmp_path, adaptive=True, **instruct):
    recipe = validate_recipe(_recipe(ws, tmp_path, adaptive, **instruct), "test")
    torch.manual_seed(0)
    return recipe, build_model(recipe.model, special_tokens=special_tokens_for(recipe))


def _batch(model, text_only=False):
    """Two rows: one image (placeholders after BOS) and some text; [2, seq] ids, pixels."""
    n = 0 if text_only else model.num_image_tokens
    image = [model.image_token_id] * n
    ids = torch.tensor([[1, *image, 5, 6, 7, 8, 2], [1, *image, 9, 10, 11, 12, 2]])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return ids, (None if text_only else pixels)


def _perturb_copies(model, seed=0):
    """Make the visual copies differ from the text weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in visual_parameters(model.llm):
            param.add_(0.2 * torch.randn(param.shape, generator=generator))


def test_every_decoder_layer_is_split_with_copies_equal_to_the_text_weights(ws, tmp_path):
    _, built = _build(ws, tmp_path)
    layers = built.model.llm.model.layers
    for layer in layers:
        for path in ADAPTED_MODULES:
            split = layer.get_submodule(path)
            assert isinstance(split, ModalitySplit)
            for (name, text), (_, visual) in zip(
                split.text.named_parameters(), split.visual.named_parameters(), strict=True
            ):
                assert text is not visual and torch.equal(text, visual), name
        # Q, O and the MLP stay shared: one module each.
        assert isinstance(layer.self_attn.q_proj, torch.nn.Linear)
        assert isinstance(layer.mlp.down_proj, torch.nn.Linear)
    assert len(visual_parameters(built.model.llm)) == 4 * len(layers)  # 2 norms + K, V (no bias)


def test_copies_equal_to_the_originals_give_the_plain_models_logits(ws, tmp_path):
    _, plain = _build(ws, tmp_path, adaptive=False)
    _, adaptive = _build(ws, tmp_path)
    assert adaptive.model.modality_adaptive and not plain.model.modality_adaptive
    adaptive.model.projector.load_state_dict(plain.model.projector.state_dict())
    ids, pixels = _batch(plain.model)
    with torch.no_grad():
        expected = plain.model.eval()(ids, pixel_values=pixels).logits
        got = adaptive.model.eval()(ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_image_and_text_positions_take_different_parameters(ws, tmp_path):
    _, built = _build(ws, tmp_path)
    model = built.model.eval()
    ids, pixels = _batch(model)
    text_ids, _ = _batch(model, text_only=True)
    with torch.no_grad():
        before = model(ids, pixel_values=pixels).logits
        text_before = model(text_ids).logits
        _perturb_copies(model)
        after = model(ids, pixel_values=pixels).logits
        text_after = model(text_ids).logits
    n = model.num_image_tokens
    # Causal attention: positions before the first image token cannot see the change.
    torch.testing.assert_close(after[:, :1], before[:, :1], rtol=0, atol=0)
    assert (after[:, 1:] - before[:, 1:]).abs().amax() > 1e-3
    # Without images the visual copies are never used.
    torch.testing.assert_close(text_after, text_before, rtol=0, atol=0)

    # Gradients: the copies learn from image positions only, the text weights from the rest.
    model.train()
    model.llm.requires_grad_(True)
    labels = ids.clone()
    labels[:, : 1 + n] = -100

    def grads(**batch) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        return {k: p.grad for k, p in model.llm.named_parameters() if p.grad is not None}

    text_grads = grads(input_ids=text_ids, labels=text_ids)
    copies = {name for name, _ in visual_parameters(model.llm)}
    assert copies and all(text_grads[name].abs().amax() == 0 for name in copies)
    image_grads = grads(input_ids=ids, pixel_values=pixels, labels=labels)
    assert all(image_grads[name].abs().amax() > 0 for name in copies)
    # An image-only row (every position an image token) leaves the text K/V without gradient.
    only_image = torch.full((1, n), model.image_token_id)
    outputs = model(only_image, pixel_values=pixels[:1])
    model.zero_grad(set_to_none=True)
    outputs.logits.sum().backward()
    for layer in model.llm.model.layers:
        assert layer.self_attn.k_proj.text.weight.grad.abs().amax() == 0
        assert layer.self_attn.k_proj.visual.weight.grad.abs().amax() > 0


def test_generation_with_a_kv_cache_treats_new_tokens_as_text(ws, tmp_path):
    _, built = _build(ws, tmp_path)
    model = built.model.eval()
    _perturb_copies(model)
    ids, pixels = _batch(model)
    with torch.no_grad():
        embeds = model.embed(ids, pixels)
        with model.modality_context(ids):
            cached = model.llm.generate(
                inputs_embeds=embeds, max_new_tokens=5, min_new_tokens=5, do_sample=False
            )
        # The same greedy steps without a cache: the whole sequence each time.
        eos = model.llm.generation_config.eos_token_id
        sequence, is_image = embeds, ids == model.image_token_id
        tokens = []
        for _ in range(5):
            with modality_positions(model.llm, is_image):
                logits = model.llm(inputs_embeds=sequence, use_cache=False).logits[:, -1]
            logits[:, eos] = -float("inf")  # as min_new_tokens does
            token = logits.argmax(-1, keepdim=True)  # [batch, 1]
            tokens.append(token)
            sequence = torch.cat([sequence, model.llm.get_input_embeddings()(token)], dim=1)
            is_image = torch.cat([is_image, torch.zeros_like(token, dtype=torch.bool)], dim=1)
    assert torch.equal(cached, torch.cat(tokens, dim=1))


def test_gradient_checkpointing_replays_with_the_same_modality_mask(ws, tmp_path):
    """The replay in backward runs after the forward's block has ended: same gradients."""
    grads = []
    for checkpointing in (False, True):
        recipe, built = _build(ws, tmp_path)
        _perturb_copies(built.model)
        apply_stage(built.model, recipe.stages["instruct"].train)
        built.model.train()
        if checkpointing:
            enable_gradient_checkpointing(built.model)
        ids, pixels = _batch(built.model)
        built.model(input_ids=ids, labels=ids, pixel_values=pixels).loss.backward()
        grads.append({k: p.grad for k, p in built.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(".visual." in name for name in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_packed_rows_route_the_same_positions_as_the_padded_batch(ws, tmp_path):
    _, built = _build(ws, tmp_path)
    _perturb_copies(built.model)
    dataset = workspace_dataset(ws, built)
    with_image = [i for i, flag in enumerate(dataset.has_image) if flag][:3]
    text_only = [i for i, flag in enumerate(dataset.has_image) if not flag][:1]
    samples = [dataset[i] for i in with_image + text_only]
    pad = built.tokenizer.pad_token_id
    padded = DataCollator(pad_token_id=pad)(samples)
    packed = PackingCollator(pad_token_id=pad, max_length=256)(samples)
    packed.pop("num_tokens")
    assert packed["input_ids"].shape[0] < len(samples)
    model = built.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**packed).loss, model(**padded).loss, rtol=1e-6, atol=1e-6)


def test_train_llm_visual_trains_only_the_copies(ws, tmp_path):
    recipe, built = _build(ws, tmp_path, train={"vision": "frozen", "llm": "visual"})
    table = apply_stage(built.model, recipe.stages["instruct"].train)
    trained = {n for n, p in built.model.llm.named_parameters() if p.requires_grad}
    assert trained == {name for name, _ in visual_parameters(built.model.llm)}
    assert table["llm"][0] == sum(p.numel() for _, p in visual_parameters(built.model.llm))
    # The option needs the copies.
    raw = _recipe(ws, tmp_path, adaptive=False, train={"llm": "visual"})
    with pytest.raises(RecipeError, match="modality_adaptive"):
        validate_recipe(raw, "test")


def test_lora_adapts_each_copy_and_merges_exactly(ws, tmp_path):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj"]}
    recipe, built = _build(ws, tmp_path, train={"llm": "lora"}, lora=lora)
    model = built.model
    apply_stage(model, recipe.stages["instruct"].train, lora_settings(recipe, "instruct"))
    names = {n for n, _ in model.llm.named_modules()}
    assert any(n.endswith("self_attn.k_proj.text.lora_A") for n in names)
    assert any(n.endswith("self_attn.k_proj.visual.lora_A") for n in names)
    assert any(n.endswith("self_attn.q_proj.lora_A") for n in names)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    ids, pixels = _batch(model)
    model.eval()
    with torch.no_grad():
        adapted = model(ids, pixel_values=pixels).logits
        merge_adapters(model)
        merged = model(ids, pixel_values=pixels).logits
    assert not is_adapted(model.llm) and model.modality_adaptive
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)


def test_two_stages_save_load_and_merge(ws, tmp_path):
    """Owl2's stages in small: copies only, then LoRA; each output reloads exactly, and
    ``mllm merge`` writes a plain LLM folder plus the copies, with the same logits."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["k_proj", "v_proj"]}
    raw = tiny_recipe(
        ws,
        tmp_path / "run",
        align={"train": {"vision": "frozen", "projector": "full", "llm": "visual"}},
        instruct={"train": {"llm": "lora"}, "lora": lora, "max_steps": 2},
    )
    raw["model"]["llm"]["modality_adaptive"] = True
    raw["stages"]["instruct"]["data"]["template"] = "mplug_owl2"
    run_train([str(write_recipe(tmp_path / "recipe.yaml", raw))])

    align = tmp_path / "run/align/final"
    saved = load_file(align / "model.safetensors")
    loaded = load_mllm_checkpoint(align)
    params = dict(loaded.built.model.named_parameters())
    for name, tensor in saved.items():
        torch.testing.assert_close(params[name].detach(), tensor, rtol=0, atol=0)
    # Of the LLM only the copies trained, so only they are saved; the rest is the base's.
    copies = {f"llm.{name}" for name, _ in visual_parameters(loaded.built.model.llm)}
    assert {k for k in saved if k.startswith("llm.")} == copies
    layer = "llm.model.layers.0.self_attn.k_proj"
    assert not torch.equal(saved[f"{layer}.visual.weight"], params[f"{layer}.text.weight"])

    final = tmp_path / "run/instruct/final"
    assert read_manifest(final)["adapters"]["llm"]["base"] == "saved"  # copies trained in align
    loaded = load_mllm_checkpoint(final)
    ids, pixels = _batch(loaded.built.model)
    with torch.no_grad():
        reference = loaded.built.model(ids, pixel_values=pixels).logits
    from mllm.cli import main as cli

    assert cli(["merge", str(final), "--out", str(tmp_path / "merged")]) == 0
    merged = load_mllm_checkpoint(tmp_path / "merged")
    with torch.no_grad():
        got = merged.built.model(ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)
    from transformers import AutoModelForCausalLM

    # The LLM folder is a plain Llama: every tensor it has is one transformers expects.
    plain, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "merged/llm", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_mplug_owl2_recipe_has_owl2s_settings():
    recipe = load_recipe(REPO / "recipes/mplug_owl2.yaml")
    assert (
        recipe.model.llm.modality_adaptive and recipe.model.llm.path == "meta-llama/Llama-2-7b-hf"
    )
    assert recipe.model.vision.path == "openai/clip-vit-large-patch14"
    projector = recipe.model.projector
    assert (projector.name, projector.num_queries, projector.num_layers) == ("abstractor", 64, 6)
    pretrain, instruct = recipe.stages["pretrain"], recipe.stages["instruct"]
    assert pretrain.train.modes() == {"vision": "full", "projector": "full", "llm": "full"}
    assert pretrain.train.llm == "visual"  # of the LLM, only the visual copies train
    assert (pretrain.optim.lr, pretrain.global_batch_size, pretrain.max_steps) == (
        1e-4,
        8192,
        42500,
    )
    assert instruct.train.modes() == {"vision": "frozen", "projector": "full", "llm": "full"}
    assert (instruct.optim.lr, instruct.global_batch_size, instruct.epochs) == (2e-5, 256, 1)
    assert instruct.data.template == "mplug_owl2" and instruct.init_from == "stage:pretrain"


def test_mplug_owl2_template_renders_owl2s_conversation():
    template = get_template("mplug_owl2")
    turns = [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "Colour?"},
        {"from": "gpt", "value": "Black."},
    ]
    segments = template.render(turns)
    text = "".join(s.text for s in segments)
    assert (
        text
        == "USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT: Black.</s>"
    )
    assert [s.text for s in segments if s.is_target] == [" A cat.</s>", " Black.</s>"]
    prompt = template.generation_prompt(turns[:1])
    assert prompt == "USER: <image>\nWhat is it? ASSISTANT:"


@pytest.mark.distributed
def test_two_process_zero3_trains_and_reloads(ws, tmp_path):
    settings = {
        "zero_config": str(REPO / "zero_configs/zero3.json"),
        "max_steps": 2,
        "micro_batch_size": 1,
    }
    raw = tiny_recipe(
        ws,
        tmp_path / "run",
        align={**settings, "train": {"vision": "frozen", "projector": "full", "llm": "visual"}},
        instruct=settings,
    )
    raw["model"]["llm"]["modality_adaptive"] = True
    run_train([str(write_recipe(tmp_path / "recipe.yaml", raw))], nproc=2, launcher="deepspeed")
    for stage in ("align", "instruct"):
        # Every stage output loads in one process without DeepSpeed, its tensors exactly.
        final = load_file(tmp_path / f"run/{stage}/final/model.safetensors")
        params = dict(
            load_mllm_checkpoint(tmp_path / f"run/{stage}/final").built.model.named_parameters()
        )
        for name, tensor in final.items():
            torch.testing.assert_close(params[name].detach(), tensor, rtol=0, atol=0)
        layer = "llm.model.layers.0.self_attn.v_proj"
        visual, text = params[f"{layer}.visual.weight"], params[f"{layer}.text.weight"]
        # Copied from the gathered text weights, then two steps apart.
        assert not torch.equal(visual, text) and (visual - text).abs().amax() < 0.1
