"""Checkpoint weights: safetensors read and write, gathering ZeRO-3-partitioned tensors.

``model.safetensors`` holds full tensors of every component trained so far, even under ZeRO-3;
of an LLM with adapters only the adapter tensors (``...lora_A/B...``) when its base is the
pretrained ``model.llm.path``, and of a modality-adaptive LLM that trains only its visual
copies only those. The folder's other files are in ``mllm.checkpoint.layout``.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mllm.checkpoint.layout import (
    RECIPE_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    read_manifest,
    write_manifest,
)
from mllm.config.schema import ADAPTER_MODES, LoraConfig
from mllm.models.families import get_family
from mllm.models.lora import ADAPTER_MARK, is_adapted
from mllm.models.modality_adaptive import is_modality_adaptive, visual_parameters

#: Attribute set on an LLM whose base weights came from a checkpoint (not ``model.llm.path``):
#: its adapted checkpoints then hold the base weights too.
BASE_FROM_CHECKPOINT = "mllm_base_from_checkpoint"


def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def _gathered(params: list[nn.Parameter], modify: bool = False):
    """Context in which ZeRO-3-partitioned ``params`` hold their full data (a no-op otherwise).

    With ``modify``, rank 0's values are re-partitioned on exit; otherwise changes are dropped.
    """
    if any(_is_zero3(p) for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)
    return nullcontext()


def gathered_parameters(params: list[nn.Parameter], modify: bool = False):
    """Public form of ``_gathered``: full parameters inside, re-partitioned on exit if ``modify``."""
    return _gathered(params, modify)


def gather_state_dict(
    model: nn.Module, prefixes: Iterable[str], keep: bool
) -> dict[str, torch.Tensor]:
    """Full CPU tensors of the parameters and buffers under ``prefixes``.

    Collective under ZeRO-3: every rank must call it; only ranks with ``keep`` get tensors.
    Of a component wrapped with adapters, only the adapter tensors are taken, unless its base
    weights came from a checkpoint (then the base is part of what was trained so far). Likewise
    of a modality-adaptive LLM whose visual copies alone train (``train.llm: visual``), only
    the copies.
    """
    skip = _pretrained_base_prefixes(model)
    base_only = _untrained_base_names(model)
    prefixes = tuple(f"{p}." for p in prefixes)
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if (name.startswith(skip) and ADAPTER_MARK not in name) or name in base_only:
            continue
        if name.startswith(prefixes):
            with _gathered([param]):
                if keep:
                    state[name] = param.detach().to("cpu", copy=True).contiguous()
    persistent = set(model.state_dict(keep_vars=True))
    for name, buffer in model.named_buffers():
        if name.startswith(skip):
            continue
        if keep and name.startswith(prefixes) and name in persistent:
            state[name] = buffer.detach().to("cpu", copy=True).contiguous()
    return state


def _pretrained_base_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of adapter-wrapped components whose base is the pretrained one."""
    prefixes = []
    for name, module in model.named_children():
        if is_adapted(module) and not getattr(module.get_base_model(), BASE_FROM_CHECKPOINT, False):
            prefixes.append(f"{name}.")
    return tuple(prefixes)


def _untrained_base_names(model: nn.Module) -> set[str]:
    """Parameters of modality-adaptive components that train only their visual copies on the
    pretrained base: everything but the copies, which loading rebuilds from the base path."""
    names: set[str] = set()
    for child, module in model.named_children():
        if not is_modality_adaptive(module) or getattr(module, BASE_FROM_CHECKPOINT, False):
            continue
        copies = {name for name, _ in visual_parameters(module)}
        trained = {name for name, p in module.named_parameters() if p.requires_grad}
        if trained and trained <= copies:
            names.update(f"{child}.{n}" for n, _ in module.named_parameters() if n not in copies)
    return names


def adapters_manifest(recipe_yaml: str, stage: str, state: dict[str, torch.Tensor]) -> dict:
    """``{component: {mode, r, alpha, dropout, target_modules, ..., base}}`` of a stage's
    adapters, from the resolved recipe; ``base`` says whether the base weights are saved."""
    raw = yaml.safe_load(recipe_yaml)
    train = raw["stages"][stage].get("train", {})
    adapters = {}
    for component, mode in train.items():
        if mode not in ADAPTER_MODES:
            continue
        settings = dict(raw["stages"][stage].get("lora") or {})
        if not settings.get("target_modules"):
            settings["target_modules"] = list(
                get_family(raw["model"]["llm"]["family"]).lora_target_modules
            )
        saved_base = any(k.startswith(f"{component}.") and ADAPTER_MARK not in k for k in state)
        adapters[component] = {
            "mode": mode,
            **LoraConfig(**settings).model_dump(),
            "base": "saved" if saved_base else "pretrained",
        }
    return adapters


def load_weights(model: nn.Module, folder: Path) -> list[str]:
    """Copy the weights saved in ``folder`` into ``model`` (collective under ZeRO-3).

    Returns:
        The names of the tensors loaded.

    Raises:
        CheckpointError: the folder is incomplete or its tensors do not match the model.
    """
    read_manifest(folder)
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    path = folder / WEIGHTS_NAME
    with safe_open(path, framework="pt") as handle:
        names = list(handle.keys())
        unknown = [n for n in names if n not in tensors]
        if unknown:
            raise CheckpointError(f"{path}: tensors the model does not have: {unknown[:5]}")
        for name in names:
            target = tensors[name]
            value = handle.get_tensor(name)
            shape = tuple(getattr(target, "ds_shape", target.shape))
            if tuple(value.shape) != shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(value.shape)}, the model {shape}"
                )
            gathered = (
                _gathered([target], modify=True)
                if isinstance(target, nn.Parameter)
                else nullcontext()
            )
            with gathered, torch.no_grad():
                target.data.copy_(value.to(target.dtype))
    return names


def write_weights_and_manifest(
    folder: Path,
    state: dict[str, torch.Tensor],
    *,
    stage: str,
    step: int,
    components: list[str],
    metrics: dict[str, float],
    recipe_yaml: str,
    tokenizer,
    adapters: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Write the loadable part of a checkpoint into ``folder`` (the manifest last).

    ``adapters`` defaults to what the recipe's stage says (``adapters_manifest``); ``extra``
    adds keys to the manifest.
    """
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / RECIPE_NAME).write_text(recipe_yaml)
    tokenizer.save_pretrained(str(folder))
    write_manifest(
        folder,
        stage=stage,
        step=step,
        components=components,
        adapters=adapters_manifest(recipe_yaml, stage, state) if adapters is None else adapters,
        metrics=metrics,
        extra=extra,
    )
