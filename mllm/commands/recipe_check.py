"""``mllm recipe check RECIPE [key.sub=value ...]``: validate a recipe (its overrides too) and
print it resolved, ``extends`` merged and defaults filled in."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mllm recipe", description="work with recipe files")
    commands = parser.add_subparsers(dest="recipe_command", required=True)
    check = commands.add_parser("check", help="validate a recipe and print it resolved")
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*", help="key.sub=value")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mllm.config import dump_recipe, load_recipe

    print(dump_recipe(load_recipe(args.recipe, args.overrides)), end="")
    return 0
