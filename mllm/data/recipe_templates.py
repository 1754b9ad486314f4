"""Which template each stage of a recipe uses, and the template tokens the tokenizer must hold.

The model side takes those tokens as an argument (``build_model(special_tokens=...)``) and never
looks at templates itself.
"""

from __future__ import annotations

from mllm.config.schema import RecipeConfig, StageConfig
from mllm.data.templates import TEMPLATES
from mllm.data.tokenizer_template import TOKENIZER_TEMPLATE
from mllm.models.families import get_family


def stage_template(recipe: RecipeConfig, stage: StageConfig) -> str:
    """The stage's template, or the LLM family's default."""
    return stage.data.template or get_family(recipe.model.llm.family).template


def special_tokens_for(recipe: RecipeConfig) -> list[str]:
    """Template tokens every stage needs, so all stages share one vocabulary.

    A stage with ``template: tokenizer`` needs none: its tokens are the tokenizer's own.
    """
    tokens: list[str] = []
    for stage in recipe.stages.values():
        name = stage_template(recipe, stage)
        if name == TOKENIZER_TEMPLATE:
            continue
        for token in TEMPLATES.get(name).target.special_tokens:
            if token not in tokens:
                tokens.append(token)
    return tokens
