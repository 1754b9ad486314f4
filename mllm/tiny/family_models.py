"""Tiny random LLMs of each supported family, saved with their family-shaped tokenizer
(:mod:`mllm.tiny.family_tokenizers`) as folders ``from_pretrained`` loads.

Each family gets its own transformers architecture (Mistral, Llama, Qwen2, Gemma-2, Gemma-3
text, Phi-3), so module names, norms and attention quirks are the real ones: LoRA targets
are checked against real layer names, not Llama's. CPU-sized::

    python -c "from mllm.tiny.family_models import make_tiny_family_llm as m; m('tiny_qwen', 'qwen2.5')"
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
)

from mllm.tiny.family_tokenizers import make_family_tokenizer

#: The transformers config class of each family (keys: ``mllm.models.families``).
ARCHITECTURES: dict[str, type[PretrainedConfig]] = {
    "mistral": MistralConfig,
    "llama3": LlamaConfig,
    "llama3.1": LlamaConfig,
    "llama3.2": LlamaConfig,
    "qwen2": Qwen2Config,
    "qwen2.5": Qwen2Config,
    "gemma2": Gemma2Config,
    "gemma3": Gemma3TextConfig,
    "phi3": Phi3Config,
    "phi3.5": Phi3Config,
}


def make_tiny_family_llm(
    out_dir: Path,
    family: str,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    seed: int = 0,
) -> Path:
    """Save a random causal LM of ``family``'s architecture and its tokenizer in ``out_dir``.

    Args:
        out_dir: folder to write.
        family: a key of :data:`ARCHITECTURES`.
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: sizes
            (``head_dim`` is ``hidden_size / num_heads`` for every family, Gemma included).
        seed: weight initialisation seed; the global torch RNG is left untouched.

    Returns:
        ``out_dir``, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer``.

    Raises:
        KeyError: for a family without a tiny architecture; the message lists them.
    """
    if family not in ARCHITECTURES:
        raise KeyError(
            f"no tiny model for family {family!r}; choose one of {sorted(ARCHITECTURES)}"
        )
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(make_family_tokenizer(out_dir, family))
    config = ARCHITECTURES[family](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
