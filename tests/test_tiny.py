"""Tiny model folders load like real checkpoints, with the sizes and tokenizer behaviour asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    SiglipVisionModel,
)

from mllm.commands.make_tiny import main
from mllm.tiny import MANIFEST_NAME, make_tiny_models, train_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer(tiny: dict[str, Path]):
    return AutoTokenizer.from_pretrained(tiny["llama"])


def test_tokenizer_is_fast_with_exact_size_and_llama_specials(tokenizer) -> None:
    assert tokenizer.is_fast
    assert len(tokenizer) == 1024
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    assert tokenizer.pad_token is None
    ids = tokenizer("What color is the shape?").input_ids
    # transformers v5 does not save add_bos_token; the post-processor is what adds <s>.
    assert ids[0] == 1
    assert 2 not in ids


@pytest.mark.parametrize(
    "text",
    [
        "A chat between a curious human and an artificial intelligence assistant.",
        "USER: What is 2 plus 3? ASSISTANT: 5",
        "naïve 東京 🙂",
        "tabs\tand  double  spaces\nand newlines\n",
    ],
)
def test_round_trip_any_text(tokenizer, text: str) -> None:
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids  # byte fallback covers unseen characters
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_offsets_point_into_the_text(tokenizer) -> None:
    text = "ASSISTANT: top left"
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    spans = [text[a:b] for a, b in enc["offset_mapping"]]
    assert "".join(spans).replace(" ", "") == text.replace(" ", "")
    assert enc["offset_mapping"][-1][1] == len(text)


def test_tokenizer_training_is_deterministic(tmp_path: Path) -> None:
    a = train_tiny_tokenizer(tmp_path / "a", vocab_size=512, extra_text=["zebra quilt"])
    b = train_tiny_tokenizer(tmp_path / "b", vocab_size=512, extra_text=["zebra quilt"])
    for name in ("tokenizer.model", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert len(AutoTokenizer.from_pretrained(a)) == 512


def test_too_small_vocab_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        train_tiny_tokenizer(tmp_path, vocab_size=260)


def test_llm_reloads_with_tokenizer_ids(tiny: dict[str, Path], tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny["llama"])
    config = model.config
    assert config.model_type == "llama"
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (1024, 64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    assert model.generation_config.eos_token_id == 2
    batch = tokenizer(["a red circle"], return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (1, batch.input_ids.shape[1], 1024)


@pytest.mark.parametrize(
    ("kind", "model_class", "num_tokens"),
    [
        ("clip", CLIPVisionModel, 1 + 8 * 8),
        ("siglip", SiglipVisionModel, 8 * 8),
    ],
)
def test_vision_tower_and_processor_reload(
    tiny: dict[str, Path], kind: str, model_class: type, num_tokens: int
) -> None:
    processor = AutoImageProcessor.from_pretrained(tiny[kind], backend="pil")
    image = Image.fromarray(np.full((48, 80, 3), 128, dtype=np.uint8))  # not square on purpose
    pixels = processor(images=image, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 64, 64)
    model = model_class.from_pretrained(tiny[kind])
    with torch.no_grad():
        hidden = model(pixel_values=pixels).last_hidden_state
    assert hidden.shape == (1, num_tokens, 64)


def test_same_seed_same_weights_other_seed_differs(tiny: dict[str, Path], tmp_path: Path) -> None:
    again = make_tiny_models(tmp_path / "again")
    other = make_tiny_models(tmp_path / "other", seed=1)
    for kind in ("clip", "siglip", "llama"):
        ref = load_file(tiny[kind] / "model.safetensors")
        same = load_file(again[kind] / "model.safetensors")
        assert all(torch.equal(ref[k], same[k]) for k in ref)
        diff = load_file(other[kind] / "model.safetensors")
        assert not all(torch.equal(ref[k], diff[k]) for k in ref)


def test_existing_folders_are_reused_and_stale_ones_rebuilt(tmp_path: Path) -> None:
    first = make_tiny_models(tmp_path)
    stamp = (first["llama"] / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_models(tmp_path)["llama"] == first["llama"]
    assert (first["llama"] / "model.safetensors").stat().st_mtime_ns == stamp
    assert main([str(tmp_path), "--image-size", "32"]) == 0
    assert AutoImageProcessor.from_pretrained(first["clip"], backend="pil").crop_size == {
        "height": 32,
        "width": 32,
    }
    assert (first["clip"] / MANIFEST_NAME).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "llama", "siglip"]
