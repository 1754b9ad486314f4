"""Load the language model and prepare its tokenizer for multimodal data."""

from __future__ import annotations

import logging
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mllm.config.schema import LLMConfig, LoraConfig
from mllm.models.attention import load_with_attention
from mllm.models.families import get_family

logger = logging.getLogger(__name__)


def load_llm(
    config: LLMConfig,
    dtype: torch.dtype,
    attn_implementation: str = "sdpa",
    quantize: LoraConfig | None = None,
) -> PreTrainedModel:
    """Any transformers causal LM, with the attention kernel chosen through its own switch.

    Args:
        config: the recipe's ``model.llm``.
        dtype: parameter dtype (and the 4-bit compute dtype).
        attn_implementation: a resolved kernel name (see ``mllm.models.attention``).
        quantize: load the linear layers in 4-bit (QLoRA) with these settings; the output
            head and embeddings stay in ``dtype``.
    """
    kwargs: dict = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
    if quantize is not None:
        kwargs["quantization_config"] = bitsandbytes_config(
            "4bit", dtype, quant_type=quantize.quant_type, double_quant=quantize.double_quant
        )
        if not torch.cuda.is_available():
            kwargs["device_map"] = {"": "cpu"}

    def load(**attn):
        return AutoModelForCausalLM.from_pretrained(config.path, **kwargs, **attn)

    llm = load_with_attention(load, attn_implementation, f"model.llm.path {config.path}")
    if quantize is not None:
        disable_cpu_repacking(llm)
    return llm


def bitsandbytes_config(
    mode: Literal["4bit", "8bit"],
    compute_dtype: torch.dtype,
    *,
    quant_type: Literal["nf4", "fp4"] = "nf4",
    double_quant: bool = True,
    skip_modules: list[str] | None = None,
) -> BitsAndBytesConfig:
    """The bitsandbytes settings every quantised LLM in mllm loads with (QLoRA training,
    4/8-bit inference of mllm checkpoints and of LLaVA / transformers Llava folders).

    Args:
        mode: ``"4bit"`` (``quant_type`` with its scales quantised too when ``double_quant``,
            matmuls in ``compute_dtype``) or ``"8bit"`` (LLM.int8).
        compute_dtype: the dtype 4-bit layers compute in (the model's dtype).
        quant_type: 4-bit only: ``nf4`` or ``fp4``.
        double_quant: 4-bit only: quantise the quantisation scales as well.
        skip_modules: modules left unquantised (names or name prefixes, e.g. the vision tower
            of a transformers Llava); ``None`` leaves transformers' default (the output head).

    Raises:
        ValueError: ``mode`` is neither ``4bit`` nor ``8bit``.
    """
    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip_modules,
        )
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    raise ValueError(f"bitsandbytes mode {mode!r}; choose 4bit or 8bit")


def disable_cpu_repacking(model: torch.nn.Module) -> int:
    """Keep bitsandbytes from repacking 4-bit weights for AVX512-BF16 CPUs.

    On such CPUs (bitsandbytes 0.50) the first no-grad forward repacks each ``Linear4bit``'s
    weights in place, after which LoRA gradients through that layer come out wrong or missing
    without any error. Turning the fast path off keeps one weight layout for every forward.

    Returns:
        The number of 4-bit layers changed.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


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
