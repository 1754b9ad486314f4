"""``mllm export SRC --format hf-llava|hf-llava-next --out DIR``: write a model as a transformers
Llava or LlavaNext folder (``mllm.interop.export.export_hf_llava``; its docstring is this
command's help)."""

from __future__ import annotations

import argparse

from mllm.commands.model_options import add_foreign_arguments
from mllm.interop import export
from mllm.models.assembly import DTYPES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mllm export",
        description=export.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="an mllm checkpoint or an original LLaVA / llava-hf folder")
    parser.add_argument("--format", required=True, choices=export.FORMATS)
    parser.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    add_foreign_arguments(parser)
    args = parser.parse_args(argv)
    from mllm.checkpoint import CheckpointError
    from mllm.config import RecipeError
    from mllm.interop.detect import ForeignFormatError

    try:
        export.export_hf_llava(
            args.source,
            args.out,
            dtype=args.dtype,
            vision_tower_path=args.vision_tower,
            base_llm=args.base_llm,
            format=args.format,
        )
    except (export.UnsupportedExportError, ForeignFormatError, CheckpointError, RecipeError) as exc:
        parser.exit(2, f"mllm export: {exc}\n")
    return 0
