"""Atomic folder writes: a folder is complete iff it exists under its final name.

It is filled under a staging name and renamed when everything is written, so a crash never
leaves a folder that looks complete. Checkpoints, merged models and converted folders are all
written this way.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from mllm.checkpoint.layout import CheckpointError


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
