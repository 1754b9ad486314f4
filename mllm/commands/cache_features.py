"""``mllm cache-features RECIPE [--stage NAME] [key.sub=value ...]``: build the feature caches of
a recipe's stages ahead of training (``data.feature_cache``, see ``mllm.data.feature_cache``).

Training builds a missing cache itself, on rank 0 while the other ranks wait; for a large set
build it here first, on one GPU. The model is built as ``scripts/train.py`` builds it (the
stage's precision and ``init_from`` weights, by ``mllm.training.run.set_up_stage``), so the
fingerprints match. A cache that exists already is checked against the stage (tower,
preprocessing, images) and kept.

CPU, after the demo's stage align (``recipes/tiny/shapes_mlp.yaml``; its stage instruct
freezes the tower and starts from align's output, tower included)::

    mllm cache-features recipes/tiny/shapes_mlp.yaml --stage instruct \\
        stages.instruct.data.feature_cache=runs/demo/cache/instruct
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from mllm.cache_features import cache_stage_features
    from mllm.config import RecipeError, load_recipe
    from mllm.config.checks import check_data_paths
    from mllm.data.feature_cache import BUILD_BATCH_SIZE, FeatureCacheError

    parser = argparse.ArgumentParser(
        prog="mllm cache-features",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    parser.add_argument(
        "--stage", action="append", help="stage(s); default: every stage with data.feature_cache"
    )
    parser.add_argument("--batch-size", type=int, default=BUILD_BATCH_SIZE, help="images per call")
    args = parser.parse_intermixed_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return 2
    stages = args.stage or [
        n for n, s in recipe.stages.items() if s.data.feature_cache not in (None, "auto")
    ]
    for name in stages:
        if name not in recipe.stages:
            print(
                f"{args.recipe}: no stage {name!r}; stages: {list(recipe.stages)}", file=sys.stderr
            )
            return 2
        if recipe.stages[name].data.feature_cache in (None, "auto"):
            print(
                f"{args.recipe}: stages.{name}.data.feature_cache is "
                f"{recipe.stages[name].data.feature_cache or 'null'}, not a folder (auto: "
                "training builds its own cache when the stage sees its images more than "
                f"once); set a folder in the recipe or as an override "
                f"(stages.{name}.data.feature_cache=DIR)",
                file=sys.stderr,
            )
            return 2
    if not stages:
        print(f"{args.recipe}: no stage sets data.feature_cache", file=sys.stderr)
        return 2
    problems = check_data_paths(recipe, stages)
    if problems:  # before any model is built
        raise RecipeError(args.recipe, problems)
    for name in stages:
        try:
            cache_stage_features(recipe, name, args.batch_size)
        except FeatureCacheError as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0
