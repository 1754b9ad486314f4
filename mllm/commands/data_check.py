"""``mllm data check``: find every bad record of a recipe's stages (or of data files) before
training, and say whether training would stop.

    mllm data check recipes/llava_v1_5.yaml [--stage instruct] [--decode-images --workers 8]
    mllm data check data.json --images DIR [--tokenizer DIR --template vicuna_v1 \\
        --max-length 2048 --image-tokens 576] [--json report.json]

Given a recipe, each stage is checked with its own template, ``max_length``, image folder and
``on_bad_record`` policy, the LLM's tokenizer (no weights are loaded) and the number of tokens
per image (from the tower's config and the projector built on the meta device). Exit status:
0 when training would run (no errors, or ``skip``), 1 when it would stop, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mllm.data.images import DEFAULT_MAX_PIXELS
from mllm.data.preflight.check import (
    DataCheckUsageError,
    FileCheckSettings,
    ImageCheckOptions,
    check_files,
    check_recipe,
)
from mllm.data.preflight.report import CHECK_KINDS, write_json
from mllm.data.templates import DEFAULT_IMAGE_TOKEN
from mllm.data.validate import RECORD_KINDS


def main(argv: Sequence[str] | None = None) -> int:
    """``mllm data SUBCOMMAND``; ``check`` is the only one."""
    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mllm data check RECIPE_OR_JSON [...]  (mllm data check --help)")
        return 0 if argv else 2
    if argv[0] != "check":
        print(f"mllm data: unknown command {argv[0]!r}; use: mllm data check", file=sys.stderr)
        return 2
    return check_main(argv[1:])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    kinds = "\n".join(f"  {k:<24}{v}" for k, v in {**RECORD_KINDS, **CHECK_KINDS}.items())
    parser = argparse.ArgumentParser(
        prog="mllm data check",
        description=__doc__,
        epilog=f"problem kinds:\n{kinds}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        nargs="+",
        help="a recipe (.yaml, then optional key.sub=value overrides) or .json/.jsonl file(s)",
    )
    parser.add_argument("--images", help="image folder (overrides the recipe's image_folder)")
    parser.add_argument("--stage", action="append", help="recipe stage(s) to check; default: all")
    parser.add_argument(
        "--decode-images", action="store_true", help="decode every image (finds all damage)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes for the image pass")
    parser.add_argument("--no-images", action="store_true", help="skip the image files")
    parser.add_argument("--json", metavar="REPORT", help="also write every finding as JSON")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image (w*h)"
    )
    parser.add_argument("--max-listed", type=int, default=50, help="findings printed per kind")
    data = parser.add_argument_group("data files without a recipe")
    data.add_argument("--on-bad-record", choices=("fail", "skip"), default="fail")
    data.add_argument("--template", help="render with it (structure + template checks)")
    data.add_argument("--tokenizer", help="tokenizer folder, for token lengths")
    data.add_argument("--max-length", type=int, help="longest sample (tokens)")
    data.add_argument("--image-tokens", type=int, help="placeholders per image")
    data.add_argument("--image-token", default=DEFAULT_IMAGE_TOKEN, help="the image marker")
    data.add_argument(
        "--image-aspect-ratio",
        choices=("pad", "crop", "resize"),
        default="pad",
        help="pad: --max-pixels applies to the padded square",
    )
    return parser.parse_args(argv)


def check_main(argv: Sequence[str] | None = None) -> int:
    """``mllm data check ...`` (the arguments after ``check``)."""
    args = parse_args(argv)
    started = time.perf_counter()
    options = ImageCheckOptions(
        image_folder=args.images,
        check_images=not args.no_images,
        decode_images=args.decode_images,
        workers=args.workers,
        max_pixels=args.max_pixels,
    )
    try:
        if Path(args.target[0]).suffix.lower() in (".yaml", ".yml"):
            reports = check_recipe(args.target[0], args.target[1:], args.stage, options)
        else:
            settings = FileCheckSettings(
                on_bad_record=args.on_bad_record,
                template=args.template,
                tokenizer=args.tokenizer,
                max_length=args.max_length,
                image_tokens=args.image_tokens,
                image_token=args.image_token,
                image_aspect_ratio=args.image_aspect_ratio,
            )
            reports = [check_files(args.target, options, settings)]
    except DataCheckUsageError as err:
        print(f"mllm data check: {err}", file=sys.stderr)
        return 2
    for report in reports:
        print(report.format(args.max_listed))
    if args.json:
        write_json(reports, args.json)
        print(f"wrote {args.json}")
    print(f"checked in {time.perf_counter() - started:.1f} s")
    return 1 if any(report.fatal for report in reports) else 0
