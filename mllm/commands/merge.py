"""``mllm merge CHECKPOINT --out DIR``: fold a checkpoint's LoRA adapters into its LLM
(``mllm.merge.merge_checkpoint``; its module docstring is this command's help)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from mllm import merge
    from mllm.checkpoint import CheckpointError
    from mllm.models.assembly import DTYPES

    parser = argparse.ArgumentParser(
        prog="mllm merge",
        description=merge.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="an mllm checkpoint folder (e.g. runs/NAME/STAGE/final)")
    parser.add_argument("--out", required=True, help="folder to write the standalone model to")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args(argv)
    try:
        merge.merge_checkpoint(args.checkpoint, args.out, args.dtype)
    except CheckpointError as exc:
        parser.exit(2, f"mllm merge: {exc}\n")
    return 0
