"""Tiny, randomly initialised models written as real Hugging Face model folders.

Tests and the CPU demo load them with ``from_pretrained(folder)``, exactly like downloaded
checkpoints, so the code under test never takes a shortcut that a real model would not.
Nothing here touches the network. CPU-sized command::

    python -m mllm.tiny tiny_models/ --image-size 64
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mllm.tiny.models import (
    MANIFEST_NAME,
    VisionKind,
    make_tiny_llm,
    make_tiny_models,
    make_tiny_vision_tower,
)
from mllm.tiny.tokenizer import BOS_ID, EOS_ID, SYSTEM_PROMPT, UNK_ID, train_tiny_tokenizer

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "MANIFEST_NAME",
    "SYSTEM_PROMPT",
    "UNK_ID",
    "VisionKind",
    "main",
    "make_tiny_llm",
    "make_tiny_models",
    "make_tiny_vision_tower",
    "train_tiny_tokenizer",
]


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
