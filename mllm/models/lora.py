"""Low-rank adapters (peft) on the LLM: add them for a stage, and merge them into plain weights.

The LLM becomes ``model.llm = PeftModel(...)``: its parameters are then named
``llm.base_model.model.<original name>`` with ``...lora_A.default.weight`` /
``...lora_B.default.weight`` next to each wrapped layer's ``base_layer``. The projector and the
vision tower never sit inside the wrapper, so they keep their own names, modes and learning rate.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import torch
from torch import nn

from mllm.config.schema import ADAPTER_MODES, LoraConfig, RecipeConfig
from mllm.models.families import get_family
from mllm.models.modality_adaptive import lora_targets
from mllm.models.multimodal import MultimodalModel

logger = logging.getLogger(__name__)

#: Substring of every adapter parameter's name (peft's naming).
ADAPTER_MARK = "lora_"


def lora_settings(recipe: RecipeConfig, stage_name: str) -> LoraConfig:
    """The stage's ``lora`` section (or the defaults) with target modules filled in.

    Defaults come from the LLM family table: every linear layer of the decoder, not the head.
    """
    settings = recipe.stages[stage_name].lora or LoraConfig()
    if settings.target_modules is None:
        targets = list(get_family(recipe.model.llm.family).lora_target_modules)
        settings = settings.model_copy(update={"target_modules": targets})
    return settings


def is_adapted(module: nn.Module) -> bool:
    """Whether ``module`` is a peft wrapper (the LLM of a lora/qlora stage).

    Asks without importing peft (which imports bitsandbytes): a model wrapped by peft has
    imported it already.
    """
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(module, peft.PeftModel)


def add_adapters(model: MultimodalModel, settings: LoraConfig, mode: str) -> None:
    """Wrap ``model.llm`` with fresh LoRA adapters (B = 0, so outputs are unchanged).

    Args:
        model: the assembled model; its LLM is loaded in 4-bit already when ``mode`` is qlora.
        settings: rank, alpha, dropout and target module names (see ``lora_settings``).
        mode: ``lora`` or ``qlora``.

    Raises:
        ValueError: a target module name matches no layer of the LLM.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if mode not in ADAPTER_MODES:
        raise ValueError(f"add_adapters: mode {mode!r} is not one of {ADAPTER_MODES}")
    if is_adapted(model.llm):
        raise ValueError("the LLM already has adapters; merge them first (merge_adapters)")
    llm = model.llm
    if mode == "qlora":
        # Freezes the base and upcasts non-quantised half-precision weights (norms, embeddings,
        # head) to fp32 for stable training; activation checkpointing stays the stage's choice.
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    config = PeftLoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        # a modality-adaptive LLM's k_proj is two layers (text, visual): each gets its adapter
        target_modules=lora_targets(llm, settings.target_modules or ()),
        bias="none",
    )
    try:
        model.llm = get_peft_model(llm, config)
    except ValueError as exc:
        raise ValueError(f"lora.target_modules {settings.target_modules}: {exc}") from None
    logger.info(
        "%s adapters: r=%d alpha=%g dropout=%g on %s",
        mode,
        settings.r,
        settings.alpha,
        settings.dropout,
        ", ".join(settings.target_modules or ()),
    )


def merge_adapters(model: MultimodalModel) -> None:
    """Fold the adapters into the LLM's weights and drop the wrapper: ``model.llm`` is a plain
    transformers model afterwards (``W + scale * B @ A`` per wrapped layer).

    A 4-bit base is dequantised first and stays in full precision: the result equals the
    adapted 4-bit model (up to float rounding), not the original full-precision base plus
    the update, and quantising it again would lose most of the update.
    """
    if not is_adapted(model.llm):
        return
    if _has_4bit_layers(model.llm):
        model.llm = _merge_into_dequantised(model.llm)
    else:
        model.llm = model.llm.merge_and_unload()


def _is_4bit(module: nn.Module) -> bool:
    """A bitsandbytes ``Linear4bit`` (not peft's adapter layer of the same class name)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit)


def _has_4bit_layers(module: nn.Module) -> bool:
    return any(_is_4bit(m) for m in module.modules())


def dequantise_4bit_layer(layer: nn.Module, dtype: torch.dtype) -> nn.Linear:
    """A plain ``nn.Linear`` with the dequantised weights of a bitsandbytes ``Linear4bit``."""
    import bitsandbytes as bnb

    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    linear = nn.Linear(
        layer.in_features, layer.out_features, bias=layer.bias is not None, device=weight.device
    )
    with torch.no_grad():
        linear.weight.copy_(weight.to(torch.float32))
        if layer.bias is not None:
            linear.bias.copy_(layer.bias.to(torch.float32))
    return linear.to(dtype)


def _merge_into_dequantised(peft_model: nn.Module) -> nn.Module:
    from peft.tuners.lora import LoraLayer

    dtype = peft_model.get_base_model().get_input_embeddings().weight.dtype
    replacements: list[tuple[str, nn.Module]] = []
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            if _is_4bit(base):
                merged = dequantise_4bit_layer(base, torch.float32)
            else:
                merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
                merged.load_state_dict({k: v.float() for k, v in base.state_dict().items()})
            with torch.no_grad():
                for adapter in module.active_adapters:
                    merged.weight += module.get_delta_weight(adapter).to(torch.float32)
            replacements.append((name, merged.to(dtype)))
    for name, module in peft_model.named_modules():
        if _is_4bit(module) and not any(name.startswith(f"{r}.") for r, _ in replacements):
            replacements.append((name, dequantise_4bit_layer(module, dtype)))
    for name, new in replacements:
        parent_name, _, child = name.rpartition(".")
        setattr(peft_model.get_submodule(parent_name), child, new)
    llm = peft_model.get_base_model()
    # The model is plain full precision now: transformers must not save it as quantised.
    if hasattr(llm.config, "quantization_config"):
        del llm.config.quantization_config
    for attribute, value in (("hf_quantizer", None), ("is_quantized", False)):
        if hasattr(llm, attribute):
            setattr(llm, attribute, value)
    return llm
