"""Token-reducing projectors (Q-Former, abstractors, LDP, concat): shapes, gradients, checkpoints, freezing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, Blip2QFormerConfig, Blip2QFormerModel

from mllm.config import RecipeError, load_recipe, validate_recipe
from mllm.config.schema import TrainConfig
from mllm.errors import UsageError
from mllm.models import build_model
from mllm.models.catalog import PROJECTORS
from mllm.models.projectors.positions import feature_positions, sincos_2d
from mllm.models.projectors.qformer import QFormerProjector
from mllm.models.projectors.qformer_weights import (
    load_qformer_state_dict,
    map_qformer_key,
    read_checkpoint,
)
from mllm.tiny import make_tiny_models
from mllm.training.stage import apply_stage
from mllm.training.trainer import Trainer

VISION_DIM, LLM_DIM, PATCHES = 24, 16, 16  # a 4x4 grid of 24-wide features
QFORMER = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 48}
# name, options, tokens per image
CASES = [
    ("qformer", {**QFORMER, "num_queries": 5, "cross_attention_every": 1}, 5),
    ("qformer", {**QFORMER, "num_queries": 5, "cross_attention_every": 2, "dropout": 0.0}, 5),
    ("abstractor", {**QFORMER, "num_queries": 6}, 6),
    ("abstractor", {**QFORMER, "hidden_size": VISION_DIM, "append_eos": True}, 65),
    ("qformer", {**QFORMER, "num_queries": 5, "feature_position": "sincos_2d"}, 5),
    ("abstractor", {**QFORMER, "num_queries": 6, "feature_position": "sincos_2d"}, 6),
    ("abstractor", {**QFORMER, "num_queries": 6, "feature_position": "sincos_2d_grid"}, 6),
    ("c_abstractor", {"num_queries": 4, "hidden_size": 8, "depth": 1}, 4),
    ("ldp", {"grid": 2}, 4),
    ("concat", {"merge": 4}, 4),
    ("concat", {"merge": 4, "layout": "grid", "norm": True}, 4),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


def make_projector(name: str, options: dict, seed: int = 0):
    entry = PROJECTORS.get(name)
    config = entry.config_class(name=name, **options)
    torch.manual_seed(seed)
    return entry.target(config, vision_dim=VISION_DIM, llm_dim=LLM_DIM, num_patches=PATCHES)


def qformer(**options) -> QFormerProjector:
    return make_projector("qformer", {**QFORMER, "num_queries": 5, **options})


@pytest.mark.parametrize(("name", "options", "tokens"), CASES, ids=IDS)
def test_shape_and_token_count(name, options, tokens):
    projector = make_projector(name, options)
    assert projector.num_output_tokens == tokens
    assert projector(torch.randn(3, PATCHES, VISION_DIM)).shape == (3, tokens, LLM_DIM)


@pytest.mark.parametrize(("name", "options", "tokens"), CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, options, tokens):
    projector = make_projector(name, options).train()
    features = torch.randn(2, PATCHES, VISION_DIM, requires_grad=True)
    projector(features).pow(2).mean().backward()
    for param_name, param in projector.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    assert features.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "options", "tokens"), CASES, ids=IDS)
def test_deterministic(name, options, tokens):
    a, b = make_projector(name, options).eval(), make_projector(name, options).eval()
    features = torch.randn(2, PATCHES, VISION_DIM)
    torch.testing.assert_close(a(features), b(features), rtol=0, atol=0)
    # Each image is projected on its own: batching does not mix images.
    torch.testing.assert_close(a(features)[1:], a(features[1:]))


def trained_looking(projector: torch.nn.Module) -> torch.nn.Module:
    """Weights of a trained scale: BERT's 0.02 init leaves cross-attention a ~1e-4 effect."""
    with torch.no_grad():
        for parameter in projector.parameters():
            parameter.normal_(0, 0.3, generator=torch.Generator().manual_seed(parameter.numel()))
    return projector.eval()


@pytest.mark.parametrize("name", ["qformer", "abstractor"])
def test_queries_see_where_patches_are_only_with_position_embeddings(name):
    """Without positions, queries read the patches as a set: shuffling them changes nothing,
    so where a shape sits cannot reach the LLM. With sin-cos positions it does."""
    features = torch.randn(2, PATCHES, VISION_DIM)
    shuffled = features[:, torch.randperm(PATCHES, generator=torch.Generator().manual_seed(0))]
    options = {**QFORMER, "num_queries": 4, "dropout": 0.0}
    as_set = trained_looking(make_projector(name, options))
    torch.testing.assert_close(as_set(features), as_set(shuffled), rtol=1e-5, atol=1e-5)
    placed = trained_looking(make_projector(name, {**options, "feature_position": "sincos_2d"}))
    assert (placed(features) - placed(shuffled)).abs().max() > 1e-2
    assert "feature_position" not in placed.state_dict()  # fixed, rebuilt from the config


def test_sincos_2d_rows_columns_and_cls():
    grid = sincos_2d(16, 8)  # 4x4 patches; channels 0-3 the row, 4-7 the column
    assert grid.shape == (16, 8)
    torch.testing.assert_close(grid[0, :4], grid[3, :4])  # same row
    torch.testing.assert_close(grid[0, 4:], grid[12, 4:])  # same column
    assert not torch.allclose(grid[0], grid[5])
    with_cls = sincos_2d(17, 8)
    assert with_cls[0].abs().sum() == 0 and torch.equal(with_cls[1:], grid)
    with pytest.raises(ValueError, match="square"):
        sincos_2d(15, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(16, 6)


def test_grid_based_positions_vary_in_more_channels_on_a_small_grid():
    """Base 10000 leaves most channels of a 4x4 grid nearly constant; base = side spreads the
    frequencies over the grid (``feature_position: sincos_2d_grid``)."""
    standard, grid = (
        feature_positions("sincos_2d", 16, 256),
        feature_positions("sincos_2d_grid", 16, 256),
    )
    assert torch.equal(standard, sincos_2d(16, 256))
    varying = [(p.view(4, 4, 256).std(dim=0).mean(dim=0) > 0.05).sum() for p in (standard, grid)]
    assert varying[1] > 2 * varying[0]
    torch.testing.assert_close(grid[0, :64], grid[3, :64])  # still: first half the row
    assert feature_positions("none", 16, 256) is None


def test_qformer_cross_attends_every_other_block_like_blip2():
    blocks = qformer(num_layers=4, cross_attention_every=2).qformer.layers
    assert [block.cross_attn is not None for block in blocks] == [True, False, True, False]


def test_qformer_matches_transformers_blip2(tmp_path):
    """Loaded from a transformers Blip-2 state dict, the projector computes what Blip-2 does."""
    hf_config = Blip2QFormerConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        encoder_hidden_size=VISION_DIM,
        cross_attention_frequency=2,
    )
    torch.manual_seed(1)
    hf = Blip2QFormerModel(hf_config).eval()
    query_tokens, projection = torch.randn(1, 5, 32), torch.nn.Linear(32, LLM_DIM)
    state = {f"qformer.{k}": v for k, v in hf.state_dict().items()}
    state |= {"query_tokens": query_tokens, "vision_model.post_layernorm.weight": torch.ones(3)}
    state |= {f"language_projection.{k}": v for k, v in projection.state_dict().items()}
    state["language_model.lm_head.weight"] = torch.zeros(2, 2)
    projector = qformer(num_layers=3).eval()
    report = load_qformer_state_dict(projector, state, projection=True)
    assert report.unused == ["language_model.lm_head.weight"]
    assert report.mismatched == [
        "qformer.vision_norm.weight: vision_model.post_layernorm.weight (3,) vs ours (24,)"
    ]
    assert report.missing == ["qformer.vision_norm.weight", "qformer.vision_norm.bias"]
    features = torch.randn(2, PATCHES, VISION_DIM)
    with torch.no_grad():
        normed = torch.nn.functional.layer_norm(features, (VISION_DIM,))
        hidden = hf(query_embeds=query_tokens.expand(2, -1, -1), encoder_hidden_states=normed)
        expected = projection(hidden.last_hidden_state)
        torch.testing.assert_close(projector(features), expected)
    # The same weights from a safetensors file, through the recipe option.
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "blip2.safetensors")
    path = str(tmp_path / "blip2.safetensors")
    reloaded = qformer(num_layers=3, qformer_weights=path, load_projection=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(features), expected)


def test_lavis_keys_map_and_load_from_a_wrapped_torch_file(tmp_path):
    assert map_qformer_key("Qformer.bert.encoder.layer.2.crossattention.self.key.weight") == (
        "qformer.layers.2.cross_attn.k.weight"
    )
    assert map_qformer_key("Qformer.bert.encoder.layer.0.output_query.LayerNorm.bias") == (
        "qformer.layers.0.ffn.norm.bias"
    )
    assert (
        map_qformer_key("Qformer.bert.embeddings.LayerNorm.weight") == "qformer.query_norm.weight"
    )
    assert map_qformer_key("ln_vision.bias") == "qformer.vision_norm.bias"
    assert map_qformer_key("llama_proj.weight") == "out_proj.weight"
    # The text-only FFN and word embeddings have no counterpart in a Q-Former checkpoint.
    assert map_qformer_key("Qformer.bert.encoder.layer.0.intermediate.dense.weight") is None
    assert map_qformer_key("Qformer.bert.embeddings.word_embeddings.weight") is None
    source = qformer()
    lavis = {"query_tokens": source.qformer.query_tokens.detach().clone()}
    lavis["ln_vision.weight"] = torch.full((VISION_DIM,), 2.0)
    lavis["Qformer.bert.encoder.layer.1.attention.self.value.bias"] = torch.full((32,), 3.0)
    torch.save({"model": lavis}, tmp_path / "blip2_pretrained.pth")
    target = qformer(qformer_weights=str(tmp_path / "blip2_pretrained.pth"))
    torch.testing.assert_close(target.qformer.query_tokens, source.qformer.query_tokens)
    assert (target.qformer.vision_norm.weight == 2).all()
    assert (target.qformer.layers[1].self_attn.v.bias == 3).all()
    # A checkpoint's projection to its own LLM is left out unless asked for.
    lavis["llama_proj.weight"] = torch.ones(LLM_DIM, 32)
    report = load_qformer_state_dict(target, lavis)
    assert "llama_proj.weight" in report.unused and "out_proj.weight" in report.missing
    report = load_qformer_state_dict(target, lavis, projection=True)
    assert "out_proj.weight" in report.loaded and (target.out_proj.weight == 1).all()


def test_qformer_weights_that_match_nothing_are_an_error(tmp_path):
    save_file({"vision_model.embeddings.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="qformer_weights: no Q-Former weights"):
        qformer(qformer_weights=str(tmp_path / "other.safetensors"))
    with pytest.raises(FileNotFoundError, match="qformer_weights"):
        read_checkpoint(str(tmp_path / "missing.pth"))


def test_qformer_initialises_from_a_local_bert_folder(tmp_path):
    bert_config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=16,
    )
    torch.manual_seed(2)
    BertModel(bert_config).save_pretrained(tmp_path / "bert")
    bert = BertModel.from_pretrained(tmp_path / "bert").state_dict()
    projector = qformer(init_from=str(tmp_path / "bert"))
    block = projector.qformer.layers[1]
    torch.testing.assert_close(
        block.self_attn.q.weight, bert["encoder.layer.1.attention.self.query.weight"]
    )
    torch.testing.assert_close(
        block.ffn.up.weight, bert["encoder.layer.1.intermediate.dense.weight"]
    )
    torch.testing.assert_close(
        projector.qformer.query_norm.weight, bert["embeddings.LayerNorm.weight"]
    )
    # Cross-attention and the output map are new (random), as in BLIP-2.
    untouched = qformer()
    torch.testing.assert_close(
        projector.qformer.layers[0].cross_attn.k.weight,
        untouched.qformer.layers[0].cross_attn.k.weight,
    )
    with pytest.raises(FileNotFoundError, match="init_from"):
        qformer(init_from=str(tmp_path / "bert-base-uncased"))


def test_qformer_options_are_validated():
    config_class = PROJECTORS.get("qformer").config_class
    with pytest.raises(ValueError, match="num_queries"):
        config_class(name="qformer", num_queries=0)
    with pytest.raises(ValueError, match="not a multiple of num_heads"):
        config_class(name="qformer", hidden_size=30, num_heads=4)


def test_c_abstractor_needs_a_square_grid():
    with pytest.raises(ValueError, match="select: patch"):
        PROJECTORS.get("c_abstractor").target(
            PROJECTORS.get("c_abstractor").config_class(name="c_abstractor", num_queries=4),
            vision_dim=VISION_DIM,
            llm_dim=LLM_DIM,
            num_patches=17,
        )


# ---- assembled models ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"), image_size=32, patch_size=8)


def recipe(dirs, projector: dict, train: dict | None = None, **stage_options):
    raw = {
        "name": "t",
        "output_dir": "unused",
        "model": {
            "vision": {"name": "clip", "path": str(dirs["clip"])},
            "projector": projector,
            "llm": {"path": str(dirs["llama"]), "family": "llama"},
        },
        "stages": {
            "s": {
                "data": {"path": "unused.json", "template": "vicuna_v1"},
                "train": train or {},
                "optim": {"lr": 1e-3},
                "global_batch_size": 1,
                "micro_batch_size": 1,
                **stage_options,
            }
        },
    }
    return validate_recipe(raw, "test")


@pytest.mark.parametrize(
    "projector",
    [
        {"name": "qformer", **QFORMER, "num_queries": 4},
        {"name": "abstractor", **QFORMER, "num_queries": 6, "append_eos": True},
        {"name": "c_abstractor", "num_queries": 4, "hidden_size": 8, "depth": 1},
        {"name": "ldp", "grid": 2},
        {"name": "concat", "merge": 4},
    ],
    ids=lambda p: p["name"],
)
def test_assembled_model_forward_backward(tiny_dirs, projector):
    built = build_model(recipe(tiny_dirs, projector).model, special_tokens=["</s>"])
    model = built.model.train()
    n = model.num_image_tokens
    assert n == built.model.projector.num_output_tokens
    ids = torch.tensor([[1, 5] + [model.image_token_id] * n + [6, 7, 2]])
    out = model(input_ids=ids, labels=ids, pixel_values=torch.randn(1, 3, 32, 32))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())


def _qformer_eval(model) -> bool:
    return not any(module.training for module in model.projector.qformer.modules())


def test_stage_frozen_modules_train_only_the_qformer_output(tiny_dirs):
    # MiniGPT-4: ``projector: full`` with the Q-Former kept frozen, decided by the stage alone.
    projector = {"name": "qformer", **QFORMER, "num_queries": 4}  # dropout 0.1: eval matters
    config = recipe(tiny_dirs, projector, frozen_modules=["projector.qformer"])
    stage = config.stages["s"]
    built = build_model(config.model)
    table = apply_stage(built.model, stage.train, frozen_modules=stage.frozen_modules)
    trainable = {name for name, p in built.model.named_parameters() if p.requires_grad}
    assert trainable == {"projector.out_proj.weight", "projector.out_proj.bias"}
    linear = sum(p.numel() for p in built.model.projector.out_proj.parameters())
    assert table["projector"][0] == linear < table["projector"][1]
    assert built.model.projector.training and _qformer_eval(built.model)
    # The trainer switches the whole model to train mode (start, after validation), then
    # hands the modes back to the stage.
    built.model.train()
    trainer = SimpleNamespace(engine=built.model, built=built, stage=stage, stage_name="s")
    Trainer._train_mode(trainer)
    assert built.model.projector.training and built.model.projector.out_proj.training
    assert _qformer_eval(built.model) and not built.model.vision.training


def test_a_model_option_no_longer_freezes_the_qformer(tiny_dirs):
    built = build_model(recipe(tiny_dirs, {"name": "qformer", **QFORMER, "num_queries": 4}).model)
    apply_stage(built.model, TrainConfig(vision="frozen", projector="full", llm="frozen"))
    assert all(p.requires_grad for p in built.model.projector.parameters())
    assert all(module.training for module in built.model.projector.modules())


def test_frozen_module_that_does_not_exist_lists_the_names_there(tiny_dirs):
    built = build_model(recipe(tiny_dirs, {"name": "qformer", **QFORMER, "num_queries": 4}).model)
    train = TrainConfig(vision="frozen", projector="full", llm="frozen")
    key = "stages.s.frozen_modules"
    with pytest.raises(UsageError) as info:
        apply_stage(built.model, train, frozen_modules=["projector.qfromer"], key=key)
    message = str(info.value)
    assert message.startswith(f"{key}: 'projector.qfromer'")
    assert "projector.qformer, projector.out_proj" in message
    with pytest.raises(UsageError, match=r"qformer has no 'blocks'.*projector\.qformer\.layers"):
        apply_stage(built.model, train, frozen_modules=["projector.qformer.blocks"])
    with pytest.raises(UsageError, match="stages.S.frozen_modules"):
        apply_stage(built.model, train, frozen_modules=["qformer"])


def test_frozen_modules_must_sit_in_a_component_the_stage_trains(tiny_dirs):
    projector = {"name": "qformer", **QFORMER, "num_queries": 4}
    with pytest.raises(RecipeError) as info:
        recipe(
            tiny_dirs,
            projector,
            train={"vision": "frozen", "projector": "full", "llm": "full"},
            frozen_modules=["projector.qformer", "vision.model", "qformer"],
        )
    message = str(info.value)
    assert "stages.s.frozen_modules.0" not in message
    assert "stages.s.frozen_modules.1: 'vision.model' is inside vision, which this stage" in message
    assert "stages.s.frozen_modules.2: 'qformer' must be a module inside a component" in message


def test_freeze_qformer_points_to_the_stage(tiny_dirs):
    projector = {"name": "qformer", **QFORMER, "num_queries": 4, "freeze_qformer": True}
    with pytest.raises(RecipeError) as info:
        recipe(tiny_dirs, projector)
    message = str(info.value)
    assert "model.projector.freeze_qformer: removed" in message
    assert "stages.S.frozen_modules: [projector.qformer]" in message
    # ``false`` changed nothing (recipes saved by older checkpoints say it): still loads.
    recipe(tiny_dirs, {**projector, "freeze_qformer": False})


def test_bad_projector_option_names_the_key(tiny_dirs):
    with pytest.raises(RecipeError) as info:
        recipe(tiny_dirs, {"name": "qformer", "num_heads": 5})
    assert "model.projector" in str(info.value)


# ---- recipes ------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_minigpt4_recipe_trains_only_the_linear_layer_in_both_stages(monkeypatch):
    monkeypatch.chdir(REPO)
    recipe_ = load_recipe(REPO / "recipes/minigpt4.yaml")
    projector = recipe_.model.projector
    assert (projector.name, projector.num_queries, projector.cross_attention_every) == (
        "qformer",
        32,
        2,
    )
    assert not projector.load_projection
    assert recipe_.model.vision.name == "eva_clip"
    for stage in recipe_.stages.values():
        assert (stage.train.vision, stage.train.projector, stage.train.llm) == (
            "frozen",
            "full",
            "frozen",
        )
        assert stage.frozen_modules == ["projector.qformer"]
    align, instruct = recipe_.stages["align"], recipe_.stages["instruct"]
    assert (align.optim.lr, align.max_steps, align.global_batch_size) == (1e-4, 20000, 256)
    assert (instruct.optim.lr, instruct.max_steps, instruct.global_batch_size) == (3e-5, 1000, 12)


def test_mplug_owl_recipe_uses_the_abstractor(monkeypatch):
    monkeypatch.chdir(REPO)
    recipe_ = load_recipe(REPO / "recipes/mplug_owl.yaml")
    projector = recipe_.model.projector
    assert (projector.name, projector.num_queries, projector.num_layers) == ("abstractor", 64, 6)
    assert recipe_.stages["align"].train.vision == "full"
    assert recipe_.stages["instruct"].train.llm == "lora"


@pytest.mark.parametrize("name", ["shapes_qformer", "shapes_abstractor", "minigpt4_qformer"])
def test_tiny_recipes_swap_only_the_projector(monkeypatch, name):
    monkeypatch.chdir(REPO)
    parent = load_recipe(REPO / "recipes/tiny/shapes_mlp.yaml")
    child = load_recipe(REPO / f"recipes/tiny/{name}.yaml")
    assert child.model.projector.name != "mlp" and child.model.projector.num_queries == 16
    tower = parent.model.vision
    if name == "shapes_abstractor":  # starts from the MLP run's tower, saved by `mllm merge`
        tower = tower.model_copy(update={"path": "runs/demo/merged/vision"})
        assert child.stages["align"].train.vision == "frozen"
    assert child.model.vision == tower and child.model.llm == parent.model.llm
    assert child.stages["align"].data == parent.stages["align"].data
    frozen = ["projector.qformer"] if name == "minigpt4_qformer" else []
    assert all(stage.frozen_modules == frozen for stage in child.stages.values())
