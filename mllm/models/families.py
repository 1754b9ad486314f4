"""Per-family quirks of LLM backbones, keyed by the exact family name a recipe gives.

The family is never guessed from a model path: ``lmsys/vicuna-7b-v1.5`` and a local folder
called ``ckpt-final`` are both whatever the recipe says they are.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every linear layer of a Llama-style decoder block (LLaVA's LoRA targets; the head is excluded).
_LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LLMFamily:
    """What differs between LLM families that the toolkit must know.

    Attributes:
        name: the exact name recipes use.
        template: default conversation template for instruction tuning.
        pad_token: token used for padding when the tokenizer defines none (LLaVA pads
            Llama/Vicuna with ``<unk>``); ``None`` means the tokenizer's own pad must exist.
        lora_target_modules: module names LoRA wraps by default.
    """

    name: str
    template: str
    pad_token: str | None
    lora_target_modules: tuple[str, ...] = _LLAMA_LINEARS


FAMILIES: dict[str, LLMFamily] = {
    family.name: family
    for family in (
        LLMFamily("llama", template="vicuna_v1", pad_token="<unk>"),
        LLMFamily("vicuna", template="vicuna_v1", pad_token="<unk>"),
        LLMFamily("mistral", template="vicuna_v1", pad_token="<unk>"),
        LLMFamily("llama3", template="llama3", pad_token="<|finetune_right_pad_id|>"),
        LLMFamily("qwen2", template="chatml", pad_token="<|endoftext|>"),
    )
}


def get_family(name: str) -> LLMFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(
            f"unknown LLM family {name!r}; choose one of: {', '.join(sorted(FAMILIES))}"
        ) from None
