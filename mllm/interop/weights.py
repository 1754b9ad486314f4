"""Read tensors from a model folder's safetensors (one file or shards), and turn pickled
``.bin`` weights into safetensors once, explicitly.

mllm never unpickles weights while loading a model: a ``.bin`` file can run code when it is
loaded. ``convert_bin_files`` reads them with ``torch.load(weights_only=True)``, which refuses
anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mllm.interop.detect import ForeignFormatError

_SHARD_BIN = re.compile(r"^(?P<stem>.+?)-(?P<index>\d+)-of-(?P<total>\d+)\.bin$")


def safetensors_index(folder: Path, stem: str = "model") -> dict[str, Path] | None:
    """``{tensor name: file}`` for ``STEM.safetensors`` or its sharded form, or ``None``.

    Only the file headers are read.
    """
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ForeignFormatError(f"{index}: no weight_map")
        return {name: folder / file for name, file in weight_map.items()}
    if single.is_file():
        with safe_open(single, framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single)
    return None


def bin_files(folder: Path) -> list[Path]:
    """Pickled weight files of ``folder`` (``*.bin``), sorted."""
    return sorted(p for p in folder.glob("*.bin") if p.is_file())


def read_tensors(index: dict[str, Path], prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose name starts with ``prefix``, with the prefix removed.

    Args:
        index: from :func:`safetensors_index`.
        prefix: e.g. ``model.mm_projector.``.
    """
    by_file: dict[Path, list[str]] = {}
    for name, path in index.items():
        if name.startswith(prefix):
            by_file.setdefault(path, []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for path, names in by_file.items():
        with safe_open(path, framework="pt") as handle:
            for name in names:
                tensors[name[len(prefix) :]] = handle.get_tensor(name)
    return tensors


def _safetensors_name(bin_name: str) -> str:
    """``pytorch_model-00001-of-00002.bin`` -> ``model-00001-of-00002.safetensors``,
    ``pytorch_model.bin`` -> ``model.safetensors``, ``mm_projector.bin`` -> ``mm_projector...``."""
    match = _SHARD_BIN.match(bin_name)
    if match:
        stem = "model" if match["stem"] == "pytorch_model" else match["stem"]
        return f"{stem}-{match['index']}-of-{match['total']}.safetensors"
    stem = bin_name[: -len(".bin")]
    return f"{'model' if stem == 'pytorch_model' else stem}.safetensors"


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no storage shared between names (safetensors refuses sharing,
    and a pickled state dict of tied weights has it)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        tensor = tensor.contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def convert_bin_files(src: Path, out: Path) -> list[Path]:
    """Write a safetensors copy of every ``*.bin`` weight file of ``src`` into ``out``.

    Shards keep their numbering and a ``pytorch_model.bin.index.json`` becomes
    ``model.safetensors.index.json``. One file is in memory at a time.

    Returns:
        The files written.

    Raises:
        ForeignFormatError: a ``.bin`` file holds something other than a dict of tensors.
    """
    written: list[Path] = []
    for path in bin_files(src):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors have many types; name the file
            raise ForeignFormatError(
                f"{path}: cannot read it as a weights-only file ({exc})"
            ) from exc
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise ForeignFormatError(f"{path}: expected a dict of tensors")
        target = out / _safetensors_name(path.name)
        save_file(_unshared(state), str(target), metadata={"format": "pt"})
        written.append(target)
        del state
    index = src / "pytorch_model.bin.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {
            name: _safetensors_name(file) for name, file in data.get("weight_map", {}).items()
        }
        target = out / "model.safetensors.index.json"
        target.write_text(json.dumps(data, indent=2) + "\n")
        written.append(target)
    return written
