"""MiniGPT-v2's model side: the concat projector, EVA at 448 px, and the shipped recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mllm.config import load_recipe
from mllm.models.catalog import PROJECTORS
from mllm.models.vision.eva_clip import EvaClipConfig, EvaClipVisionTower
from mllm.tiny.models import make_tiny_vision_tower

REPO = Path(__file__).resolve().parents[1]
DIM, LLM_DIM = 3, 5


def concat(num_patches: int = 16, **options):
    entry = PROJECTORS.get("concat")
    config = entry.config_class(name="concat", **options)
    torch.manual_seed(0)
    return entry.target(config, vision_dim=DIM, llm_dim=LLM_DIM, num_patches=num_patches)


def numbered(num_patches: int = 16) -> torch.Tensor:
    """Token i of image b holds (b, i, i): the merged groups show which tokens they took."""
    tokens = torch.arange(num_patches, dtype=torch.float32)
    image = torch.stack([torch.zeros_like(tokens), tokens, tokens], dim=-1)  # [16, 3]
    return torch.stack([image, image + torch.tensor([1.0, 0, 0])])  # [2, 16, 3]


def test_sequence_layout_is_minigpt_v2s_view_of_four_consecutive_tokens():
    projector = concat(merge=4)
    assert projector.num_output_tokens == 4
    features = numbered()
    merged = projector.merged(features)  # [2, 4, 12]
    torch.testing.assert_close(merged, features.view(2, 4, 4 * DIM))  # MiniGPT-v2's encode_img
    assert merged[0, 1, 1::3].tolist() == [4, 5, 6, 7]  # one row of a 4x4 grid
    out = projector(features)
    assert out.shape == (2, 4, LLM_DIM)
    torch.testing.assert_close(out, projector.proj(features.view(2, 4, 12)))


def test_grid_layout_merges_square_blocks_of_the_patch_grid():
    projector = concat(merge=4, layout="grid")
    merged = projector.merged(numbered())
    # 4x4 grid, 2x2 blocks in raster order: block 1 is the top-right one, tokens 2, 3, 6, 7.
    assert [merged[0, block, 1::3].tolist() for block in range(4)] == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
        [8, 9, 12, 13],
        [10, 11, 14, 15],
    ]
    assert (merged[1, :, 0::3] == 1).all()  # images stay apart


def test_norm_standardises_each_token_like_a_fresh_layernorm():
    projector = concat(merge=2, norm=True)
    features = torch.randn(2, 16, DIM) * 5 + 3
    layer_norm = torch.nn.LayerNorm(DIM)  # weight 1, bias 0: MiniGPT-v2's frozen ln_vision
    expected = projector.proj(layer_norm(features).reshape(2, 8, 2 * DIM))
    torch.testing.assert_close(projector(features), expected)
    assert "norm" not in "".join(projector.state_dict())  # nothing to train or save


def test_feature_position_adds_fixed_sincos_positions_per_patch():
    from mllm.models.projectors.positions import feature_positions

    entry = PROJECTORS.get("concat")
    config = entry.config_class(name="concat", feature_position="sincos_2d_grid")
    projector = entry.target(config, vision_dim=8, llm_dim=LLM_DIM, num_patches=16)
    features = torch.randn(2, 16, 8)
    positions = feature_positions("sincos_2d_grid", 16, 8)
    expected = projector.proj((features + positions).reshape(2, 4, 32))
    torch.testing.assert_close(projector(features), expected)
    assert list(projector.state_dict()) == ["proj.weight", "proj.bias"]  # rebuilt, not saved


@pytest.mark.parametrize(
    ("num_patches", "options", "match"),
    [
        (17, {"merge": 4}, "not a multiple; change model.projector.merge"),
        (16, {"merge": 2, "layout": "grid"}, "must be a square"),
        (36, {"merge": 16, "layout": "grid"}, "not a multiple"),
        (32, {"merge": 4, "layout": "grid"}, "square patch grid"),
    ],
)
def test_token_counts_that_do_not_merge_name_the_key(num_patches, options, match):
    with pytest.raises(ValueError, match=match):
        concat(num_patches, **options)


def test_eva_tower_at_a_higher_resolution_interpolates_position_embeddings(tmp_path):
    folder = make_tiny_vision_tower(tmp_path / "eva", "eva_clip", image_size=32, patch_size=8)
    native = EvaClipVisionTower.from_pretrained(
        EvaClipConfig(name="eva_clip", path=str(folder), feature_layer=-1), torch.float32, "sdpa"
    ).eval()
    config = EvaClipConfig(name="eva_clip", path=str(folder), feature_layer=-1, image_size=64)
    tower = EvaClipVisionTower.from_pretrained(config, torch.float32, "sdpa").eval()
    assert (tower.image_size, tower.num_patches) == (64, 64)  # 8x8 patches, CLS dropped
    assert tower.image_processor.size == {"height": 64, "width": 64}
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # The same as transformers interpolating on every call.
        hidden = native.encoder(pixels, interpolate_pos_encoding=True, output_hidden_states=True)
        torch.testing.assert_close(tower(pixels), hidden.hidden_states[-1][:, 1:])
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        EvaClipVisionTower.from_pretrained(
            config.model_copy(update={"image_size": 60}), torch.float32, "sdpa"
        )


def test_minigpt_v2_recipe_has_the_published_design(monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(REPO / "recipes/minigpt_v2.yaml")
    vision, projector = recipe.model.vision, recipe.model.projector
    assert (vision.name, vision.image_size, vision.select, vision.feature_layer) == (
        "eva_clip",
        448,
        "patch",
        [-1],
    )
    assert (projector.name, projector.merge, projector.layout, projector.norm) == (
        "concat",
        4,
        "sequence",
        True,
    )
    assert recipe.model.llm.path.endswith("Llama-2-7b-chat-hf")
    assert list(recipe.stages) == ["pretrain", "multitask", "instruct"]
    settings = {
        name: (stage.max_steps, stage.global_batch_size, stage.optim.lr)
        for name, stage in recipe.stages.items()
    }
    assert settings == {
        "pretrain": (400000, 96, 1e-4),
        "multitask": (50000, 64, 1e-5),
        "instruct": (35000, 24, 1e-5),
    }
    for stage in recipe.stages.values():
        assert (stage.train.vision, stage.train.projector, stage.train.llm) == (
            "frozen",
            "full",
            "lora",
        )
        assert (stage.lora.r, stage.lora.alpha, stage.lora.target_modules) == (
            64,
            16,
            ["q_proj", "v_proj"],
        )
        assert stage.data.template == "minigpt_v2" and stage.optim.weight_decay == 0.05
    assert recipe.stages["multitask"].init_from == "stage:pretrain"
    assert recipe.stages["instruct"].init_from == "stage:multitask"


def test_tiny_grounding_recipe_swaps_in_the_concat_projector(monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(REPO / "recipes/tiny/grounding_concat.yaml")
    projector = recipe.model.projector
    assert (projector.name, projector.merge, projector.layout) == ("concat", 4, "sequence")
    assert projector.feature_position == "sincos_2d_grid"
    assert recipe.stages["ground"].data.template == "minigpt_v2"
