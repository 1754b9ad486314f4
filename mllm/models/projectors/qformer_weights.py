"""Fill a ``qformer`` projector from checkpoints: BERT (BLIP-2's start) or a trained Q-Former.

Names in BLIP-2 / LAVIS / MiniGPT-4 (``Qformer.bert.encoder.layer.N...``), transformers
(``qformer.encoder.layer.N...``) and BERT checkpoints map onto the projector's own names;
tensors load where the shapes match, and a report says what did not.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Prefixes in front of the Q-Former in LAVIS / MiniGPT-4 (``Qformer.bert.``), transformers
# (``qformer.``, ``model.qformer.``) and BERT (``bert.``) checkpoints.
_PREFIXES = ("model.", "Qformer.", "qformer.", "bert.")
_TOP_LEVEL = {
    "query_tokens": "qformer.query_tokens",
    "embeddings.LayerNorm": "qformer.query_norm",  # BERT and LAVIS
    "layernorm": "qformer.query_norm",  # transformers Blip2QFormerModel
    "ln_vision": "qformer.vision_norm",  # LAVIS / MiniGPT-4
    "vision_model.post_layernorm": "qformer.vision_norm",  # transformers Blip-2
    "language_projection": "out_proj",  # transformers Blip-2
    "llm_proj": "out_proj",  # InstructBLIP (LAVIS)
    "llama_proj": "out_proj",  # MiniGPT-4
    "opt_proj": "out_proj",  # BLIP-2 OPT (LAVIS)
    "t5_proj": "out_proj",  # BLIP-2 FlanT5 (LAVIS)
}
_BLOCK: dict[str, str] = {
    "intermediate_query.dense": "ffn.up",
    "output_query.dense": "ffn.down",
    "output_query.LayerNorm": "ffn.norm",
}
for _theirs, _ours in (("attention", "self_attn"), ("crossattention", "cross_attn")):
    for _inner in ("self", "attention"):  # LAVIS/BERT say .self., transformers .attention.
        for _a, _b in (("query", "q"), ("key", "k"), ("value", "v")):
            _BLOCK[f"{_theirs}.{_inner}.{_a}"] = f"{_ours}.{_b}"
    _BLOCK[f"{_theirs}.output.dense"] = f"{_ours}.out"
    _BLOCK[f"{_theirs}.output.LayerNorm"] = f"{_ours}.norm"
# BERT has one FFN; BLIP-2 copies it into the query FFN. A Q-Former's own text FFN is not used.
_BERT_FFN = {
    "intermediate.dense": "ffn.up",
    "output.dense": "ffn.down",
    "output.LayerNorm": "ffn.norm",
}
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")


def map_qformer_key(key: str, *, bert: bool = False) -> str | None:
    """This projector's parameter name for a checkpoint key, or None if it has no counterpart.

    Args:
        key: e.g. ``Qformer.bert.encoder.layer.0.crossattention.self.key.weight`` (LAVIS) or
            ``qformer.encoder.layer.0.attention.attention.query.bias`` (transformers).
        bert: map BERT's single FFN (``intermediate`` / ``output``) onto the query FFN.
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    module, _, param = key.rpartition(".")
    if key in _TOP_LEVEL:  # a bare parameter such as query_tokens
        return _TOP_LEVEL[key]
    if module in _TOP_LEVEL:
        return f"{_TOP_LEVEL[module]}.{param}"
    match = _LAYER.fullmatch(module)
    if match is None:
        return None
    index, inner = match.groups()
    table = {**_BLOCK, **_BERT_FFN} if bert else _BLOCK
    return f"qformer.layers.{index}.{table[inner]}.{param}" if inner in table else None


@dataclass
class LoadReport:
    """What :func:`load_qformer_state_dict` did, by parameter name."""

    source: str
    loaded: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint (..) vs ours (..)"
    unused: list[str] = field(default_factory=list)  # checkpoint keys with no counterpart
    missing: list[str] = field(default_factory=list)  # our parameters left as they were

    def summary(self) -> str:
        lines = [
            f"Q-Former weights from {self.source}: {len(self.loaded)} loaded, "
            f"{len(self.mismatched)} shape mismatches, {len(self.unused)} unused, "
            f"{len(self.missing)} left as initialised"
        ]
        for title, names in (("shape mismatch", self.mismatched), ("not loaded", self.missing)):
            lines += [f"  {title}: {name}" for name in names]
        return "\n".join(lines)


def load_qformer_state_dict(
    projector: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    projection: bool = False,
    bert: bool = False,
    source: str = "state dict",
) -> LoadReport:
    """Copy every tensor whose mapped name and shape match into ``projector``.

    Args:
        projector: the projector to fill (in place, whatever its ``requires_grad``).
        state_dict: a BLIP-2 / LAVIS / MiniGPT-4 / transformers checkpoint (whole-model keys
            are fine: the vision tower and LLM keys end up in ``unused``), or a BERT one.
        projection: also load the projection to the LLM (``out_proj``); otherwise its keys
            are reported as unused.
        bert: treat it as a BERT checkpoint (its FFN initialises the query FFN).
        source: named in the report and the log.

    Returns:
        A :class:`LoadReport`; it is also logged.
    """
    report = LoadReport(source)
    ours = projector.state_dict()
    for key, tensor in state_dict.items():
        name = map_qformer_key(key, bert=bert)
        if name is None or name not in ours or (name.startswith("out_proj.") and not projection):
            report.unused.append(key)
        elif ours[name].shape != tensor.shape:
            report.mismatched.append(
                f"{name}: {key} {tuple(tensor.shape)} vs ours {tuple(ours[name].shape)}"
            )
        elif name not in report.loaded:
            with torch.no_grad():
                ours[name].copy_(tensor.to(ours[name].dtype))
            report.loaded.append(name)
    report.missing = [name for name in ours if name not in report.loaded]
    logger.info("%s", report.summary())
    return report


def load_bert_weights(projector: nn.Module, folder: str) -> LoadReport:
    """Initialise self-attention, FFN and the query norm from a local BERT folder.

    Raises:
        FileNotFoundError: ``folder`` is not a local directory (nothing is downloaded).
    """
    from transformers import BertModel

    if not Path(folder).is_dir():
        raise FileNotFoundError(
            f"model.projector.init_from: {folder!r} is not a local folder with a BERT checkpoint"
        )
    bert = BertModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    return load_qformer_state_dict(projector, bert.state_dict(), bert=True, source=folder)


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint that may hold a Q-Former, on CPU.

    Args:
        path: a ``.safetensors`` file, a torch file (``.pth``/``.bin``/``.pt``; LAVIS wraps its
            state dict in ``{"model": ...}``), or a folder of ``*.safetensors`` shards, from
            which only keys with a Q-Former counterpart are read.

    Raises:
        FileNotFoundError: nothing at ``path``, or a folder without safetensors files.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        shards = sorted(p.glob("*.safetensors"))
        if not shards:
            raise FileNotFoundError(f"model.projector.qformer_weights: no *.safetensors in {p}")
        tensors = {}
        for shard in shards:
            with safe_open(shard, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if map_qformer_key(key) is not None:
                        tensors[key] = f.get_tensor(key)
        return tensors
    if not p.is_file():
        raise FileNotFoundError(f"model.projector.qformer_weights: no file or folder {p}")
    if p.suffix == ".safetensors":
        return load_file(p)
    state = torch.load(p, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state
