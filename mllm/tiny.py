"""Tiny, randomly initialised models written as real Hugging Face model folders.

Tests and the CPU demo load them with ``from_pretrained(folder)``, exactly like downloaded
checkpoints, so the code under test never takes a shortcut that a real model would not.
Nothing here touches the network. CPU-sized command::

    python -m mllm.tiny tiny_models/ --image-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import sentencepiece as spm
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

VisionKind = Literal["clip", "siglip", "dinov2", "eva_clip"]

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# Byte fallback reserves one piece per byte; the specials are <unk>, <s>, </s>.
_NUM_BYTE_PIECES = 256
_NUM_SPECIALS = 3
# Written into every folder make_tiny_models builds; a folder is reused only if it matches.
MANIFEST_NAME = "mllm_tiny.json"

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray")
SHAPES = ("circle", "square", "triangle", "cross", "diamond", "star")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
POSITIONS += ("top", "bottom", "left", "right")
_NOUNS_TEXT = (
    "cat dog bird house tree river mountain city car train book table window garden "
    "teacher student child friend doctor farmer painter engine computer picture camera "
    "road bridge ocean forest flower apple bread water letter song story question answer"
)
_VERBS_TEXT = (
    "sees likes draws finds carries paints watches builds opens reads follows describes "
    "moves holds shows counts"
)
_ADJECTIVES_TEXT = (
    "small large bright dark quiet busy old new happy simple round sharp heavy light "
    "early late warm cold"
)
_PLACES = (
    "near the station",
    "in the morning",
    "after the rain",
    "on the table",
    "under the bridge",
    "at the market",
    "beside the river",
    "in the picture",
    "inside the house",
    "across the street",
)
_FIXED_LINES = (
    SYSTEM_PROMPT,
    "USER:",
    "ASSISTANT:",
    "system",
    "user",
    "assistant",
    "What color is the shape?",
    "What shape is in the image?",
    "Where is the shape?",
    "Answer the question using a single word or phrase.",
    "Describe the image briefly.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 2024",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I'm fine, thanks.",
)


def _builtin_corpus() -> Iterator[str]:
    """Yield the fixed training text: template strings plus a few hundred generated sentences.

    Generated with a fixed seed so the tokenizer is identical on every machine.
    """
    rng = random.Random(1234)
    nouns, verbs, adjectives = _NOUNS_TEXT.split(), _VERBS_TEXT.split(), _ADJECTIVES_TEXT.split()
    yield from _FIXED_LINES
    for colour, shape, position in itertools.product(COLOURS, SHAPES, POSITIONS):
        yield f"A {colour} {shape} in the {position}."
    for i in range(400):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        noun, other = rng.sample(nouns, 2)
        yield rng.choice(
            (
                f"The {rng.choice(adjectives)} {noun} {rng.choice(verbs)} "
                f"a {rng.choice(adjectives)} {other} {rng.choice(_PLACES)}.",
                f"USER: What is {a} plus {b}? ASSISTANT: {a + b}",
                f"Why does the {noun} look {rng.choice(adjectives)}? "
                f"Because it is {rng.choice(COLOURS)}.",
                f"Question {i}: is the {rng.choice(SHAPES)} {rng.choice(COLOURS)}? "
                f"Answer: {rng.choice(('yes', 'no'))}.",
                f"My {noun} and your {other} were {rng.choice(adjectives)} "
                f"{rng.choice(_PLACES)}, weren't they?",
            )
        )


def train_tiny_tokenizer(
    out_dir: Path, vocab_size: int = 1024, extra_text: Iterable[str] = ()
) -> Path:
    """Train a Llama-style sentencepiece BPE tokenizer and save it as a loadable folder.

    Byte fallback means any text, in any script, encodes without ``<unk>``. The folder gets
    ``tokenizer.model`` plus the fast ``tokenizer.json``, so ``AutoTokenizer.from_pretrained``
    gives a fast tokenizer with offset mappings, adding ``<s>`` and never ``</s>``.
    Normalisation is off (like Llama) so inner whitespace and newlines survive a round trip;
    as with every Llama tokenizer, one leading space of the text is absorbed by the ``▁``
    prefix. transformers v5 does not save ``add_bos_token`` (the attribute reads ``False``
    after reloading) because ``tokenizer.json``'s post-processor adds ``<s>``: check the ids,
    and do not call ``update_post_processor()`` on a reloaded tokenizer, which drops ``<s>``.

    Args:
        out_dir: Folder to write (created if needed; tokenizer files in it are replaced).
        vocab_size: Exact vocabulary size, including the 256 byte pieces and 3 specials.
        extra_text: Lines added to the built-in corpus.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: if ``vocab_size`` cannot hold the bytes, specials and every distinct
            character, or is more than the corpus can fill.
    """
    out_dir = Path(out_dir)
    lines = [line for line in itertools.chain(_builtin_corpus(), extra_text) if line.strip()]
    num_chars = len(set("".join(lines)) - {" "})
    minimum = _NUM_BYTE_PIECES + _NUM_SPECIALS + num_chars + 1
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte fallback needs 256 byte pieces, "
            f"3 specials and one piece per distinct character ({num_chars}); use >= {minimum}"
        )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=1.0,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise ValueError(
            f"sentencepiece could not train a {vocab_size}-piece tokenizer ({err}); "
            "lower vocab_size or pass more extra_text"
        ) from err
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    # Naming the class makes AutoTokenizer convert tokenizer.model to a fast BPE tokenizer;
    # building LlamaTokenizer(vocab_file=...) directly silently gives a 3-token vocabulary.
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (out_dir / "tokenizer.json").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    if len(tokenizer) != vocab_size or not tokenizer.is_fast:
        raise RuntimeError(
            f"converted tokenizer in {out_dir} has {len(tokenizer)} tokens "
            f"(fast={tokenizer.is_fast}), expected a fast tokenizer with {vocab_size}"
        )
    tokenizer.save_pretrained(out_dir)
    return out_dir


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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m mllm.tiny OUT_DIR [--image-size N ...]``."""
    parser = argparse.ArgumentParser(
        prog="mllm make-tiny",
        description="Write tiny random CLIP, SigLIP and Llama model folders for tests and demos.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--llm-hidden", type=int, default=64)
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument("--vision-hidden", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = make_tiny_models(
        args.out_dir,
        image_size=args.image_size,
        patch_size=args.patch_size,
        llm_hidden=args.llm_hidden,
        llm_layers=args.llm_layers,
        vision_hidden=args.vision_hidden,
        vision_layers=args.vision_layers,
        seed=args.seed,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
