"""Recipes: typed YAML configuration of models and training stages."""

from mllm.config.loader import RecipeError, dump_recipe, load_recipe, validate_recipe
from mllm.config.schema import RecipeConfig, StageConfig

__all__ = [
    "RecipeConfig",
    "RecipeError",
    "StageConfig",
    "dump_recipe",
    "load_recipe",
    "validate_recipe",
]
