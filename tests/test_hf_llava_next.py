"""``mllm export --format hf-llava-next`` and llava-next-hf folders read back: a tiny anyres
``spatial_unpad`` model gives the same logits in transformers' LlavaNext (its own processor,
chat template and tiling) and after ``mllm.load`` imports the folder again."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from interop_utils import mllm_checkpoint
from PIL import Image
from transformers import AutoProcessor, LlavaNextForConditionalGeneration, LlavaNextProcessor

import mllm
from mllm.checkpoint import load_mllm_checkpoint
from mllm.data.anyres import layout_tensors, prepare_anyres
from mllm.inference.prompts import encode_rendered
from mllm.interop import detect_format
from mllm.interop.export import UnsupportedExportError, export_hf_llava
from mllm.tiny import make_tiny_models

PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32]]
QUESTION = "What is in the image?"
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the mllm checkpoint, its hf-llava-next export)."""
    root = tmp_path_factory.mktemp("llava_next")
    tiny = make_tiny_models(root / "models", image_size=32, patch_size=8)
    torch.manual_seed(0)
    source = mllm_checkpoint(
        tiny,
        root / "final",
        merge="spatial_unpad",
        template="vicuna_v1",
        image_aspect_ratio="anyres",
        image_grid_pinpoints=PINPOINTS,
    )
    return source, export_hf_llava(source, root / "hf", format="hf-llava-next")


def image(size: tuple[int, int] = (40, 100)) -> Image.Image:
    """A wide image: three tiles and the base, unpadded rows."""
    pixels = np.random.default_rng(3).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def mllm_logits(loaded, picture: Image.Image, input_ids: torch.Tensor) -> torch.Tensor:
    """mllm's logits for one anyres image and the prompt ``input_ids`` [1, seq]."""
    tiles, layout = prepare_anyres(
        picture, loaded.built.image_processor, loaded.image_grid_pinpoints
    )
    with torch.no_grad():
        return loaded.built.model(
            input_ids=input_ids, pixel_values=tiles, **layout_tensors([layout])
        ).logits


@pytest.mark.parametrize("size", [(40, 100), (90, 45), (7, 9)])
def test_llava_next_logits_match_mllm_both_ways(exported, size):
    source, out = exported
    ours = load_mllm_checkpoint(source)
    picture = image(size)
    hf = LlavaNextForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    assert isinstance(processor, LlavaNextProcessor)
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    inputs = processor(images=[picture], text=prompt, return_tensors="pt")
    # transformers' prompt is mllm's, with as many image tokens as mllm counts.
    layout = prepare_anyres(picture, ours.built.image_processor, PINPOINTS)[1]
    count = ours.built.model.image_token_count(layout.size, layout.grid)
    ids = inputs["input_ids"][0].tolist()
    assert ids == encode_rendered(ours, prompt, [count])
    with torch.no_grad():
        theirs = hf(**inputs).logits
    reference = mllm_logits(ours, picture, inputs["input_ids"])
    assert (theirs - reference).abs().max().item() < 1e-4
    # ... and imported back.
    assert detect_format(out) == "llava-next-hf"
    back = mllm.load(out)
    assert back.image_aspect_ratio == "anyres" and back.template == "vicuna_v1"
    assert [list(p) for p in back.image_grid_pinpoints] == PINPOINTS
    assert encode_rendered(back, prompt, [count]) == ids
    again = mllm_logits(back, picture, inputs["input_ids"])
    assert (again - reference).abs().max().item() < 1e-4


def test_export_writes_llava_next_config_and_newline(exported):
    source, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_next"
    assert config["image_grid_pinpoints"] == PINPOINTS
    assert config["vision_feature_select_strategy"] == "default"
    hf = LlavaNextForConditionalGeneration.from_pretrained(out)
    newline = load_mllm_checkpoint(source).built.model.projector.patch_merge.image_newline
    torch.testing.assert_close(hf.model.image_newline, newline, rtol=0, atol=0)


def test_formats_refuse_the_other_merge(exported, tmp_path):
    source, _ = exported
    with pytest.raises(UnsupportedExportError, match="hf-llava-next"):
        export_hf_llava(source, tmp_path / "flat")  # hf-llava has no anyres


def test_cli_exports_llava_next(exported, tmp_path):
    from mllm.commands.export import main

    source, _ = exported
    out = tmp_path / "cli"
    assert main([str(source), "--format", "hf-llava-next", "--out", str(out)]) == 0
    assert detect_format(out) == "llava-next-hf"
