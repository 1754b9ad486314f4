"""The checkpoint folder's fixed file names and its manifest (read, write, find).

A stage output (``STAGE/final``) and a periodic checkpoint (``STAGE/checkpoints/step_N``) share
one layout, so either can be an ``init_from`` or be loaded for inference::

    model.safetensors   weights of every component trained so far (full tensors, even under ZeRO-3);
                        for an LLM with adapters only the adapter tensors (``...lora_A/B...``)
                        when its base is the pretrained ``model.llm.path``
    manifest.json       format, stage, step, components, adapters, metrics, library versions
    recipe.yaml         the resolved recipe
    tokenizer files     the tokenizer with the image token
    engine/, trainer_state.json, rng_state_rank*.safetensors   (periodic checkpoints only)
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "manifest.json"
RECIPE_NAME = "recipe.yaml"
TRAINER_STATE_NAME = "trainer_state.json"
ENGINE_DIR = "engine"
FORMAT = "mllm-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A folder that is not a complete, matching mllm checkpoint."""


def library_versions() -> dict[str, str]:
    """Installed versions of mllm and the libraries a checkpoint's tensors depend on."""
    import importlib.metadata as md

    versions = {}
    for package in ("mllm", "torch", "transformers", "peft", "deepspeed", "safetensors"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return versions


def read_manifest(folder: Path) -> dict:
    """The manifest of a complete mllm checkpoint.

    Raises:
        CheckpointError: ``folder`` is missing, lacks its manifest or weights, or its manifest
            names another format.
    """
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


def write_manifest(
    folder: Path,
    *,
    stage: str,
    step: int,
    components: list[str],
    adapters: dict,
    metrics: dict[str, float],
    extra: dict | None = None,
) -> None:
    """Write ``folder``'s manifest (format, versions, time) with ``extra`` keys added.

    Write it last: a folder whose manifest exists is complete.
    """
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "step": step,
        "components": components,
        "adapters": adapters,
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
