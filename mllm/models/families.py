"""Per-family quirks of LLM backbones, keyed by the exact family name a recipe gives.

The family is never guessed from a model path: ``lmsys/vicuna-7b-v1.5`` and a local folder
called ``ckpt-final`` are both whatever the recipe says they are. A family is a model
generation with one chat format: Qwen2 and Qwen2.5 share an architecture but not a default
system prompt, Llama-3 and Llama-3.1 not a system block, so each has its own entry.
``tests/test_families.py`` builds a tiny model of every family here from a saved folder and
trains it a few steps.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every linear layer of a Llama-style decoder block (LLaVA's LoRA targets; the head is excluded).
#: Mistral, Qwen2 and Gemma name theirs the same.
_LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Phi-3 fuses Q, K and V into one layer, and the gate and up projections into another.
_PHI3_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class LLMFamily:
    """What differs between LLM families that the toolkit must know.

    Attributes:
        name: the exact name recipes use.
        template: default conversation template for instruction tuning (``tokenizer``: the
            tokenizer's own chat template, see ``mllm.data.tokenizer_template``).
        pad_token: token used for padding when the tokenizer defines none (LLaVA pads
            Llama/Vicuna with ``<unk>``); ``None`` means the tokenizer's own pad must exist.
        lora_target_modules: module names LoRA wraps by default; empty: the recipe must list
            them (``stages.S.lora.target_modules``).
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
        # Mistral-7B-Instruct-v0.2; LLaVA-NeXT pads it with <unk> too.
        LLMFamily("mistral", template="mistral", pad_token="<unk>"),
        LLMFamily("llama3", template="llama3", pad_token="<|finetune_right_pad_id|>"),
        # 3.1 and 3.2 render the same turns (3.2's date fixed to 3.1's, see family_templates).
        LLMFamily("llama3.1", template="llama3.1", pad_token="<|finetune_right_pad_id|>"),
        LLMFamily("llama3.2", template="llama3.1", pad_token="<|finetune_right_pad_id|>"),
        LLMFamily("qwen2", template="chatml", pad_token="<|endoftext|>"),
        LLMFamily("qwen2.5", template="qwen2.5", pad_token="<|endoftext|>"),
        LLMFamily("gemma2", template="gemma2", pad_token="<pad>"),
        # Gemma-3 text models (gemma-3-1b-it, model_type gemma3_text).
        LLMFamily("gemma3", template="gemma3", pad_token="<pad>"),
        # Phi-3 ships "<|endoftext|>" (its EOS) as pad; replies end with "<|end|>", which padding
        # never touches.
        LLMFamily(
            "phi3", template="phi3", pad_token="<|endoftext|>", lora_target_modules=_PHI3_LINEARS
        ),
        LLMFamily(
            "phi3.5", template="phi3", pad_token="<|endoftext|>", lora_target_modules=_PHI3_LINEARS
        ),
        # Any other causal LM: the conversation format read off its tokenizer's chat template
        # (refused if it cannot be reproduced exactly), its tokenizer's pad token (or an added
        # <pad>), and LoRA targets the recipe must list.
        LLMFamily("generic", template="tokenizer", pad_token=None, lora_target_modules=()),
    )
}


def get_family(name: str) -> LLMFamily:
    """The family registered as exactly ``name``.

    Raises:
        KeyError: for any other name; the message lists the families.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(
            f"unknown LLM family {name!r}; choose one of: {', '.join(sorted(FAMILIES))}"
        ) from None
