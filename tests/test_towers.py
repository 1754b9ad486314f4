"""Vision towers beyond CLIP/SigLIP: DINOv2 and EVA-CLIP from tiny saved folders."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessorPil,
    OPTConfig,
)

from mllm.config import validate_recipe
from mllm.config.schema import VisionTowerConfig
from mllm.data.images import prepare_image
from mllm.models import build_model
from mllm.models.projectors.qformer import QFormerProjector, QFormerProjectorConfig
from mllm.models.vision.eva_clip import EvaClipVisionTower
from mllm.tiny import make_tiny_llm, make_tiny_vision_tower


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {
        "dinov2": make_tiny_vision_tower(root / "dinov2", "dinov2", image_size=32, patch_size=8),
        "llama": make_tiny_llm(root / "llama", hidden_size=32, intermediate_size=64),
    }


def model_config(dirs, projector=None, **vision):
    raw = {
        "name": "t",
        "output_dir": "unused",
        "model": {
            "vision": {"name": "dinov2", "path": str(dirs["dinov2"]), **vision},
            "projector": projector or {"name": "linear"},
            "llm": {"path": str(dirs["llama"]), "family": "llama"},
        },
        "stages": {
            "s": {
                "data": {"path": "unused.json", "template": "vicuna_v1"},
                "optim": {"lr": 1e-3},
                "global_batch_size": 1,
                "micro_batch_size": 1,
            }
        },
    }
    return validate_recipe(raw, "test").model


@pytest.mark.parametrize(
    ("select", "layers", "patches", "width"),
    [("patch", [-2], 16, 64), ("cls_patch", [-1], 17, 64), ("patch", [-1, 1], 16, 128)],
)
def test_dinov2_feature_selection(dirs, select, layers, patches, width):
    tower = build_model(model_config(dirs, select=select, feature_layer=layers)).model.vision
    assert (tower.image_size, tower.num_patches, tower.hidden_size) == (32, patches, width)
    pixels = torch.randn(2, 3, 32, 32)
    features = tower(pixels)
    assert features.shape == (2, patches, width)
    hidden = tower.encoder(pixels, output_hidden_states=True).hidden_states
    start = 1 if select == "patch" else 0
    expected = torch.cat([hidden[i] for i in layers], dim=-1)[:, start:]
    torch.testing.assert_close(features, expected)


def test_dinov2_with_qformer_forward_backward(dirs):
    projector = {
        "name": "qformer",
        "num_queries": 4,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 48,
    }
    built = build_model(model_config(dirs, projector, feature_layer=[-1, -2]))
    model = built.model.train()
    assert model.projector.vision_dim == 128 and model.num_image_tokens == 4
    ids = torch.tensor([[1] + [model.image_token_id] * 4 + [5, 6, 2]])
    out = model(input_ids=ids, labels=ids, pixel_values=torch.randn(1, 3, 32, 32))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())
    # The processor makes images of the size the tower expects.
    pixels = built.image_processor(Image.new("RGB", (48, 40)), return_tensors="pt")
    assert pixels["pixel_values"].shape == (1, 3, 32, 32)


# ---- EVA-CLIP (BLIP-2's tower) ------------------------------------------------------------


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory):
    """A tiny transformers BLIP-2 checkpoint: EVA tower, Q-Former, projection, OPT."""
    vision = Blip2VisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4
    )
    vision.intermediate_size = 64
    qformer = Blip2QFormerConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        encoder_hidden_size=32,
    )
    text = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=4,
    )
    folder = tmp_path_factory.mktemp("blip2")
    torch.manual_seed(3)
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    BlipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_eva_clip_from_a_tiny_folder(tmp_path):
    folder = make_tiny_vision_tower(tmp_path / "eva", "eva_clip", image_size=32, patch_size=8)
    config = VisionTowerConfig(name="eva_clip", path=str(folder), feature_layer=[-1, -2])
    tower = EvaClipVisionTower.from_pretrained(config, torch.float32, "sdpa")
    assert (tower.num_patches, tower.hidden_size, tower.image_size) == (16, 128, 32)
    pixels = torch.randn(2, 3, 32, 32)
    hidden = tower.encoder(pixels, output_hidden_states=True).hidden_states
    expected = torch.cat([hidden[-1], hidden[-2]], dim=-1)[:, 1:]
    torch.testing.assert_close(tower(pixels), expected)


def test_eva_clip_and_qformer_reproduce_blip2(blip2_dir):
    """Tower and projector loaded from one BLIP-2 checkpoint give BLIP-2's LLM inputs."""
    config = VisionTowerConfig(
        name="eva_clip", path=str(blip2_dir), feature_layer=-1, select="cls_patch"
    )
    tower = EvaClipVisionTower.from_pretrained(config, torch.float32, "sdpa").eval()
    projector_config = QFormerProjectorConfig(
        name="qformer",
        num_queries=4,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=48,
        qformer_weights=str(blip2_dir),
        load_projection=True,
    )
    projector = QFormerProjector(
        projector_config, vision_dim=tower.hidden_size, llm_dim=16, num_patches=tower.num_patches
    ).eval()
    blip2 = Blip2ForConditionalGeneration.from_pretrained(blip2_dir).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        image = blip2.vision_model(pixels).last_hidden_state  # [2, 17, 32], post-layernorm
        queries = blip2.query_tokens.expand(2, -1, -1)
        hidden = blip2.qformer(query_embeds=queries, encoder_hidden_states=image)
        expected = blip2.language_projection(hidden.last_hidden_state)
        torch.testing.assert_close(projector(tower(pixels)), expected)


@pytest.mark.parametrize("kind", ["dinov2", "eva_clip"])
@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
def test_data_pipeline_makes_the_tower_image_size(tmp_path, kind, mode):
    folder = make_tiny_vision_tower(tmp_path / kind, kind, image_size=32, patch_size=8)
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert prepare_image(Image.new("RGB", (50, 30)), processor, mode).shape == (3, 32, 32)
