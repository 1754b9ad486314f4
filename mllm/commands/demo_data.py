"""``mllm demo-data OUT_DIR`` (or ``python -m mllm.demo.shapes OUT_DIR``): write the synthetic
shapes visual-QA dataset (``mllm.demo.shapes.make_shapes_dataset``), and with
``--num-grounding N`` its referring split in ``OUT_DIR/grounding`` (``mllm.demo.grounding``),
with ``--num-resolution N`` the texture task that needs anyres in ``OUT_DIR/resolution``
(``mllm.demo.resolution``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``mllm demo-data OUT_DIR --num-align N ... --variant hard``."""
    from mllm.demo.shapes import VARIANTS, make_shapes_dataset

    parser = argparse.ArgumentParser(
        prog="mllm demo-data", description="Write the synthetic shapes visual-QA dataset."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-align", type=int, default=2000)
    parser.add_argument("--num-instruct", type=int, default=2000)
    parser.add_argument(
        "--num-test", type=int, default=100, help="held-out images (3 or 4 questions each)"
    )
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        default="basic",
        help="basic: flat gray, 2x2 quadrants, 4 shapes; hard: gradient backgrounds, 3x3 "
        "cells, 6 shapes",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="image side in pixels (default: basic 64, hard 48); the processor resizes",
    )
    parser.add_argument(
        "--num-grounding",
        type=int,
        default=0,
        help="also write the referring/grounding split to OUT_DIR/grounding: this many "
        "training images (2-3 expressions each) and --num-test held-out ones, 64 px",
    )
    parser.add_argument(
        "--num-resolution",
        type=int,
        default=0,
        help="also write the texture task that needs more than a 32-px view to "
        "OUT_DIR/resolution: this many training images and --num-test held-out ones",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dataset = make_shapes_dataset(
        args.out_dir,
        num_align=args.num_align,
        num_instruct=args.num_instruct,
        num_test=args.num_test,
        image_size=args.image_size,
        seed=args.seed,
        variant=args.variant,
    )
    for name, path in vars(dataset).items():
        print(f"{name}: {path}")
    from mllm.demo.grounding import make_grounding_dataset
    from mllm.demo.resolution import make_resolution_dataset

    extra_splits = [
        ("grounding", args.num_grounding, make_grounding_dataset),
        ("resolution", args.num_resolution, make_resolution_dataset),
    ]
    for split, num_train, make in extra_splits:
        if num_train > 0:
            written = make(
                args.out_dir / split, num_train=num_train, num_test=args.num_test, seed=args.seed
            )
            for name, path in vars(written).items():
                print(f"{split}.{name}: {path}")
    return 0
