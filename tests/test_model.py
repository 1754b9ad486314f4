"""The assembled model: towers and projectors from tiny saved folders, feature placement, loss."""

from __future__ import annotations

import pytest
import torch

from mllm.config import validate_recipe
from mllm.data import DataCollator, get_template, tokenize_conversation
from mllm.models import ImageFeatureCountError, build_model
from mllm.tiny import make_tiny_models


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"), image_size=32, patch_size=8)


def model_config(dirs, *, tower="clip", projector=None, **vision):
    raw = {
        "name": "t",
        "output_dir": "unused",
        "model": {
            "vision": {"name": tower, "path": str(dirs[tower]), **vision},
            "projector": projector or {"name": "mlp", "depth": 2},
            "llm": {"path": str(dirs["llama"]), "family": "llama"},
        },
        "stages": {
            "s": {
                "data": {"path": "unused.json", "template": "vicuna_v1"},
                "optim": {"lr": 1e-3},
                "global_batch_size": 2,
                "micro_batch_size": 1,
            }
        },
    }
    return validate_recipe(raw, "test").model


@pytest.fixture(scope="module")
def built(tiny_model_dirs):
    torch.manual_seed(0)
    return build_model(model_config(tiny_model_dirs), special_tokens=["</s>"])


@pytest.mark.parametrize(
    ("tower", "select", "layers", "patches", "width"),
    [
        ("clip", "patch", [-2], 16, 64),
        ("clip", "cls_patch", [-2], 17, 64),
        ("clip", "patch", [-1, -2], 16, 128),
        ("siglip", "patch", [-2], 16, 64),
    ],
)
def test_tower_feature_selection(tiny_model_dirs, tower, select, layers, patches, width):
    b = build_model(model_config(tiny_model_dirs, tower=tower, select=select, feature_layer=layers))
    assert b.model.vision.num_patches == patches
    features = b.model.vision(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, patches, width)
    assert b.model.num_image_tokens == patches
    # LLaVA's -2 is the input of the last layer: the hidden state after all but one block.
    hidden = b.model.vision.encoder(
        torch.zeros(1, 3, 32, 32), output_hidden_states=True
    ).hidden_states
    start = 1 if tower == "clip" and select == "patch" else 0
    expected = torch.cat([hidden[i] for i in layers], dim=-1)[:, start:]
    torch.testing.assert_close(b.model.vision(torch.zeros(1, 3, 32, 32)), expected)


def test_siglip_has_no_cls_token(tiny_model_dirs):
    with pytest.raises(ValueError, match="no CLS token"):
        build_model(model_config(tiny_model_dirs, tower="siglip", select="cls_patch"))


def test_feature_layer_out_of_range(tiny_model_dirs):
    with pytest.raises(ValueError, match="out of range"):
        build_model(model_config(tiny_model_dirs, feature_layer=[-7]))


def test_linear_projector(tiny_model_dirs):
    b = build_model(model_config(tiny_model_dirs, projector={"name": "linear"}))
    out = b.model.projector(torch.randn(3, 16, 64))
    assert out.shape == (3, 16, b.model.llm.config.hidden_size)


def test_image_token_is_one_special_token(built):
    ids = built.tokenizer("a <image> b", add_special_tokens=False)["input_ids"]
    assert ids.count(built.model.image_token_id) == 1
    assert built.model.llm.get_input_embeddings().num_embeddings >= len(built.tokenizer)
    assert built.tokenizer.pad_token == "<unk>"  # the llama family pads with <unk>, like LLaVA


def test_features_land_exactly_on_placeholders(built):
    model = built.model.eval()
    n = model.num_image_tokens
    image_id, text_id = model.image_token_id, 5
    # Row 0: text, image A, text, image B; row 1: image C then text.
    row0 = [text_id] * 2 + [image_id] * n + [text_id] * 3 + [image_id] * n
    row1 = [image_id] * n + [text_id] * (len(row0) - n)
    input_ids = torch.tensor([row0, row1])
    pixels = torch.randn(3, 3, 32, 32)
    embeds = model.embed(input_ids, pixels)
    features = model.encode_images(pixels)  # [3, n, hidden]
    token_embeds = model.llm.get_input_embeddings()(input_ids)
    torch.testing.assert_close(embeds[0, 2 : 2 + n], features[0])
    torch.testing.assert_close(embeds[0, 5 + n : 5 + 2 * n], features[1])
    torch.testing.assert_close(embeds[1, :n], features[2])
    text = input_ids != image_id
    torch.testing.assert_close(embeds[text], token_embeds[text])


def test_count_mismatch_raises(built):
    model = built.model
    n = model.num_image_tokens
    input_ids = torch.tensor([[5] + [model.image_token_id] * (n - 1)])
    with pytest.raises(
        ImageFeatureCountError, match=f"{n - 1} image placeholder tokens but 1 images"
    ):
        model.embed(input_ids, torch.randn(1, 3, 32, 32))
    with pytest.raises(ImageFeatureCountError, match="no images"):
        model.embed(torch.tensor([[5, model.image_token_id]]), None)


def test_mixed_batch_forward_backward(built):
    model, tokenizer = built.model.train(), built.tokenizer
    template = get_template("vicuna_v1")
    conversations = [
        [{"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": "red"}],
        [{"from": "human", "value": "What is 2 plus 3?"}, {"from": "gpt", "value": "5"}],
    ]
    samples = []
    for conversation in conversations:
        tokenized = tokenize_conversation(
            conversation,
            template,
            tokenizer,
            image_token="<image>",
            num_image_tokens=model.num_image_tokens,
            max_length=512,
        )
        has_image = tokenized.num_images > 0
        samples.append(
            {
                "input_ids": torch.tensor(tokenized.input_ids),
                "labels": torch.tensor(tokenized.labels),
                "pixel_values": torch.randn(1, 3, 32, 32) if has_image else None,
            }
        )
    batch = DataCollator(pad_token_id=tokenizer.pad_token_id)(samples)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name in ("projector", "llm", "vision"):
        grads = [p.grad for p in model.component(name).parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
    model.zero_grad()
    # A batch with no image still touches the tower and projector (ZeRO-3/DDP need every rank alike).
    out = model(**DataCollator(pad_token_id=tokenizer.pad_token_id)(samples[1:]))
    out.loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())
