"""Apply a stage's tune modes: freeze what the stage does not train and report what it does.

``lora``/``qlora`` wrap the LLM with adapters (``mllm.models.lora``) and train only those.
``stages.S.frozen_modules`` keeps parts of a training component frozen and in eval mode. This
file alone decides what trains: components and model options never override it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from mllm.config.schema import ADAPTER_MODES, LastBlocks, LoraConfig, OptimConfig, TrainConfig
from mllm.errors import UsageError
from mllm.models.compile import repeated_blocks
from mllm.models.lora import ADAPTER_MARK, add_adapters, is_adapted
from mllm.models.modality_adaptive import train_visual_copies
from mllm.models.multimodal import COMPONENTS, MultimodalModel

logger = logging.getLogger(__name__)

#: How errors name ``frozen_modules`` when the caller does not say which stage it is.
FROZEN_MODULES_KEY = "stages.S.frozen_modules"


def _numel(param: nn.Parameter) -> int:
    # Under ZeRO-3 a partitioned parameter is empty locally; ds_numel is its full size.
    # A 4-bit parameter packs two values per byte; its quant state knows the real shape.
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    return getattr(param, "ds_numel", param.numel())


def apply_stage(
    model: MultimodalModel,
    train: TrainConfig,
    lora: LoraConfig | None = None,
    frozen_modules: Sequence[str] = (),
    *,
    key: str = FROZEN_MODULES_KEY,
) -> dict[str, tuple[int, int]]:
    """Set ``requires_grad`` per component and log a table of trainable / total parameters.

    Args:
        model: the assembled model (a qlora LLM already loaded in 4-bit).
        train: the stage's tune mode per component.
        lora: adapter settings with target modules resolved (``lora_settings``); needed when
            the LLM is lora/qlora and has no adapters yet.
        frozen_modules: module paths in ``model`` (``projector.qformer``) frozen and kept in
            eval mode although their component trains (``stages.S.frozen_modules``).
        key: the recipe key of ``frozen_modules``, for errors (``stages.NAME.frozen_modules``).

    Returns:
        ``{component: (trainable, total)}``, frozen modules counted as not trainable.

    Raises:
        UsageError: a path in ``frozen_modules`` names no module of ``model``.
    """
    if train.llm in ADAPTER_MODES and not is_adapted(model.llm):
        if lora is None or lora.target_modules is None:
            raise ValueError("apply_stage: llm is lora/qlora but no resolved lora settings given")
        add_adapters(model, lora, train.llm)
    # Paths are those of the model that trains (an adapted LLM sits under llm.base_model.model).
    frozen = resolve_frozen_modules(model, frozen_modules, key)
    for name in COMPONENTS:
        mode = train.mode(name)
        module = model.component(name)
        module.requires_grad_(mode == "full")
        if mode in ADAPTER_MODES:
            for param_name, param in module.named_parameters():
                param.requires_grad_(ADAPTER_MARK in param_name)
    if isinstance(train.vision, LastBlocks):
        model.component("vision").requires_grad_(False)
        for block in trained_tower_blocks(model, train.vision, key):
            block.requires_grad_(True)
    if train.llm == "visual":  # mPLUG-Owl2's stage 1: only the LLM's visual copies train
        train_visual_copies(model.llm, key=f"{key.rpartition('.')[0]}.train.llm")
    for module in frozen:
        module.requires_grad_(False)
    table: dict[str, tuple[int, int]] = {}
    for name in COMPONENTS:
        params = list(model.component(name).parameters())
        table[name] = (
            sum(_numel(p) for p in params if p.requires_grad),
            sum(_numel(p) for p in params),
        )
    set_modes(model, train, frozen_modules, key=key)
    logger.info("parameters per component:\n%s", format_parameter_table(train, table))
    if frozen_modules:
        logger.info("kept frozen inside trained components: %s", ", ".join(frozen_modules))
    return table


def set_modes(
    model: MultimodalModel,
    train: TrainConfig,
    frozen_modules: Sequence[str] = (),
    *,
    key: str = FROZEN_MODULES_KEY,
) -> None:
    """Train mode for the components a stage trains, eval mode for the frozen ones and for
    ``frozen_modules``, so that dropout never perturbs features a part cannot learn from. The
    trainer calls it again whenever the engine has switched the whole model (after validation,
    at the start)."""
    for name in COMPONENTS:
        model.component(name).train(train.mode(name) != "frozen")
    if isinstance(train.vision, LastBlocks):
        model.component("vision").eval()
        for block in trained_tower_blocks(model, train.vision, key):
            block.train()
    for module in resolve_frozen_modules(model, frozen_modules, key):
        module.eval()


def trained_tower_blocks(
    model: MultimodalModel, setting: LastBlocks, key: str = FROZEN_MODULES_KEY
) -> list[nn.Module]:
    """The tower's last ``setting.last_blocks`` transformer blocks.

    Raises:
        UsageError: the tower has fewer blocks than asked for.
    """
    blocks = repeated_blocks(model.component("vision"))
    if setting.last_blocks > len(blocks):
        where = key.rsplit(".", 1)[0] + ".train.vision.last_blocks"
        raise UsageError(
            f"{where}: {setting.last_blocks}, but the vision tower has {len(blocks)} blocks"
        )
    return blocks[len(blocks) - setting.last_blocks :]


def resolve_frozen_modules(
    model: MultimodalModel, paths: Sequence[str], key: str = FROZEN_MODULES_KEY
) -> list[nn.Module]:
    """The modules at ``paths`` (``projector.qformer``), each inside a component.

    Raises:
        UsageError: a path names no module; the message lists the valid names where it stops.
    """
    modules = []
    for path in paths:
        parts = path.split(".")
        if parts[0] not in COMPONENTS or len(parts) < 2:
            raise UsageError(
                f"{key}: {path!r} is not a module inside a component; paths start with "
                f"{', '.join(f'{c}.' for c in COMPONENTS)} (e.g. projector.qformer)"
            )
        module: nn.Module = model.component(parts[0])
        for depth, part in enumerate(parts[1:], start=1):
            children = dict(module.named_children())
            if part not in children:
                where = ".".join(parts[:depth])
                nearby = ", ".join(f"{where}.{child}" for child in children) or "none"
                raise UsageError(
                    f"{key}: {path!r} names no module of this model: {where} has no {part!r}; "
                    f"modules of {where}: {nearby}"
                )
            module = children[part]
        modules.append(module)
    return modules


def format_parameter_table(train: TrainConfig, table: dict[str, tuple[int, int]]) -> str:
    lines = [f"{'component':<10} {'mode':<14} {'trainable':>14} {'total':>14}"]
    for name, (trainable, total) in table.items():
        lines.append(f"{name:<10} {train.label(name):<14} {trainable:>14,} {total:>14,}")
    trainable = sum(t for t, _ in table.values())
    total = sum(n for _, n in table.values())
    lines.append(
        f"{'all':<10} {'':<14} {trainable:>14,} {total:>14,} ({100 * trainable / max(total, 1):.2f}%)"
    )
    return "\n".join(lines)


def parameter_groups(model: MultimodalModel, optim: OptimConfig) -> list[dict]:
    """Optimizer groups: the projector at ``projector_lr`` and the tower at ``vision_lr``
    (each ``lr`` when unset); no weight decay on biases and norms."""
    component_lr = {"projector": optim.projector_lr, "vision": optim.vision_lr}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = component_lr.get(name.partition(".")[0]) or optim.lr
        decays = len(getattr(param, "ds_shape", param.shape)) >= 2 and "norm" not in name.lower()
        groups.setdefault((lr, decays), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": optim.weight_decay if decays else 0.0}
        for (lr, decays), params in groups.items()
    ]


#: Devices where torch's fused AdamW runs (one kernel over all parameters, where the default
#: for-each loop launches several per tensor).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(groups: list[dict], optim: OptimConfig) -> torch.optim.AdamW:
    """Torch's AdamW over ``groups``, fused where the parameters' device has the kernel.

    The fused kernel computes what the per-tensor loop does; on the benchmark's stage 2 the
    loop's step took 3 ms of a 60 ms step (``Optimizer.step``, 750 small ops). transformers'
    Trainer also defaults to it (``adamw_torch_fused``).
    """
    devices = {param.device.type for group in groups for param in group["params"]}
    fused = bool(devices) and devices <= set(FUSED_ADAMW_DEVICES)
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=fused or None
    )
