"""Tell which kind of model folder a path is, from what its files say (never from its name).

Three kinds load: an mllm checkpoint (``manifest.json`` with mllm's format), an original
LLaVA or LLaVA-NeXT checkpoint (a causal-LM ``config.json`` carrying LLaVA's ``mm_*`` keys;
both save ``model_type: llava`` there, the same string as transformers' Llava) and a
transformers Llava folder ("llava-hf": ``model_type: llava`` with ``vision_config`` and
``text_config``), or its LLaVA-NeXT counterpart ("llava-next-hf": ``model_type: llava_next``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

FolderFormat = Literal["mllm", "llava", "llava-hf", "llava-next-hf"]
#: transformers model types -> the folder kind they mark (with a ``text_config``).
HF_KINDS = {"llava": "llava-hf", "llava_next": "llava-next-hf"}

#: Keys only LLaVA's own code writes into a model config; any of them marks the layout.
LLAVA_CONFIG_KEYS = ("mm_vision_tower", "mm_projector_type", "mm_hidden_size")


class ForeignFormatError(ValueError):
    """A folder that is no supported model layout, or uses a feature mllm cannot reproduce.

    The message names the file and key to look at.
    """


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; errors name the file."""
    if not path.is_file():
        raise ForeignFormatError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ForeignFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ForeignFormatError(f"{path}: expected a JSON object")
    return data


def detect_format(folder: str | Path) -> FolderFormat:
    """The layout of ``folder``: ``mllm``, ``llava``, ``llava-hf`` or ``llava-next-hf``.

    Raises:
        ForeignFormatError: the folder is missing or matches none of the layouts; the message
            says what was looked for.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ForeignFormatError(f"{folder}: no such model folder")
    manifest = folder / "manifest.json"
    if manifest.is_file():
        from mllm.checkpoint import FORMAT

        if read_json(manifest).get("format") == FORMAT:
            return "mllm"
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ForeignFormatError(
            f"{folder}: neither an mllm checkpoint (manifest.json) nor a LLaVA or "
            "transformers Llava folder (config.json)"
        )
    config = read_json(config_path)
    if any(key in config for key in LLAVA_CONFIG_KEYS):
        return "llava"
    if config.get("model_type") in HF_KINDS and "text_config" in config:
        return HF_KINDS[config["model_type"]]
    raise ForeignFormatError(
        f"{config_path}: not a LLaVA checkpoint (no {', '.join(LLAVA_CONFIG_KEYS)} key) and not "
        f"a transformers Llava folder (model_type {config.get('model_type')!r}, expected "
        f"one of {sorted(HF_KINDS)} with a text_config)"
    )
