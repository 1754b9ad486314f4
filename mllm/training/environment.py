"""What this machine must offer for a run's stages, checked before the first one starts.

The probes live next to what they probe (``mllm.models.llm`` for 4-bit layers,
``mllm.models.attention`` for FlashAttention); the recipe rules that need no machine are in
``mllm.config.checks``.
"""

from __future__ import annotations

from mllm.config.schema import RecipeConfig


def check_environment(recipe: RecipeConfig, stages: list[str]) -> list[str]:
    """What this machine must offer for ``stages`` (QLoRA kernels, FlashAttention).

    Run before the first stage so a run never stops between stages for a missing package.

    Returns:
        Problems, each naming the recipe key to change.
    """
    # Imported when called: `mllm train` imports this module before parsing its arguments, and
    # the model modules bring torch and transformers with them.
    from mllm.models import attention, llm

    problems: list[str] = []
    for name in stages:
        if recipe.stages[name].train.llm == "qlora":
            reason = llm.qlora_unavailable_reason()
            if reason:
                problems.append(f"stages.{name}.train.llm: qlora cannot run here: {reason}")
                break
    settings = recipe.model.llm
    if settings.attn_implementation == "flash_attention_2" and settings.attn_fallback == "error":
        reason = attention.flash_attention_unavailable_reason()
        if reason:
            problems.append(
                f"model.llm.attn_implementation: flash_attention_2 cannot run here: {reason}; "
                "use auto/sdpa, or set model.llm.attn_fallback: warn"
            )
    return problems
