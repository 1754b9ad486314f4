"""Checkpoint interop: original LLaVA folders and transformers' Llava, checked against
transformers' own Llava implementation on the same weights and inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from interop_utils import (
    llava_config,
    llava_image_processor,
    llava_state,
    llava_tokenizer_image_token,
    mllm_checkpoint,
    reference_llava,
    write_llava,
)
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from mllm import checkpoint as ckpt
from mllm.checkpoint import load_mllm_checkpoint
from mllm.cli import main as cli
from mllm.data.images import prepare_image
from mllm.data.templates import get_template
from mllm.inference.generate import GenerationRequest, generate
from mllm.interop import ForeignFormatError, detect_format, load_llava_folder
from mllm.interop.export import export_hf_llava
from mllm.interop.llava import llava_prompt_ids
from mllm.models.llm import qlora_unavailable_reason
from mllm.tiny import UNK_ID, make_tiny_models

QLORA_SKIP = qlora_unavailable_reason()
QUESTION = [{"from": "human", "value": "<image>\nWhat color is the shape?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("models"), image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A non-square image, so padding to a square matters."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("trained_tower", [False, True], ids=["frozen-tower", "trained-tower"])
def test_llava_checkpoint_matches_llavas_computation(tiny, image, tmp_path, trained_tower):
    state = llava_state(tiny, tower_noise=0.05 if trained_tower else 0.0)
    folder = write_llava(tmp_path / "ckpt", tiny, state, unfreeze_mm_vision_tower=trained_tower)
    assert detect_format(folder) == "llava"
    loaded = load_llava_folder(folder, vision_tower_path=str(tiny["clip"]))
    model, tokenizer = loaded.built.model, loaded.built.tokenizer
    assert (loaded.template, loaded.image_aspect_ratio) == ("vicuna_v1", "pad")
    assert loaded.recipe.model.vision.feature_layer == [-2]
    assert loaded.manifest["prompt_tokenization"] == "llava"

    # LLaVA's preprocessing: expand2square with the mean colour, then CLIP's processor.
    pixels = prepare_image(image, loaded.built.image_processor, loaded.image_aspect_ratio)
    llava_processor = llava_image_processor(loaded.built.image_processor)
    expected_pixels = llava_processor(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, expected_pixels, rtol=0, atol=0)

    # conv_vicuna_v1's prompt with the image first in the question, tokenized LLaVA's way.
    prompt = get_template(loaded.template).generation_prompt(QUESTION)
    assert prompt.endswith(" USER: <image>\nWhat color is the shape? ASSISTANT:")
    assert prompt.startswith("A chat between a curious user and an artificial intelligence")
    ids = llava_prompt_ids(
        tokenizer,
        prompt,
        image_token="<image>",
        image_token_id=model.image_token_id,
        num_image_tokens=model.num_image_tokens,
    )
    llava_ids = llava_tokenizer_image_token(tokenizer, prompt)
    assert llava_ids.count(-200) == 1 and model.num_image_tokens == 16
    cut = llava_ids.index(-200)
    expanded = llava_ids[:cut] + [UNK_ID] * 16 + llava_ids[cut + 1 :]
    assert ids == [model.image_token_id if i == UNK_ID else i for i in expanded]

    vocab = len(tokenizer) - 1  # LLaVA's vocabulary: mllm adds <image> after it
    reference = reference_llava(tiny, state, vocab)
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids]), pixel_values=pixels[None]).logits
        theirs = reference(
            input_ids=torch.tensor([expanded]), pixel_values=expected_pixels[None]
        ).logits
    torch.testing.assert_close(ours[..., :vocab], theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("legacy", [False, True], ids=["legacy_false", "legacy_true"])
def test_llava_prompt_ids_write_sentencepieces_dummy_prefix_before_spaces(legacy):
    """Every piece between images as sentencepiece itself encodes it (LLaVA's slow tokenizer),
    also where a piece starts with one or more spaces, the first piece included."""
    spm = pytest.importorskip("sentencepiece")
    folder = Path(__file__).parent / "fixtures" / "llava_labels" / "tokenizers"
    folder = folder / f"general-legacy_{str(legacy).lower()}"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    sentencepiece = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    prompt = " Lead<image> What<image>  two<image>   <image>\n x<image>"
    expected = [sentencepiece.bos_id()]
    for index, piece in enumerate(prompt.split("<image>")):
        expected += [image_id] * 2 * bool(index) + sentencepiece.encode(piece)
    ids = llava_prompt_ids(
        tokenizer, prompt, image_token="<image>", image_token_id=image_id, num_image_tokens=2
    )
    assert ids == expected
    lone = tokenizer.convert_tokens_to_ids("▁")
    assert ids[ids.index(image_id) + 2] == lone  # "<image> What": '▁', '▁W', ...


def test_llava_checkpoint_exports_to_hf_llava(tiny, image, tmp_path):
    folder = write_llava(tmp_path / "ckpt", tiny, llava_state(tiny))
    out = tmp_path / "hf"
    args = ["export", str(folder), "--format", "hf-llava", "--out", str(out)]
    assert cli([*args, "--vision-tower", str(tiny["clip"])]) == 0
    ours = load_llava_folder(folder, vision_tower_path=str(tiny["clip"]))
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    assert processor.image_processor.do_pad  # LLaVA-1.5's image_aspect_ratio: pad
    prompt = get_template(ours.template).generation_prompt(QUESTION)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        expected = ours.built.model(**inputs).logits
        torch.testing.assert_close(hf(**inputs).logits, expected, rtol=0, atol=1e-4)


@pytest.mark.skipif(QLORA_SKIP is not None, reason=str(QLORA_SKIP))
def test_foreign_llms_load_in_4bit(tiny, tmp_path):
    from bitsandbytes.nn import Linear4bit

    folder = write_llava(tmp_path / "ckpt", tiny, llava_state(tiny))
    tower = str(tiny["clip"])
    export_hf_llava(folder, tmp_path / "hf", vision_tower_path=tower)
    for loaded in (
        load_llava_folder(folder, vision_tower_path=tower, quantize="4bit"),
        load_llava_folder(tmp_path / "hf", quantize="4bit"),
    ):
        model = loaded.built.model
        assert isinstance(model.llm.model.layers[0].self_attn.q_proj, Linear4bit)
        kept = [model.llm.lm_head, *model.projector.modules(), *model.vision.modules()]
        assert not any(isinstance(m, Linear4bit) for m in kept)
        ids = torch.tensor([[1, 5] + [model.image_token_id] * model.num_image_tokens + [6]])
        with torch.no_grad():
            logits = model(ids, pixel_values=torch.zeros(1, 3, 32, 32)).logits
        assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()


def test_llava_pickled_weights_are_converted_once(tiny, tmp_path):
    state = llava_state(tiny)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # shared storage, as when tied
    folder = write_llava(tmp_path / "bin", tiny, {}, shards=1)
    for file in folder.glob("model*.safetensors*"):
        file.unlink()
    names = sorted(state, key=lambda n: not n.startswith(("lm_head", "model.embed")))
    weight_map = {}
    for index, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        file = f"pytorch_model-{index + 1:05d}-of-00002.bin"
        torch.save({n: state[n] for n in part}, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))

    with pytest.raises(ForeignFormatError, match="mllm convert-llava"):
        load_llava_folder(folder, vision_tower_path=str(tiny["clip"]))
    converted = tmp_path / "st"
    assert cli(["convert-llava", str(folder), "--out", str(converted)]) == 0
    assert sorted(p.name for p in converted.glob("model*")) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert not list(converted.glob("*.bin")) and (converted / "tokenizer.json").is_file()
    loaded = load_llava_folder(converted, vision_tower_path=str(tiny["clip"]))
    projector = loaded.built.model.projector
    torch.testing.assert_close(projector.layers[2].bias, state["model.mm_projector.2.bias"])
    torch.testing.assert_close(
        loaded.built.model.llm.lm_head.weight[:-1], state["model.embed_tokens.weight"]
    )


def test_llava_stage1_projector_needs_its_base_llm(tiny, tmp_path):
    folder = tmp_path / "pretrain"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(llava_config(tiny)))
    state = llava_state(tiny)
    projector = {k: v for k, v in state.items() if k.startswith("model.mm_projector.")}
    save_file(projector, str(folder / "mm_projector.safetensors"))
    with pytest.raises(ForeignFormatError, match="base_llm"):
        load_llava_folder(folder, vision_tower_path=str(tiny["clip"]))
    loaded = load_llava_folder(
        folder, vision_tower_path=str(tiny["clip"]), base_llm=str(tiny["llama"])
    )
    assert loaded.template == "plain"  # LLaVA pretrains the projector on captions
    weight = loaded.built.model.projector.layers[0].weight
    torch.testing.assert_close(weight, projector["model.mm_projector.0.weight"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mm_projector_type": "qformer"}, "mm_projector_type 'qformer'"),
        ({"image_aspect_ratio": "anyres"}, "mm_patch_merge_type 'flat'"),  # NeXT: spatial_unpad
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
        ({"architectures": ["LlavaMptForCausalLM"]}, "LlavaMptForCausalLM"),
    ],
)
def test_llava_features_mllm_cannot_reproduce_are_named(tiny, tmp_path, change, message):
    folder = write_llava(tmp_path / "ckpt", tiny, {"x": torch.zeros(1)}, shards=1, **change)
    with pytest.raises(ForeignFormatError, match=message):
        load_llava_folder(folder, vision_tower_path=str(tiny["clip"]))


def test_llava_tower_that_cannot_be_loaded_asks_for_a_local_copy(tiny, tmp_path):
    folder = write_llava(tmp_path / "ckpt", tiny, llava_state(tiny), shards=1)
    with pytest.raises(ForeignFormatError, match="--vision-tower"):
        load_llava_folder(folder, vision_tower_path=str(tmp_path / "missing"))


def test_format_is_read_from_contents_not_names(tiny, tmp_path):
    named = tmp_path / "llava-v1.5-7b"  # a LLaVA-sounding name on a plain Llama folder
    shutil.copytree(tiny["llama"], named)
    with pytest.raises(ForeignFormatError, match="not a LLaVA checkpoint"):
        detect_format(named)


def _answer(processor, ids: torch.Tensor) -> str:
    text = processor.tokenizer.decode(ids, skip_special_tokens=False)
    return text.split("</s>")[0].strip()


def test_export_to_hf_llava_and_back(tiny, image, tmp_path):
    source = mllm_checkpoint(tiny, tmp_path / "final")
    assert detect_format(source) == "mllm"
    out = tmp_path / "hf"
    assert cli(["export", str(source), "--format", "hf-llava", "--out", str(out)]) == 0
    assert detect_format(out) == "llava-hf"

    ours = load_mllm_checkpoint(source)
    model = ours.built.model
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    prompt = get_template(ours.template).generation_prompt(QUESTION)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    ids = ours.built.tokenizer(prompt).input_ids
    cut = ids.index(model.image_token_id)
    ids = ids[:cut] + [model.image_token_id] * model.num_image_tokens + ids[cut + 1 :]
    assert inputs["input_ids"][0].tolist() == ids
    pixels = prepare_image(image, ours.built.image_processor, ours.image_aspect_ratio)
    torch.testing.assert_close(inputs["pixel_values"][0], pixels, rtol=0, atol=0)

    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids]), pixel_values=pixels[None]).logits
        logits = hf(**inputs).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
    new = 6
    answer = generate(ours, [GenerationRequest(QUESTION, [image])], max_new_tokens=new)[0]
    greedy = hf.generate(**inputs, max_new_tokens=new, do_sample=False)
    assert _answer(processor, greedy[0, len(ids) :]) == answer

    back = load_llava_folder(out)
    assert (back.template, back.image_aspect_ratio) == (ours.template, ours.image_aspect_ratio)
    assert back.built.model.image_token_id == model.image_token_id
    with torch.no_grad():
        again = back.built.model(input_ids=torch.tensor([ids]), pixel_values=pixels[None]).logits
    torch.testing.assert_close(again, expected, rtol=0, atol=1e-5)

    # transformers writes Llava tensors under their 4.x names (language_model.model.*, ...);
    # a folder with the module names (model.language_model.*, ...) loads the same.
    renamed_folder = tmp_path / "renamed"
    shutil.copytree(out, renamed_folder)
    (renamed_folder / "mllm_export.json").unlink()
    prefixes = {
        "language_model.model.": "model.language_model.",
        "language_model.lm_head.": "lm_head.",
        "vision_tower.": "model.vision_tower.",
        "multi_modal_projector.": "model.multi_modal_projector.",
    }
    renamed = {}
    for name, tensor in load_file(out / "model.safetensors").items():
        old, new = next((o, n) for o, n in prefixes.items() if name.startswith(o))
        renamed[new + name.removeprefix(old)] = tensor
    save_file(renamed, str(renamed_folder / "model.safetensors"), metadata={"format": "pt"})
    hub = load_llava_folder(renamed_folder)
    assert (hub.template, hub.image_aspect_ratio) == ("vicuna_v1", "pad")  # llama's default
    with torch.no_grad():
        again = hub.built.model(input_ids=torch.tensor([ids]), pixel_values=pixels[None]).logits
    torch.testing.assert_close(again, expected, rtol=0, atol=1e-5)


def test_export_siglip_with_two_feature_layers_and_stretched_images(tiny, image, tmp_path):
    vision = {"name": "siglip", "path": str(tiny["siglip"]), "feature_layer": [-2, -1]}
    source = mllm_checkpoint(tiny, tmp_path / "final", vision, image_aspect_ratio="resize")
    out = tmp_path / "hf"
    assert cli(["export", str(source), "--format", "hf-llava", "--out", str(out)]) == 0
    ours = load_mllm_checkpoint(source)
    model = ours.built.model
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert (hf.config.vision_feature_layer, hf.config.vision_feature_select_strategy) == (
        [-2, -1],
        "full",  # SigLIP has no CLS token: every token is a patch
    )
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    inputs = processor(
        images=image, text="USER: <image>\nDescribe. ASSISTANT:", return_tensors="pt"
    )
    assert int((inputs["input_ids"] == model.image_token_id).sum()) == model.num_image_tokens
    pixels = prepare_image(image, ours.built.image_processor, "resize")
    torch.testing.assert_close(inputs["pixel_values"][0], pixels, rtol=0, atol=0)
    with torch.no_grad():
        expected = model(inputs["input_ids"], pixel_values=pixels[None]).logits
        torch.testing.assert_close(hf(**inputs).logits, expected, rtol=0, atol=1e-4)
        back = load_llava_folder(out).built.model
        again = back(inputs["input_ids"], pixel_values=pixels[None]).logits
    torch.testing.assert_close(again, expected, rtol=0, atol=1e-5)


def test_mllm_load_tells_the_layout_from_the_folder(tiny, image, tmp_path):
    """``mllm.load`` reads an mllm checkpoint and the transformers Llava folder exported from it,
    each through its own loader (the manifest says which), into models that answer alike."""
    import mllm

    source = mllm_checkpoint(tiny, tmp_path / "final")
    out = export_hf_llava(source, tmp_path / "hf")
    ours, theirs = mllm.load(source), mllm.load(out)
    assert ours.manifest["format"] == ckpt.FORMAT
    assert theirs.manifest["format"] == "llava-hf"
    assert not ours.built.model.training and not theirs.built.model.training
    request = [GenerationRequest(QUESTION, [image])]
    assert generate(theirs, request, max_new_tokens=4) == generate(ours, request, max_new_tokens=4)
    with pytest.raises(ckpt.CheckpointError, match="only apply to LLaVA and transformers Llava"):
        mllm.load(source, base_llm=str(tiny["llama"]))
    with pytest.raises(ckpt.CheckpointError, match="checkpoints inside it"):
        mllm.load(tmp_path)  # holds a checkpoint, is none
