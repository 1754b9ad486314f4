"""Tiny random towers and Llama models saved as real Hugging Face folders, built once per spec."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoTokenizer,
    BitImageProcessorPil,
    Blip2VisionConfig,
    Blip2VisionModel,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    LlamaConfig,
    LlamaForCausalLM,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from mllm.tiny.tokenizer import train_tiny_tokenizer

VisionKind = Literal["clip", "siglip", "dinov2", "eva_clip"]

# Written into every folder make_tiny_models builds; a folder is reused only if it matches.
MANIFEST_NAME = "mllm_tiny.json"


def make_tiny_llm(
    out_dir: Path,
    *,
    tokenizer_dir: Path | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Save a random ``LlamaForCausalLM`` and its tokenizer in one folder.

    Args:
        out_dir: Folder to write.
        tokenizer_dir: A folder from :func:`train_tiny_tokenizer`; if ``None`` one with
            ``vocab_size`` pieces is trained straight into ``out_dir``.
        vocab_size: Used only when ``tokenizer_dir`` is ``None``.
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size,
        max_position_embeddings: ``LlamaConfig`` sizes (grouped-query attention by default).
        seed: Weight initialisation seed; the global torch RNG is left untouched.

    Returns:
        ``out_dir``, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer``.
    """
    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        tokenizer_dir = train_tiny_tokenizer(out_dir, vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = max_position_embeddings
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_tiny_vision_tower(
    out_dir: Path,
    kind: VisionKind,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    seed: int = 0,
) -> Path:
    """Save a random CLIP, SigLIP, DINOv2 or EVA-CLIP vision encoder with its image processor.

    The processors are the PIL implementations (torchvision is not a dependency); their saved
    ``preprocessor_config.json`` names ``CLIPImageProcessor`` / ``SiglipImageProcessor`` as a
    real checkpoint does, and ``AutoImageProcessor`` loads the PIL class for it.

    CLIP, DINOv2 and EVA-CLIP (BLIP-2's) emit ``1 + (image_size / patch_size) ** 2`` tokens (a
    CLS token first); SigLIP emits only the patch tokens.

    Args:
        out_dir: Folder to write.
        kind: ``"clip"`` (``CLIPVisionModel``), ``"siglip"`` (``SiglipVisionModel``),
            ``"dinov2"`` (``Dinov2Model``) or ``"eva_clip"`` (``Blip2VisionModel``).
        image_size, patch_size, hidden_size, num_layers, num_heads, intermediate_size:
            vision config sizes; ``image_size`` must be a multiple of ``patch_size``.
        seed: Weight initialisation seed; the global torch RNG is left untouched.

    Returns:
        ``out_dir``, loadable with ``<Kind>VisionModel.from_pretrained`` and
        ``AutoImageProcessor.from_pretrained(out_dir, backend="pil")``.

    Raises:
        ValueError: for an unknown ``kind`` or a patch size that does not divide the image.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    sizes = {
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
    }
    if kind == "clip":
        config = CLIPVisionConfig(**sizes)
        model_class = CLIPVisionModel
        # OpenAI CLIP preprocessing: shortest edge to image_size, then a centre crop.
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            do_center_crop=True,
            image_mean=OPENAI_CLIP_MEAN,
            image_std=OPENAI_CLIP_STD,
        )
    elif kind == "siglip":
        config = SiglipVisionConfig(**sizes)
        model_class = SiglipVisionModel
        processor = SiglipImageProcessorPil(
            size={"height": image_size, "width": image_size},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
    elif kind == "dinov2":
        intermediate = sizes.pop("intermediate_size")
        if intermediate % hidden_size:
            raise ValueError("dinov2 needs intermediate_size to be a multiple of hidden_size")
        config = Dinov2Config(**sizes, mlp_ratio=intermediate // hidden_size)
        model_class = Dinov2Model
        # DINOv2's processor (BitImageProcessor) crops; the grid follows the crop.
        processor = BitImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            do_center_crop=True,
            image_mean=IMAGENET_DEFAULT_MEAN,
            image_std=IMAGENET_DEFAULT_STD,
        )
    elif kind == "eva_clip":
        config = Blip2VisionConfig(**sizes)  # BLIP-2's EVA ViT-g layout
        model_class = Blip2VisionModel
        # BLIP-2's eval processor: stretch to a square, OpenAI CLIP statistics.
        processor = BlipImageProcessorPil(
            size={"height": image_size, "width": image_size},
            image_mean=OPENAI_CLIP_MEAN,
            image_std=OPENAI_CLIP_STD,
        )
    else:
        raise ValueError(
            f"unknown vision tower kind {kind!r}; choose 'clip', 'siglip', 'dinov2' or 'eva_clip'"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _build_once(final: Path, spec: dict, build: Callable[[Path], object]) -> Path:
    """Build into a temporary sibling folder and rename it to ``final``.

    A folder that exists with the same manifest is reused, so concurrent or repeated calls
    (test sessions, several ranks) never see a half-written model; a folder built with
    other settings is replaced.
    """
    manifest = final / MANIFEST_NAME
    if manifest.is_file() and json.loads(manifest.read_text()) == spec:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the renamed folder should read like any other
    try:
        build(tmp)
        (tmp / MANIFEST_NAME).write_text(json.dumps(spec, indent=2, sort_keys=True))
        if final.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale.", dir=final.parent))
            with contextlib.suppress(FileNotFoundError):  # another process moved it first
                os.replace(final, stale / final.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process renamed its copy in first; keep it if it matches.
            if not (manifest.is_file() and json.loads(manifest.read_text()) == spec):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def make_tiny_models(
    out_dir: Path,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    llm_hidden: int = 64,
    llm_layers: int = 2,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    seed: int = 0,
) -> dict[str, Path]:
    """Make ``out_dir/clip``, ``out_dir/siglip`` and ``out_dir/llama`` (reused if present).

    Args:
        out_dir: Parent folder.
        image_size, patch_size, vision_hidden, vision_layers: vision tower sizes.
        llm_hidden, llm_layers: Llama sizes (4 heads, 2 KV heads, MLP twice the hidden size).
        seed: Initialisation seed shared by all three models.

    Returns:
        ``{"clip": path, "siglip": path, "llama": path}``.
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    vision = {
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": vision_hidden,
        "num_layers": vision_layers,
        "intermediate_size": 2 * vision_hidden,
        "seed": seed,
    }
    for kind in ("clip", "siglip"):
        paths[kind] = _build_once(
            out_dir / kind,
            {"kind": kind, **vision},
            lambda d, kind=kind: make_tiny_vision_tower(d, kind, **vision),
        )
    llm = {"hidden_size": llm_hidden, "num_layers": llm_layers, "seed": seed}
    llm["intermediate_size"] = 2 * llm_hidden
    paths["llama"] = _build_once(
        out_dir / "llama", {"kind": "llama", **llm}, lambda d: make_tiny_llm(d, **llm)
    )
    return paths
