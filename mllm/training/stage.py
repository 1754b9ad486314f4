"""Apply a stage's tune modes: freeze what the stage does not train and report what it does."""

from __future__ import annotations

import logging

from torch import nn

from mllm.config.schema import OptimConfig, TrainConfig
from mllm.models.multimodal import COMPONENTS, MultimodalModel

logger = logging.getLogger(__name__)


def _numel(param: nn.Parameter) -> int:
    # Under ZeRO-3 a partitioned parameter is empty locally; ds_numel is its full size.
    return getattr(param, "ds_numel", param.numel())


def apply_stage(model: MultimodalModel, train: TrainConfig) -> dict[str, tuple[int, int]]:
    """Set ``requires_grad`` per component and log a table of trainable / total parameters.

    Returns:
        ``{component: (trainable, total)}``.
    """
    table: dict[str, tuple[int, int]] = {}
    for name in COMPONENTS:
        mode = getattr(train, name)
        module = model.component(name)
        module.requires_grad_(mode == "full")
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
