"""Checkpoint folders: fixed file names, written atomically, loadable by explicit path.

A stage output (``STAGE/final``) and a periodic checkpoint (``STAGE/checkpoints/step_N``) share
one layout, so either can be an ``init_from`` or be loaded for inference::

    model.safetensors   weights of every component trained so far (full tensors, even under ZeRO-3);
                        for an LLM with adapters only the adapter tensors (``...lora_A/B...``)
                        when its base is the pretrained ``model.llm.path``
    manifest.json       format, stage, step, components, adapters, metrics, library versions
    recipe.yaml         the resolved recipe
    tokenizer files     the tokenizer with the image token
    engine/, trainer_state.json, rng_state_rank*.safetensors   (periodic checkpoints only)

A folder is complete iff it exists under its final name: it is filled under a staging name and
renamed when everything is written, so a crash never leaves a folder that looks complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mllm.config.schema import ADAPTER_MODES, LoraConfig
from mllm.models.families import get_family
from mllm.models.lora import ADAPTER_MARK, is_adapted

WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "manifest.json"
RECIPE_NAME = "recipe.yaml"
TRAINER_STATE_NAME = "trainer_state.json"
ENGINE_DIR = "engine"
FORMAT = "mllm-checkpoint"
FORMAT_VERSION = 1
#: Attribute set on an LLM whose base weights came from a checkpoint (not ``model.llm.path``):
#: its adapted checkpoints then hold the base weights too.
BASE_FROM_CHECKPOINT = "mllm_base_from_checkpoint"


class CheckpointError(ValueError):
    """A folder that is not a complete, matching mllm checkpoint."""


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for package in ("mllm", "torch", "transformers", "peft", "deepspeed", "safetensors"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return versions


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
    weights came from a checkpoint (then the base is part of what was trained so far).
    """
    skip = _pretrained_base_prefixes(model)
    prefixes = tuple(f"{p}." for p in prefixes)
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if name.startswith(skip) and ADAPTER_MARK not in name:
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


def read_manifest(folder: Path) -> dict:
    manifest_path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    if not manifest_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"{folder}: not a complete mllm checkpoint (needs {MANIFEST_NAME} and {WEIGHTS_NAME})"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{manifest_path}: format is {manifest.get('format')!r}, not {FORMAT!r}"
        )
    return manifest


def staging_path(final: Path) -> Path:
    """Where a folder is filled before it becomes ``final`` (same name on every rank)."""
    return final.parent / f".{final.name}.partial"


def prepare_staging(final: Path) -> Path:
    """Empty staging folder for ``final`` (main rank only; leftovers of a crash are discarded)."""
    staging = staging_path(final)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit_staging(final: Path) -> None:
    """Make the staged folder visible under ``final`` in one rename (main rank only)."""
    staging = staging_path(final)
    _fsync_tree(staging)
    if final.exists():
        retired = final.parent / f".{final.name}.old"
        if retired.exists():
            shutil.rmtree(retired)
        final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired)
    else:
        staging.rename(final)


def write_folder(final: Path, write: Callable[[Path], None], *, is_main: bool) -> Path:
    """Fill ``final`` through its staging folder with ``write(staging)`` (collective: every
    rank calls it, and ``write`` may itself be collective).

    A failure while writing (a full disk) removes the staging folder and reports it; earlier
    checkpoints and a previous ``final`` stay as they were.

    Raises:
        CheckpointError: writing failed with an ``OSError``.
    """
    if is_main:
        prepare_staging(final)
    _barrier()
    staging = staging_path(final)
    try:
        write(staging)
    except OSError as exc:
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(
            f"could not write {final}: {exc}; earlier checkpoints are untouched"
        ) from exc
    _barrier()
    if is_main:
        commit_staging(final)
    _barrier()
    return final


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


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
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "step": step,
        "components": components,
        "adapters": adapters_manifest(recipe_yaml, stage, state) if adapters is None else adapters,
        "metrics": metrics,
        "versions": library_versions(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def list_checkpoints(root: Path) -> list[Path]:
    """Complete periodic checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / MANIFEST_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))
