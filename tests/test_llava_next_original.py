"""Original LLaVA-NeXT (1.6) folders, as LLaVA-NeXT's code saves them, load as mllm anyres
models: the prompt ids are LLaVA's ``tokenizer_image_token`` ids with each image's features
spliced in, and the logits equal transformers' ``LlavaNextForConditionalGeneration`` on the
same tensors (mapped as transformers' ``convert_llava_next_weights_to_hf.py`` maps them).

Pinpoints are written as LLaVA reads them, ``(width, height)``, and include a pair whose
transpose is missing, so reading them the other way round would tile some images differently.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from interop_utils import (
    llava_config,
    llava_state,
    llava_tokenizer_image_token,
    transformers_llava_names,
    write_llava,
)
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

import mllm
from mllm.cli import main as cli
from mllm.commands.chat import main as chat
from mllm.data.templates import get_template
from mllm.inference import GenerationRequest, SamplingSettings
from mllm.inference.prompts import prepare_batch
from mllm.interop import ForeignFormatError, detect_format
from mllm.interop.export import export_hf_llava
from mllm.interop.hf_llava_next import llava_next_image_processor
from mllm.interop.llava_next import llama3_llm
from mllm.tiny import UNK_ID, make_tiny_models
from mllm.tiny.chat_templates import LLAMA3 as LLAMA3_CHAT_TEMPLATE
from mllm.tiny.family_models import make_tiny_family_llm

TILE = 32  # the tiny tower's input side; 16 tokens (4 x 4) per tile
#: LLaVA's (width, height) pairs: 96 x 32 has no transpose here.
PINPOINTS_WH = [[32, 64], [64, 32], [64, 64], [96, 32]]
QUESTION = [{"from": "human", "value": "<image>\nWhat is in the image?"}]
#: Config keys LLaVA-NeXT's training (llava/train/train.py) writes beyond LLaVA-1.5's.
NEXT_KEYS = {
    "image_aspect_ratio": "anyres",
    "image_grid_pinpoints": PINPOINTS_WH,
    "mm_patch_merge_type": "spatial_unpad",
    "unfreeze_mm_vision_tower": True,
    "mm_vision_tower_lr": 2e-6,
    "mm_projector_lr": None,
    "mm_resampler_type": None,
    "image_crop_resolution": 224,
    "image_split_resolution": 224,
    "tokenizer_model_max_length": 4096,
    "tokenizer_padding_side": "right",
}


TOWER = "model.vision_tower.vision_tower."
#: transformers 4's CLIPVisionModel, which LLaVA-NeXT saved, held its weights under this.
TOWER_V4 = TOWER + "vision_model."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("models"), image_size=TILE, patch_size=8)


@pytest.fixture(scope="module")
def next_state(tiny) -> dict[str, torch.Tensor]:
    """LLaVA-1.5's tensors (tower changed as stage-2 training leaves it) plus the newline, the
    tower under transformers 4's names (with the position_ids buffer releases before 4.31
    saved)."""
    state = {
        TOWER_V4 + name.removeprefix(TOWER) if name.startswith(TOWER) else name: tensor
        for name, tensor in llava_state(tiny, tower_noise=0.05).items()
    }
    state[TOWER_V4 + "embeddings.position_ids"] = torch.arange(17)[None]
    state["model.image_newline"] = torch.randn(64, generator=torch.Generator().manual_seed(5))
    return state


@pytest.fixture(scope="module")
def folder(tiny, next_state, tmp_path_factory) -> Path:
    return write_llava(
        tmp_path_factory.mktemp("next") / "llava-v1.6", tiny, next_state, **NEXT_KEYS
    )


@pytest.fixture(scope="module")
def loaded(folder, tiny):
    return mllm.load(folder, vision_tower_path=str(tiny["clip"]))


def reference_llava_next(tiny, state, vocab: int) -> LlavaNextForConditionalGeneration:
    """transformers' LlavaNext on the checkpoint's tensors, renamed as transformers'
    convert_llava_next_weights_to_hf.py renames them (in transformers 5's module names); <unk>
    is the image placeholder (no prompt has one)."""
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig.from_pretrained(tiny["clip"]),
        text_config=LlamaConfig.from_pretrained(tiny["llama"]),
        image_token_index=UNK_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[[h, w] for w, h in PINPOINTS_WH],  # transformers: (height, width)
    )
    assert config.text_config.vocab_size == vocab
    renamed = transformers_llava_names(state, TOWER_V4)  # no vision_model. in v5
    reference = LlavaNextForConditionalGeneration(config)
    reference.load_state_dict(renamed, strict=True)
    return reference.eval()


def llava_image_tokens(size_wh: tuple[int, int]) -> tuple[tuple[int, int], int]:
    """LLaVA-NeXT's (rows, cols) of tiles and image token count for a PIL size (width, height),
    restated from its mm_utils.select_best_resolution and llava_arch.unpad_image."""
    width, height = size_wh
    best, most, least_waste = None, 0, math.inf
    for grid_width, grid_height in PINPOINTS_WH:
        scale = min(grid_width / width, grid_height / height)
        shown = min(int(width * scale) * int(height * scale), width * height)
        waste = grid_width * grid_height - shown
        if shown > most or (shown == most and waste < least_waste):
            best, most, least_waste = (grid_width, grid_height), shown, waste
    cols, rows = best[0] // TILE, best[1] // TILE
    map_height, map_width = rows * 4, cols * 4
    if width / height > map_width / map_height:
        padding = (map_height - int(height * (map_width / width))) // 2
        map_height -= 2 * padding
    else:
        padding = (map_width - int(width * (map_height / height))) // 2
        map_width -= 2 * padding
    return (rows, cols), 16 + map_height * (map_width + 1)


def picture(height: int, width: int) -> Image.Image:
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)
    return Image.fromarray(pixels)


def test_next_folder_loads_as_anyres_spatial_unpad(folder, loaded, next_state):
    assert detect_format(folder) == "llava"
    assert (loaded.image_aspect_ratio, loaded.template) == ("anyres", "vicuna_v1")
    assert loaded.recipe.model.mm_patch_merge_type == "spatial_unpad"
    assert [list(p) for p in loaded.image_grid_pinpoints] == [[h, w] for w, h in PINPOINTS_WH]
    assert loaded.manifest["prompt_tokenization"] == "llava"
    model = loaded.built.model
    newline = model.projector.patch_merge.image_newline
    torch.testing.assert_close(newline, next_state["model.image_newline"], rtol=0, atol=0)
    tower = dict(model.vision.encoder.named_parameters())
    for name, tensor in next_state.items():  # the trained tower, not mm_vision_tower's
        if name.startswith(TOWER_V4) and not name.endswith("position_ids"):
            torch.testing.assert_close(tower[name.removeprefix(TOWER_V4)], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(40, 100), (90, 40), (50, 50)], ids=["wide", "tall", "square"])
def test_prompt_ids_and_logits_equal_llava_next(loaded, tiny, next_state, size):
    image = picture(*size)
    prompt = get_template(loaded.template).generation_prompt(QUESTION)
    request = GenerationRequest(QUESTION, [image])
    batch = prepare_batch(loaded, [request], SamplingSettings())
    model, tokenizer = loaded.built.model, loaded.built.tokenizer

    # LLaVA's ids: pieces around <image> tokenized alone, the image's features at the -200.
    grid, count = llava_image_tokens(image.size)
    assert batch.image_grids.tolist() == [list(grid)]
    llava_ids = llava_tokenizer_image_token(tokenizer, prompt)
    cut = llava_ids.index(-200)
    expanded = llava_ids[:cut] + [UNK_ID] * count + llava_ids[cut + 1 :]
    ids = batch.input_ids[0].tolist()
    assert ids == [model.image_token_id if i == UNK_ID else i for i in expanded]

    vocab = len(tokenizer) - 1  # LLaVA's vocabulary: mllm adds <image> after it
    reference = reference_llava_next(tiny, next_state, vocab)
    processor = llava_next_image_processor(
        loaded.built.image_processor, loaded.image_grid_pinpoints
    )
    inputs = processor(images=[image], return_tensors="pt")
    tiles = 1 + grid[0] * grid[1]
    torch.testing.assert_close(
        inputs["pixel_values"][0, :tiles], batch.pixel_values, rtol=0, atol=0
    )
    with torch.no_grad():
        ours = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            image_sizes=batch.image_sizes,
            image_grids=batch.image_grids,
        ).logits
        theirs = reference(
            input_ids=torch.tensor([expanded]),
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
        ).logits
    assert (ours[..., :vocab] - theirs).abs().max().item() <= 1e-5


def test_exported_llava_next_folder_gives_the_same_logits(folder, loaded, tiny, tmp_path):
    out = export_hf_llava(
        folder, tmp_path / "hf", format="hf-llava-next", vision_tower_path=str(tiny["clip"])
    )
    hf = LlavaNextForConditionalGeneration.from_pretrained(out).eval()
    image = picture(40, 100)
    batch = prepare_batch(loaded, [GenerationRequest(QUESTION, [image])], SamplingSettings())
    inputs = AutoProcessor.from_pretrained(out, backend="pil")(images=[image], return_tensors="pt")
    with torch.no_grad():
        ours = loaded.built.model(
            input_ids=batch.input_ids,
            pixel_values=batch.pixel_values,
            image_sizes=batch.image_sizes,
            image_grids=batch.image_grids,
        ).logits
        theirs = hf(input_ids=batch.input_ids, **inputs).logits
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert mllm.load(out).manifest["prompt_tokenization"] == "llava"


@pytest.mark.parametrize("flags", [{}, {"mm_tunable_parts": "mm_mlp_adapter,mm_vision_tower"}])
def test_tower_tensors_of_a_next_folder_are_used_whatever_the_flags(
    tiny, next_state, tmp_path, flags
):
    keys = {**NEXT_KEYS, "unfreeze_mm_vision_tower": False, **flags}
    folder = write_llava(tmp_path / "ckpt", tiny, next_state, shards=1, **keys)
    tower = mllm.load(folder, vision_tower_path=str(tiny["clip"])).built.model.vision.encoder
    expected = next_state[TOWER_V4 + "post_layernorm.weight"]
    torch.testing.assert_close(tower.get_parameter("post_layernorm.weight"), expected)


def test_a_next_folder_whose_tower_trained_needs_its_tensors(tiny, next_state, tmp_path):
    state = {k: v for k, v in next_state.items() if not k.startswith(TOWER)}
    keys = {**NEXT_KEYS, "unfreeze_mm_vision_tower": False, "mm_tunable_parts": "mm_vision_tower"}
    folder = write_llava(tmp_path / "ckpt", tiny, state, shards=1, **keys)
    with pytest.raises(ForeignFormatError, match="mm_tunable_parts"):
        mllm.load(folder, vision_tower_path=str(tiny["clip"]))


def test_chat_answers_about_an_image_from_a_next_folder(folder, tiny, tmp_path):
    path = tmp_path / "wide.png"
    picture(40, 100).save(path)
    out, err = io.StringIO(), io.StringIO()
    args = ["--model", str(folder), "--vision-tower", str(tiny["clip"]), "--image", str(path)]
    args += ["--prompt", "What is in the image?", "--max-new-tokens", "3"]
    assert chat(args, stdin=io.StringIO(), stdout=out, stderr=err) == 0, err.getvalue()
    assert out.getvalue().strip()


def test_eval_answers_a_batch_of_differently_shaped_images(folder, tiny, tmp_path):
    """Two images with different token counts in one left-padded batch."""
    for name, size in (("wide.png", (40, 100)), ("tall.png", (90, 40))):
        picture(*size).save(tmp_path / name)
    records = [
        {"question_id": n, "image": n, "text": "What is it?"} for n in ("wide.png", "tall.png")
    ]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "answers_key.jsonl").write_text(
        "".join(
            json.dumps({"question_id": r["question_id"], "answer": "x"}) + "\n" for r in records
        )
    )
    output = tmp_path / "answers.jsonl"
    args = ["eval", "--model", str(folder), "--vision-tower", str(tiny["clip"])]
    args += ["--questions", str(tmp_path / "questions.jsonl"), "--image-folder", str(tmp_path)]
    args += ["--answers", str(tmp_path / "answers_key.jsonl"), "--output", str(output)]
    assert cli([*args, "--batch-size", "2", "--max-new-tokens", "2"]) == 0
    assert len(output.read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"image_aspect_ratio": "anyres_max_9"}, "image_aspect_ratio"),
        ({"image_aspect_ratio": "crop_split"}, "image_aspect_ratio"),
        ({"mm_newline_position": "one_token"}, "mm_newline_position"),
        ({"mm_patch_merge_type": "flat"}, "mm_patch_merge_type"),
        ({"mm_patch_merge_type": "spatial"}, "mm_patch_merge_type"),
        ({"mm_patch_merge_type": "spatial_unpad_nobase"}, "mm_patch_merge_type"),
        ({"mm_patch_merge_type": "maxpool2x2"}, "mm_patch_merge_type"),
        ({"image_aspect_ratio": "pad"}, "mm_patch_merge_type"),  # spatial_unpad without anyres
        ({"image_grid_pinpoints": "(1x1),...,(3x3)"}, "image_grid_pinpoints"),
        ({"image_grid_pinpoints": None}, "image_grid_pinpoints"),
    ],
    ids=lambda value: "-".join(map(str, value.values())) if isinstance(value, dict) else None,
)
def test_unsupported_next_variants_are_refused_naming_file_and_key(tiny, tmp_path, changes, key):
    folder = tmp_path / "variant"
    folder.mkdir()
    config = llava_config(tiny, **{**NEXT_KEYS, **changes})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ForeignFormatError) as error:
        mllm.load(folder, vision_tower_path=str(tiny["clip"]))
    message = str(error.value)
    assert message.startswith(f"{folder.resolve() / 'config.json'}: {key} ")
    assert "\n" not in message


def test_string_pinpoints_as_llava_s_flag_wrote_them_load(tiny, next_state, tmp_path):
    pinpoints = str([tuple(p) for p in PINPOINTS_WH])  # "[(32, 64), (64, 32), ...]"
    keys = {**NEXT_KEYS, "image_grid_pinpoints": pinpoints}
    folder = write_llava(tmp_path / "ckpt", tiny, next_state, shards=1, **keys)
    loaded = mllm.load(folder, vision_tower_path=str(tiny["clip"]))
    assert [list(p) for p in loaded.image_grid_pinpoints] == [[h, w] for w, h in PINPOINTS_WH]


def test_a_next_folder_without_its_newline_is_refused(tiny, next_state, tmp_path):
    state = {k: v for k, v in next_state.items() if k != "model.image_newline"}
    folder = write_llava(tmp_path / "ckpt", tiny, state, shards=1, **NEXT_KEYS)
    with pytest.raises(ForeignFormatError, match="no model.image_newline tensor"):
        mllm.load(folder, vision_tower_path=str(tiny["clip"]))


# --- Llama-3 LLaVA-NeXT (lmms-lab/llama3-llava-next-8b) -------------------------------------

#: LLaVA-NeXT's conv_llava_llama_3 system prompt.
LLAVA_LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)


@pytest.fixture(scope="module")
def llama3_folder(tiny, next_state, tmp_path_factory) -> Path:
    """A LLaVA-NeXT folder around a tiny Llama-3-style LLM: a byte-level BPE tokenizer with
    Llama-3's special tokens and chat template, Vicuna's architecture name (as LLaVA-NeXT saves
    it) and the tiny tokenizer's own BOS id (not Llama-3's 128000)."""
    root = tmp_path_factory.mktemp("llama3-next")
    llm = make_tiny_family_llm(
        root / "llm", "llama3", hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2
    )
    folder = root / "llama3-llava-next"
    folder.mkdir()
    for path in llm.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, folder / path.name)
    llm_config = json.loads((llm / "config.json").read_text())
    config = {**llava_config(tiny, **NEXT_KEYS), **llm_config}
    config.update(architectures=["LlavaLlamaForCausalLM"], model_type="llava")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    llava_parts = (TOWER, "model.mm_projector.", "model.image_newline")
    state = {k: v for k, v in next_state.items() if k.startswith(llava_parts)}
    state |= load_file(llm / "model.safetensors")  # the Llama-3 LLM's model.* and lm_head.*
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def llava_next_llama3_inference_ids(folder: Path, question: str, image_tokens: int) -> list[int]:
    """LLaVA-NeXT's inference ids for conv_llava_llama_3, restated: the conversation (its system
    prompt, then the question) rendered by the chat template with the generation header (the
    text starts with <|begin_of_text|>), then ``tokenizer_image_token``, which tokenizes each
    piece with a BOS and keeps the first: two BOS in all. The image's features stand where the
    -200 is (here: its placeholder id, once per image token)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [
        {"role": "system", "content": LLAVA_LLAMA3_SYSTEM},
        {"role": "user", "content": question},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = llava_tokenizer_image_token(tokenizer, text)
    cut = ids.index(-200)
    return ids[:cut] + [-200] * image_tokens + ids[cut + 1 :]


@pytest.mark.parametrize(
    "question",
    ["<image>\nWhat is in the image?", "Look: <image>  What is it? "],
    ids=["first", "inside"],
)
def test_a_llama3_next_folder_loads_with_llava_llama_3(llama3_folder, tiny, question):
    """Byte-level pieces have no dummy prefix: a piece that starts with spaces is tokenized as
    LLaVA tokenizes it."""
    config = json.loads((llama3_folder / "config.json").read_text())
    assert config["bos_token_id"] != 128000  # told apart by its tokenizer
    loaded = mllm.load(llama3_folder, vision_tower_path=str(tiny["clip"]))
    assert (loaded.recipe.model.llm.family, loaded.template) == ("llama3", "llava_llama_3")
    assert loaded.manifest["prompt_tokenization"] == "llava"
    assert loaded.image_aspect_ratio == "anyres"
    image = picture(40, 100)
    conversation = [{"from": "human", "value": question}]
    batch = prepare_batch(loaded, [GenerationRequest(conversation, [image])], SamplingSettings())
    _, count = llava_image_tokens(image.size)
    expected = llava_next_llama3_inference_ids(llama3_folder, question, count)
    image_id = loaded.built.model.image_token_id
    ids = batch.input_ids[0].tolist()
    assert ids == [image_id if i == -200 else i for i in expected]
    bos = loaded.built.tokenizer.bos_token_id
    assert ids[:2] == [bos, bos] and ids.count(bos) == 2


def test_chat_answers_from_a_llama3_next_folder(llama3_folder, tiny, tmp_path):
    path = tmp_path / "tall.png"
    picture(90, 40).save(path)
    out, err = io.StringIO(), io.StringIO()
    args = [
        "--model",
        str(llama3_folder),
        "--vision-tower",
        str(tiny["clip"]),
        "--image",
        str(path),
    ]
    args += ["--prompt", "What is in the image?", "--max-new-tokens", "3"]
    assert chat(args, stdin=io.StringIO(), stdout=out, stderr=err) == 0, err.getvalue()
    assert out.getvalue().strip()


@pytest.mark.parametrize(
    "tokenizer_config",
    [
        {"bos_token": "<|begin_of_text|>"},
        {"bos_token": {"content": "<|begin_of_text|>", "special": True}},
        {"bos_token": "<s>", "chat_template": LLAMA3_CHAT_TEMPLATE},
    ],
    ids=["bos", "bos-added-token", "chat-template"],
)
def test_a_llama3_llm_is_told_by_its_tokenizer(tmp_path, tokenizer_config):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert llama3_llm({"bos_token_id": 1}, tmp_path)
    assert llama3_llm({"bos_token_id": 128000}, tmp_path / "no-tokenizer")


def test_a_vicuna_tokenizer_is_not_llama3(tiny):
    assert not llama3_llm(json.loads((tiny["llama"] / "config.json").read_text()), tiny["llama"])
