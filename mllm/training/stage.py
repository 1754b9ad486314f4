"""Apply a stage's tune modes: freeze what the stage does not train and report what it does.

``lora``/``qlora`` wrap the LLM with adapters (``mllm.models.lora``) and train only those.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mllm.config.schema import ADAPTER_MODES, LoraConfig, OptimConfig, TrainConfig
from mllm.models.lora import ADAPTER_MARK, add_adapters, is_adapted
from mllm.models.multimodal import COMPONENTS, MultimodalModel

logger = logging.getLogger(__name__)


def _numel(param: nn.Parameter) -> int:
    # Under ZeRO-3 a partitioned parameter is empty locally; ds_numel is its full size.
    # A 4-bit parameter packs two values per byte; its quant state knows the real shape.
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    return getattr(param, "ds_numel", param.numel())


def apply_stage(
    model: MultimodalModel, train: TrainConfig, lora: LoraConfig | None = None
) -> dict[str, tuple[int, int]]:
    """Set ``requires_grad`` per component and log a table of trainable / total parameters.

    Args:
        model: the assembled model (a qlora LLM already loaded in 4-bit).
        train: the stage's tune mode per component.
        lora: adapter settings with target modules resolved (``lora_settings``); needed when
            the LLM is lora/qlora and has no adapters yet.

    Returns:
        ``{component: (trainable, total)}``.
    """
    if train.llm in ADAPTER_MODES and not is_adapted(model.llm):
        if lora is None or lora.target_modules is None:
            raise ValueError("apply_stage: llm is lora/qlora but no resolved lora settings given")
        add_adapters(model, lora, train.llm)
    table: dict[str, tuple[int, int]] = {}
    for name in COMPONENTS:
        mode = getattr(train, name)
        module = model.component(name)
        module.requires_grad_(mode == "full")
        if mode in ADAPTER_MODES:
            for param_name, param in module.named_parameters():
                param.requires_grad_(ADAPTER_MARK in param_name)
        # A frozen part runs in eval mode so dropout never perturbs features it cannot learn from.
        module.train(mode != "frozen")
        params = list(module.parameters())
        table[name] = (
            sum(_numel(p) for p in params if p.requires_grad),
            sum(_numel(p) for p in params),
        )
    logger.info("parameters per component:\n%s", format_parameter_table(train, table))
    return table


def format_parameter_table(train: TrainConfig, table: dict[str, tuple[int, int]]) -> str:
    lines = [f"{'component':<10} {'mode':<7} {'trainable':>14} {'total':>14}"]
    for name, (trainable, total) in table.items():
        lines.append(f"{name:<10} {getattr(train, name):<7} {trainable:>14,} {total:>14,}")
    trainable = sum(t for t, _ in table.values())
    total = sum(n for _, n in table.values())
    lines.append(
        f"{'all':<10} {'':<7} {trainable:>14,} {total:>14,} ({100 * trainable / max(total, 1):.2f}%)"
    )
    return "\n".join(lines)


def parameter_groups(model: MultimodalModel, optim: OptimConfig) -> list[dict]:
    """Optimizer groups: projector at ``projector_lr``; no weight decay on biases and norms."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_projector = name.startswith("projector.")
        decays = len(getattr(param, "ds_shape", param.shape)) >= 2 and "norm" not in name.lower()
        groups.setdefault((is_projector, decays), []).append(param)
    result = []
    for (is_projector, decays), params in groups.items():
        lr = optim.projector_lr if is_projector and optim.projector_lr is not None else optim.lr
        result.append(
            {"params": params, "lr": lr, "weight_decay": optim.weight_decay if decays else 0.0}
        )
    return result
