"""Checkpoint folders appear only when complete; a failed write leaves earlier ones intact."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from mllm import checkpoint as ckpt


def _write_ok(staging):
    (staging / ckpt.WEIGHTS_NAME).write_bytes(b"new")
    (staging / ckpt.MANIFEST_NAME).write_text("{}")


def test_save_replaces_a_folder_only_when_complete(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / ckpt.WEIGHTS_NAME).write_bytes(b"old")
    ckpt.write_folder(final, _write_ok, is_main=True)
    assert (final / ckpt.WEIGHTS_NAME).read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no staging or retired copy


def test_full_disk_keeps_the_previous_checkpoint(tmp_path):
    final = tmp_path / "step_00000010"
    final.mkdir()
    (final / ckpt.WEIGHTS_NAME).write_bytes(b"old")

    def fill_disk(staging):
        (staging / ckpt.WEIGHTS_NAME).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ckpt.CheckpointError, match="No space left on device.*untouched"):
        ckpt.write_folder(final, fill_disk, is_main=True)
    assert (final / ckpt.WEIGHTS_NAME).read_bytes() == b"old"
    assert not ckpt.staging_path(final).exists()


def test_a_crash_mid_write_never_leaves_a_loadable_folder(tmp_path):
    final = tmp_path / "final"

    def crash(staging):
        (staging / ckpt.WEIGHTS_NAME).write_bytes(b"partial")
        raise KeyboardInterrupt  # stands for the process dying here

    with pytest.raises(KeyboardInterrupt):
        ckpt.write_folder(final, crash, is_main=True)
    assert not final.exists()
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.read_manifest(final)
    # The leftover staging folder is hidden and is discarded by the next save.
    ckpt.write_folder(final, _write_ok, is_main=True)
    assert (final / ckpt.WEIGHTS_NAME).read_bytes() == b"new"


def test_loading_and_generating_never_import_training():
    """Inference and interop read checkpoints through ``mllm.checkpoint``, not ``mllm.training``;
    the checkpoint format itself imports neither side. A fresh interpreter sees every import."""
    code = (
        "import sys, mllm.checkpoint\n"
        "layers = sorted(m for m in sys.modules if m.startswith(('mllm.training', 'mllm.inference')))\n"
        "import mllm.inference.loading, mllm.inference.generate, mllm.interop\n"
        "print(layers, sorted(m for m in sys.modules if m.startswith('mllm.training')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip() == "[] []"
