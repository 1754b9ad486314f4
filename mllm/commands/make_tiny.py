"""``mllm make-tiny OUT_DIR`` (or ``python -m mllm.tiny OUT_DIR``): write tiny random CLIP,
SigLIP and Llama model folders (``mllm.tiny.make_tiny_models``) for tests and demos."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``mllm make-tiny OUT_DIR [--image-size N ...]``."""
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
    from mllm.tiny import make_tiny_models

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
