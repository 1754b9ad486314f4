"""Original LLaVA-NeXT (LLaVA-1.6) folders: the anyres keys of a LLaVA config.json, on top of
the LLaVA-1.5 layout that ``mllm.interop.llava`` reads.

A LLaVA-NeXT checkpoint (liuhaotian/llava-v1.6-vicuna-7b, -mistral-7b) is a LLaVA folder
whose config adds ``image_aspect_ratio: anyres``, ``image_grid_pinpoints`` and
``mm_patch_merge_type: spatial_unpad``, and whose weights add the learned row separator
``model.image_newline`` and, since stage 2 trains the tower, the tower under
``model.vision_tower.vision_tower.*``. mllm runs that as its own anyres ``spatial_unpad`` model
(``mllm.data.anyres``, ``mllm.models.anyres``), whose unpadding is transformers' (LLaVA's
truncation keeps one row or column less for a few image sizes; docs/interop.md).

LLaVA reads each pinpoint as ``(width, height)`` (``select_best_resolution`` unpacks it so, and
compares it with PIL's ``image.size``); mllm and transformers read ``(height, width)``, so the
pairs are swapped on import. The published lists hold every pair with its transpose, where the
swap changes nothing.

Refused, each naming the config key: the OneVision and video variants (``anyres_max_N``,
``mm_newline_position``), merges other than ``spatial_unpad`` under anyres (``flat``,
``spatial``, ``spatial_unpad_nobase``, ``maxpool2x2`` ...), any merge but ``flat`` without
anyres, and pinpoints given as a ``"(1x1),...,(3x3)"`` range.

A Llama-3 LLM (lmms-lab/llama3-llava-next-8b) under Vicuna's architecture name is told apart
by its tokenizer (``llama3_llm``) and loads as family ``llama3`` with the ``llava_llama_3``
template; its prompts get the two BOS LLaVA-NeXT's inference writes
(``mllm.interop.llava_prompts``).
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import torch

from mllm.interop.detect import ForeignFormatError, read_json
from mllm.interop.hf_llava_next import NEWLINE
from mllm.interop.weights import read_tensors

ANYRES = "anyres"
#: Keys LLaVA-NeXT adds to config.json that are no LLM setting and change no image computation.
CONFIG_KEYS = frozenset(
    {"image_crop_resolution", "image_split_resolution", "delay_load", "vision_tower_pretrained"}
)
MERGE = "spatial_unpad"
#: LLaVA-NeXT's name of the learned row separator.
NEWLINE_TENSOR = "model.image_newline"
TOWER_PREFIX = "model.vision_tower.vision_tower."
#: transformers 4's ``CLIPVisionModel`` prefix inside the tower's names.
LEGACY_TOWER_PREFIX = "vision_model."
#: Llama-3's ``<|begin_of_text|>`` (id and text) and its chat template's turn header.
LLAMA3_BOS = 128000
LLAMA3_BOS_TOKEN = "<|begin_of_text|>"
LLAMA3_HEADER = "<|start_header_id|>"
#: mllm's LLM family and template of a Llama-3 LLaVA-NeXT folder: LLaVA-NeXT's
#: ``llava_llama_3`` conversation (``mllm.data.family_templates``).
LLAMA3_FAMILY = "llama3"
LLAMA3_TEMPLATE = "llava_llama_3"
#: LLaVA-NeXT's ``mm_tunable_parts`` entry that says the tower was trained.
TUNED_TOWER = "mm_vision_tower"


def read_anyres_pinpoints(
    config: dict, path: Path, single_tile_modes: Collection[str | None]
) -> list[list[int]] | None:
    """The ``(height, width)`` grid resolutions of an anyres LLaVA-NeXT config; None for a
    single-tile ``image_aspect_ratio``.

    Args:
        config: the folder's config.json.
        path: its path, for messages.
        single_tile_modes: the other ``image_aspect_ratio`` values the caller reproduces.

    Raises:
        ForeignFormatError: a LLaVA-NeXT variant mllm does not compute; the message names the
            file and key.
    """

    def unsupported(key: str, why: str, value: object = None) -> ForeignFormatError:
        return ForeignFormatError(f"{path}: {key} {value or config.get(key)!r}: {why}")

    if "mm_newline_position" in config:
        raise unsupported(
            "mm_newline_position",
            "a LLaVA-OneVision / LLaVA-NeXT-Video setting; only LLaVA-NeXT (1.6) image models load",
        )
    aspect = config.get("image_aspect_ratio")
    merge = config.get("mm_patch_merge_type", "flat")
    if aspect != ANYRES:
        if isinstance(aspect, str) and aspect.startswith(ANYRES):
            raise unsupported(
                "image_aspect_ratio", "LLaVA-OneVision's capped anyres is not supported"
            )
        if aspect not in single_tile_modes:
            supported = ", ".join(repr(mode) for mode in (*single_tile_modes, ANYRES) if mode)
            raise unsupported("image_aspect_ratio", f"supported: {supported} or unset")
        if merge != "flat":
            raise unsupported(
                "mm_patch_merge_type", "without anyres only 'flat' is supported", merge
            )
        return None
    if merge != MERGE:
        raise unsupported("mm_patch_merge_type", f"with anyres only {MERGE!r} is supported", merge)
    pinpoints = config.get("image_grid_pinpoints")
    if isinstance(pinpoints, str):  # LLaVA's training flag, saved as given: "[(336, 672), ...]"
        try:
            pinpoints = ast.literal_eval(pinpoints)
        except (ValueError, SyntaxError):
            pinpoints = None
    pairs = pinpoints if isinstance(pinpoints, list | tuple) else []
    if not pairs or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(v, int) for v in p)
        for p in pairs
    ):
        raise unsupported("image_grid_pinpoints", "expected a list of [width, height] pairs")
    return [[int(height), int(width)] for width, height in pairs]


def llama3_llm(config: dict, folder: Path) -> bool:
    """Whether an ``LlavaLlamaForCausalLM`` folder holds a Llama-3 LLM (lmms-lab/llama3-llava-
    next-8b) rather than Vicuna: LLaVA names both alike, so the tokenizer tells them apart.

    Llama-3 if the tokenizer's BOS is ``<|begin_of_text|>`` or its chat template writes Llama-3's
    turn headers (``tokenizer_config.json``, or ``chat_template.jinja`` as transformers 5 saves
    it), or if config.json's ``bos_token_id`` is Llama-3's (a projector-only folder may hold no
    tokenizer).
    """
    if config.get("bos_token_id") == LLAMA3_BOS:
        return True
    path = folder / "tokenizer_config.json"
    settings = read_json(path) if path.is_file() else {}
    bos = settings.get("bos_token")
    if isinstance(bos, dict):  # an AddedToken as older tokenizers saved it
        bos = bos.get("content")
    template = settings.get("chat_template") or ""
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = "".join(str(entry.get("template", "")) for entry in template)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template += jinja.read_text()
    return bos == LLAMA3_BOS_TOKEN or LLAMA3_HEADER in str(template)


def tower_trained(config: dict) -> bool:
    """Whether the config says stage 2 trained the tower, so its weights are the checkpoint's.

    LLaVA loads the tower's checkpoint tensors when ``unfreeze_mm_vision_tower`` is set;
    LLaVA-NeXT's code also when ``mm_tunable_parts`` names ``mm_vision_tower``.
    """
    parts = str(config.get("mm_tunable_parts") or "").split(",")
    return bool(config.get("unfreeze_mm_vision_tower")) or TUNED_TOWER in parts


def tower_from_checkpoint(
    trained: bool, pinpoints: list[list[int]] | None, index: dict[str, Path] | None
) -> bool:
    """Whether the tower's weights are the checkpoint's ``model.vision_tower.vision_tower.*``.

    LLaVA takes them only when the config says the tower trained (``tower_trained``).
    LLaVA-NeXT's loader builds the tower before reading the checkpoint, so any tower tensors
    a LLaVA-NeXT (anyres) folder holds replace the hub tower, as transformers' conversion
    script also takes them.
    """
    held = any(name.startswith(TOWER_PREFIX) for name in index or {})
    return trained or (pinpoints is not None and held)


def current_tower_names(
    state: dict[str, torch.Tensor], expected: Collection[str]
) -> dict[str, torch.Tensor]:
    """A tower state dict as LLaVA saved it (transformers 4) under the tower's current names.

    transformers 4's ``CLIPVisionModel`` held its weights under ``vision_model.``, which
    transformers 5 dropped (its own loader strips the prefix the same way); releases before
    4.31 also saved the ``embeddings.position_ids`` buffer, which is rebuilt, not loaded.
    Names the tower already has are kept.
    """
    renamed = {}
    for name, tensor in state.items():
        current = name.removeprefix(LEGACY_TOWER_PREFIX)
        if name not in expected and current in expected:
            name = current
        if name in expected or not name.endswith("position_ids"):
            renamed[name] = tensor
    return renamed


def newline_tensor(index: dict[str, Path], config_path: Path) -> dict[str, torch.Tensor]:
    """``model.image_newline`` under mllm's projector name.

    Raises:
        ForeignFormatError: the weights hold no ``model.image_newline``.
    """
    found = read_tensors(index, NEWLINE_TENSOR)
    if "" not in found:
        raise ForeignFormatError(
            f"{config_path}: mm_patch_merge_type {MERGE!r} but the weights hold no "
            f"{NEWLINE_TENSOR} tensor"
        )
    return {NEWLINE: found[""]}
