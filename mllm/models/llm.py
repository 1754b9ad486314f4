"""Load the language model (in 4-bit too, and whether 4-bit can run here) and prepare its
tokenizer for multimodal data."""

from __future__ import annotations

import importlib.util
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
    if quantize is not None:  # QLoRA trains through every 4-bit layer
        configure_cpu_4bit_kernels(llm, inference=False)
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


def qlora_unavailable_reason() -> str | None:
    """Why 4-bit NF4 training cannot run on this machine, or None when it can.

    Probes a tiny ``Linear4bit``: quantise, forward, backward. bitsandbytes >= 0.45 runs this
    on CPU too; older releases need CUDA.
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'mllm[bitsandbytes]')"
    try:
        import bitsandbytes as bnb

        device = "cuda" if torch.cuda.is_available() else "cpu"
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32).to(device)
        inputs = torch.randn(2, 64, device=device, requires_grad=True)
        layer(inputs).sum().backward()
        if inputs.grad is None or not torch.isfinite(inputs.grad).all():
            return f"bitsandbytes {bnb.__version__}: a 4-bit layer gave no valid gradient"
    except Exception as exc:  # noqa: BLE001 - any failure means the kernels are unusable here
        return f"bitsandbytes 4-bit layers fail on this machine ({type(exc).__name__}: {exc})"
    return None


# bitsandbytes' AVX512-BF16 kernel reads rows in tiles of this many (``block_n``).
_CPU_PACK_ROWS = 32


def configure_cpu_4bit_kernels(model: torch.nn.Module, *, inference: bool) -> int:
    """Decide, per bitsandbytes ``Linear4bit`` of ``model``, whether it may use the repacked
    AVX512-BF16 kernel on CPU; sets the library's ``support_avx512bf16_for_cpu`` switch.

    With that switch on (bitsandbytes 0.50 turns it on wherever the CPU has AVX512-BF16), the
    first eval-mode forward without gradients repacks the layer's weights in place; from then
    on it multiplies through a bf16 kernel that has no backward. The rule, layer by layer:

    - ``inference=False`` (the layer may be trained through: QLoRA, or a model whose use is not
      known yet): off. After an evaluation or ``generate`` under ``no_grad`` the repacked layer
      would pass no or wrong gradients to the adapters before it, without any error.
    - ``inference=True``: on only if the CPU has AVX512-BF16
      (``bitsandbytes.functional.has_avx512bf16``) and the packed layout fits the layer:
      ``out_features`` a multiple of 32 (the kernel's row tile) and ``in_features`` a multiple
      of the quantisation block (64 for mllm's NF4), so each row holds whole blocks. A narrower
      layer (``in_features`` below the block) fails inside the repack (``shape '[32, 0]' is
      invalid``); it keeps the dequantise-then-matmul path, which works on any CPU. The fast
      kernel computes in bf16: outputs agree with that path to about 1%.

    Call it right after loading, before any forward: a layer already repacked cannot be made
    trainable again (bitsandbytes only restores the layout approximately).

    Args:
        model: any module; layers other than ``Linear4bit`` are left alone.
        inference: whether nothing will ever train through these layers.

    Returns:
        The number of 4-bit layers set.

    Raises:
        RuntimeError: ``inference`` is False but a layer was already repacked.
    """
    if not any(hasattr(m, "support_avx512bf16_for_cpu") for m in model.modules()):
        return 0  # nothing 4-bit: bitsandbytes need not even be imported
    import bitsandbytes as bnb
    from bitsandbytes import functional as bnb_functional

    # not peft's adapter layer of the same name, which wraps one of these as ``base_layer``
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    cpu_has_kernel = inference and bool(bnb_functional.has_avx512bf16())
    for layer in layers:
        packed = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
        if packed and not inference:
            raise RuntimeError(
                f"a 4-bit layer ({layer.out_features}x{layer.in_features}) was already repacked "
                "for AVX512-BF16 inference and cannot be trained through; load the model again"
            )
        layer.support_avx512bf16_for_cpu = cpu_has_kernel and (packed or _fits_cpu_packing(layer))
    repacked = sum(layer.support_avx512bf16_for_cpu for layer in layers)
    logger.debug("%d of %d 4-bit layers may use the AVX512-BF16 kernel", repacked, len(layers))
    return len(layers)


def _fits_cpu_packing(layer: torch.nn.Module) -> bool:
    """Whether bitsandbytes' CPU repack can lay out this ``Linear4bit``'s weights."""
    state = layer.weight.quant_state  # None until the weights are quantised
    rows, columns = state.shape if state is not None else (layer.out_features, layer.in_features)
    blocksize = state.blocksize if state is not None else layer.weight.blocksize
    return rows % _CPU_PACK_ROWS == 0 and columns >= blocksize and columns % blocksize == 0


def disable_cpu_repacking(model: torch.nn.Module) -> int:
    """Keep every 4-bit layer of ``model`` on the trainable path:
    ``configure_cpu_4bit_kernels(model, inference=False)``.

    Returns:
        The number of 4-bit layers set.
    """
    return configure_cpu_4bit_kernels(model, inference=False)


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
