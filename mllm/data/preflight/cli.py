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
from mllm.data.preflight.report import CHECK_KINDS, CheckReport, write_json
from mllm.data.preflight.scan import TokenSettings, check_data
from mllm.data.templates import DEFAULT_IMAGE_TOKEN, get_template
from mllm.data.validate import RECORD_KINDS


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        if Path(args.target[0]).suffix.lower() in (".yaml", ".yml"):
            reports = _check_recipe(args)
        else:
            reports = [_check_files(args)]
    except _UsageError as err:
        print(f"mllm data check: {err}", file=sys.stderr)
        return 2
    for report in reports:
        print(report.format(args.max_listed))
    if args.json:
        write_json(reports, args.json)
        print(f"wrote {args.json}")
    print(f"checked in {time.perf_counter() - started:.1f} s")
    return 1 if any(report.fatal for report in reports) else 0


class _UsageError(Exception):
    pass


def _check_files(args: argparse.Namespace) -> CheckReport:
    template = None
    if args.template:
        template = _template(args.template)
    wanted = (args.tokenizer, args.max_length, args.image_tokens)
    tokens = None
    if any(value is not None for value in wanted):
        if None in wanted or template is None:
            raise _UsageError(
                "token lengths need --tokenizer, --max-length, --image-tokens and --template"
            )
        tokens = TokenSettings(
            _bare_tokenizer(args.tokenizer, args.image_token, template.special_tokens),
            args.image_tokens,
            args.max_length,
        )
    return check_data(
        args.target,
        name="data",
        image_folder=args.images,
        policy=args.on_bad_record,
        image_token=args.image_token,
        template=template,
        tokens=tokens,
        check_images=not args.no_images,
        decode_images=args.decode_images,
        workers=args.workers,
        max_pixels=args.max_pixels,
        image_mode=args.image_aspect_ratio,
    )


def _check_recipe(args: argparse.Namespace) -> list[CheckReport]:
    from mllm.config import RecipeError, load_recipe
    from mllm.data.preflight.model_info import image_tokens_per_image
    from mllm.models.builder import special_tokens_for, stage_template
    from mllm.models.llm import load_tokenizer

    recipe_path, overrides = args.target[0], args.target[1:]
    try:
        recipe = load_recipe(recipe_path, overrides)
    except RecipeError as err:
        raise _UsageError(str(err)) from None
    stages = args.stage or list(recipe.stages)
    unknown = [stage for stage in stages if stage not in recipe.stages]
    if unknown:
        raise _UsageError(f"{recipe_path}: no stage {unknown[0]!r}; stages: {list(recipe.stages)}")
    model = recipe.model
    try:
        tokenizer = load_tokenizer(model.llm, model.image_token, special_tokens_for(recipe))
        image_tokens = image_tokens_per_image(model)
    except (OSError, ValueError) as err:
        raise _UsageError(f"{recipe_path}: cannot read the model's configs: {err}") from None
    reports = []
    for name in stages:
        data = recipe.stages[name].data
        reports.append(
            check_data(
                data.path,
                name=f"stage {name}",
                image_folder=args.images or data.image_folder,
                policy=data.on_bad_record,
                image_token=model.image_token,
                template=get_template(stage_template(recipe, recipe.stages[name])),
                tokens=TokenSettings(tokenizer, image_tokens, data.max_length),
                check_images=not args.no_images,
                decode_images=args.decode_images,
                workers=args.workers,
                max_pixels=args.max_pixels,
                image_mode=data.image_aspect_ratio,
            )
        )
    return reports


def _template(name: str):
    from mllm.registry import UnknownComponentError

    try:
        return get_template(name)
    except UnknownComponentError as err:
        raise _UsageError(str(err)) from None


def _bare_tokenizer(folder: str, image_token: str, special_tokens: Sequence[str]):
    """A tokenizer folder with the image marker and template tokens added, as the model
    builder adds them."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise _UsageError(f"--tokenizer {folder}: {err}") from None
    vocab = tokenizer.get_vocab()
    missing = [
        token for token in dict.fromkeys((image_token, *special_tokens)) if token not in vocab
    ]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer
