"""Load the language model and prepare its tokenizer for multimodal data."""

from __future__ import annotations

import logging

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mllm.config.schema import LLMConfig
from mllm.models.families import get_family

logger = logging.getLogger(__name__)


def load_llm(config: LLMConfig, dtype: torch.dtype) -> PreTrainedModel:
    """Any transformers causal LM, with the attention kernel chosen through its own switch."""
    return AutoModelForCausalLM.from_pretrained(
        config.path,
        dtype=dtype,
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
    )


def load_tokenizer(
    config: LLMConfig, image_token: str, extra_special_tokens: list[str]
) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with ``image_token`` (and any template tokens it lacks) as single tokens.

    The pad token comes from the family table when the tokenizer has none (LLaVA pads
    Llama/Vicuna with ``<unk>``), so padding never reuses EOS, which would mask real EOS labels.
    """
    tokenizer = AutoTokenizer.from_pretrained(
        config.path, trust_remote_code=config.trust_remote_code
    )
    if not tokenizer.is_fast:
        raise ValueError(
            f"model.llm.path {config.path}: the tokenizer is not a fast tokenizer; mllm needs "
            "character offsets to place labels exactly"
        )
    vocab = tokenizer.get_vocab()
    missing = [tok for tok in (image_token, *extra_special_tokens) if tok not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        logger.info("added special tokens to the tokenizer: %s", ", ".join(missing))
    if tokenizer.pad_token is None:
        family = get_family(config.family)
        if family.pad_token is None or family.pad_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            logger.info("the tokenizer had no pad token; added <pad>")
        else:
            tokenizer.pad_token = family.pad_token
    return tokenizer
