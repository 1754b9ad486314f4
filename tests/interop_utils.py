"""Original LLaVA-1.5 checkpoint folders built from tiny models, transformers' port of LLaVA on
the same tensors as the reference they must compute like (interop, chat, eval tests), and mllm
checkpoints of tiny models to export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
)
from transformers.image_processing_utils import BaseImageProcessor

from mllm import checkpoint as ckpt
from mllm.config import dump_recipe, validate_recipe
from mllm.data.recipe_templates import special_tokens_for
from mllm.models.assembly import build_model
from mllm.tiny import UNK_ID

TOWER_ID = "openai/clip-vit-large-patch14-336"  # what LLaVA-1.5 configs name; never downloaded


def llava_state(tiny: dict[str, Path], tower_noise: float = 0.0) -> dict[str, torch.Tensor]:
    """LLaVA-1.5's tensor names: the LLM as is, ``model.mm_projector.{0,2}``, and the tower
    under ``model.vision_tower.vision_tower`` (optionally changed, as after tower training)."""
    state = load_file(tiny["llama"] / "model.safetensors")
    generator = torch.Generator().manual_seed(3)
    for name, tensor in load_file(tiny["clip"] / "model.safetensors").items():
        noise = tower_noise * torch.randn(tensor.shape, generator=generator)
        state[f"model.vision_tower.vision_tower.{name}"] = tensor + noise
    for index in (0, 2):
        state[f"model.mm_projector.{index}.weight"] = 0.2 * torch.randn(64, 64, generator=generator)
        state[f"model.mm_projector.{index}.bias"] = 0.2 * torch.randn(64, generator=generator)
    return state


def llava_config(tiny: dict[str, Path], **changes) -> dict:
    config = json.loads((tiny["llama"] / "config.json").read_text())
    config.update(
        architectures=["LlavaLlamaForCausalLM"],
        model_type="llava",
        mm_vision_tower=TOWER_ID,
        mm_hidden_size=64,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="pad",
        tune_mm_mlp_adapter=False,
        use_mm_proj=True,
    )
    config.update(changes)
    return config


def write_llava(folder: Path, tiny, state, *, shards: int = 2, **changes) -> Path:
    """A LLaVA-1.5 checkpoint folder: config, tokenizer and (sharded) safetensors weights."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(llava_config(tiny, **changes), indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        shutil.copy(tiny["llama"] / name, folder / name)
    names = sorted(state)
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[shard::shards]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    size = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def transformers_llava_names(state: dict, tower_prefix: str) -> dict:
    """An original LLaVA / LLaVA-NeXT state dict under transformers' Llava(Next) names, as
    transformers' convert_llava*_weights_to_hf.py rename them (in transformers 5's module
    names); ``tower_prefix`` is what precedes the tower's own names in the checkpoint."""
    renamed = {}
    for name, tensor in state.items():
        if name.endswith("position_ids"):
            continue
        if name.startswith(tower_prefix):
            renamed["model.vision_tower." + name.removeprefix(tower_prefix)] = tensor
        elif name.startswith("model.mm_projector."):
            index, param = name.removeprefix("model.mm_projector.").split(".")
            renamed[f"model.multi_modal_projector.linear_{1 + int(index) // 2}.{param}"] = tensor
        elif name == "model.image_newline":
            renamed[name] = tensor
        elif name.startswith("model."):
            renamed["model.language_model." + name.removeprefix("model.")] = tensor
        else:
            renamed[name] = tensor
    return renamed


def reference_llava(tiny, state, vocab: int) -> LlavaForConditionalGeneration:
    """transformers' port of LLaVA on the same tensors. LLaVA splices image features in place of
    a -200 id; here the placeholder is <unk> (no prompt has one), so the vocabulary is LLaVA's."""
    config = LlavaConfig(
        vision_config=CLIPVisionConfig.from_pretrained(tiny["clip"]),
        text_config=LlamaConfig.from_pretrained(tiny["llama"]),
        image_token_index=UNK_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    assert config.text_config.vocab_size == vocab
    mapped = transformers_llava_names(state, "model.vision_tower.vision_tower.")
    reference = LlavaForConditionalGeneration(config)
    reference.load_state_dict(mapped, strict=True)
    return reference.eval()


def llava_tokenizer_image_token(tokenizer, prompt: str) -> list[int]:
    """LLaVA's mm_utils.tokenizer_image_token, restated: chunks joined by -200, BOS once."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    joined = [x for chunk in chunks for x in (chunk, [-200, -200])][:-1]
    offset = 1 if chunks[0][:1] == [tokenizer.bos_token_id] else 0
    ids = [tokenizer.bos_token_id] if offset else []
    for part in joined:
        ids.extend(part[offset:])
    return ids


def llava_image_processor(processor: BaseImageProcessor) -> LlavaImageProcessorPil:
    """LLaVA's preprocessing as transformers ports it: expand2square with the mean colour, then
    the tower's CLIP processing (``processor``'s sizes and normalisation)."""
    return LlavaImageProcessorPil(
        do_pad=True,
        size=processor.size,
        crop_size=processor.crop_size,
        image_mean=processor.image_mean,
        image_std=processor.image_std,
    )


def llava_reference_answer(
    reference: LlavaForConditionalGeneration,
    processor: BaseImageProcessor,
    tokenizer,
    prompt: str,
    image: Image.Image,
    *,
    num_image_tokens: int,
    max_new_tokens: int,
) -> str:
    """The greedy answer of ``reference`` (see :func:`reference_llava`) to ``prompt`` about
    ``image``, tokenized LLaVA's way, up to ``</s>``."""
    ids = llava_tokenizer_image_token(tokenizer, prompt)
    cut = ids.index(-200)
    ids = ids[:cut] + [UNK_ID] * num_image_tokens + ids[cut + 1 :]
    pixels = llava_image_processor(processor)(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        generated = reference.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            pixel_values=pixels,
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    text = tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=False)
    return text.split("</s>")[0].strip()


def mllm_checkpoint(
    tiny, folder: Path, vision: dict | None = None, merge: str = "flat", **data
) -> Path:
    """An mllm stage output with a random projector (nothing needs training for interop);
    ``merge`` is ``model.mm_patch_merge_type``."""
    vision = vision or {"name": "clip", "path": str(tiny["clip"])}
    raw = {
        "name": "tiny",
        "output_dir": str(folder.parent),
        "model": {
            "vision": vision,
            "projector": {"name": "mlp", "depth": 2},
            "llm": {"path": str(tiny["llama"]), "family": "llama"},
            "mm_patch_merge_type": merge,
        },
        "stages": {
            "instruct": {
                "data": {"path": "unused.json", **data},
                "optim": {"lr": 1e-4},
                "global_batch_size": 1,
                "micro_batch_size": 1,
            }
        },
    }
    recipe = validate_recipe(raw, "test", check_files=False)
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    state = ckpt.gather_state_dict(built.model, ["projector"], keep=True)
    staging = ckpt.prepare_staging(folder)
    ckpt.write_weights_and_manifest(
        staging,
        state,
        stage="instruct",
        step=1,
        components=["projector"],
        metrics={},
        recipe_yaml=dump_recipe(recipe),
        tokenizer=built.tokenizer,
    )
    ckpt.commit_staging(folder)
    return folder
