"""Original LLaVA checkpoints (haotian-liu/LLaVA, the LLaVA-1.5 layout) as mllm models, and
``mllm convert-llava``, which turns their pickled ``.bin`` weights into safetensors once::

    config.json        the LLM's config plus LLaVA's keys: architectures [LlavaLlamaForCausalLM],
                       mm_vision_tower (a hub id), mm_projector_type (linear, mlp2x_gelu, ...),
                       mm_hidden_size, mm_vision_select_layer, mm_vision_select_feature,
                       image_aspect_ratio, mm_use_im_start_end, unfreeze_mm_vision_tower;
                       LLaVA-NeXT adds anyres (``mllm.interop.llava_next``)
    model*.safetensors the LLM (model.*, lm_head.*), the projector (model.mm_projector.*), the
                       tower (model.vision_tower.vision_tower.*), LLaVA-NeXT's model.image_newline
    tokenizer files
    stage 1 (projector only): config.json and mm_projector.safetensors; the LLM is a separate
                       base model (LLaVA's --model-base), given as ``base_llm`` / --base-llm

As in LLaVA, the tower comes from ``mm_vision_tower`` unless the config says the tower was
trained (``unfreeze_mm_vision_tower``), in which case its weights come from the checkpoint
(LLaVA-NeXT: see ``tower_from_checkpoint``).
Nothing is downloaded: pass ``vision_tower_path`` / --vision-tower for a local copy.

CPU:  mllm convert-llava llava-v1.5-7b --out llava-v1.5-7b-safetensors
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedConfig,
)

from mllm.checkpoint import LoadedModel
from mllm.config.schema import VisionTowerConfig
from mllm.interop import llava_next
from mllm.interop.assemble import (
    assemble,
    imported_manifest,
    imported_recipe,
    load_imported_tokenizer,
)
from mllm.interop.detect import ForeignFormatError, detect_format, read_json
from mllm.interop.llava_next import TOWER_PREFIX
from mllm.interop.llava_prompts import llava_prompt_ids as llava_prompt_ids  # re-exported
from mllm.interop.weights import bin_files, convert_bin_files, read_tensors, safetensors_index
from mllm.models.attention import load_with_attention, resolve_attn_implementation
from mllm.models.catalog import VISION_TOWERS
from mllm.models.llm import disable_cpu_repacking
from mllm.models.quantization import llm_load_options

logger = logging.getLogger(__name__)

#: LLaVA's model classes (``architectures`` in config.json) -> (mllm LLM family, LLM config).
ARCHITECTURES: dict[str, tuple[str, type[PreTrainedConfig]]] = {
    "LlavaLlamaForCausalLM": ("vicuna", LlamaConfig),
    "LlavaMistralForCausalLM": ("mistral", MistralConfig),
}
#: Keys LLaVA adds to the LLM's config; the rest of config.json is the LLM's own config.
_LLAVA_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "image_aspect_ratio",
        "image_grid_pinpoints",
        "use_mm_proj",
        "tune_mm_mlp_adapter",
        "freeze_mm_mlp_adapter",
        "tune_mm_vision_resampler",
        "freeze_mm_vision_resampler",
        "unfreeze_mm_vision_tower",
        "tokenizer_model_max_length",
        "tokenizer_padding_side",
        "s2",
        "s2_scales",
        *llava_next.CONFIG_KEYS,
    }
)
#: LLaVA's image_aspect_ratio -> mllm image mode. LLaVA pads only for "pad"; any other value
#: (None, "square") runs the processor as is, i.e. CLIP's resize and centre crop.
_IMAGE_MODES = {"pad": "pad", None: "crop", "square": "crop"}
_MLP = re.compile(r"^mlp(\d+)x_gelu$")
PROJECTOR_PREFIX = "model.mm_projector."


@dataclass(frozen=True)
class LlavaSpec:
    """What a LLaVA config.json says, in mllm's terms."""

    config_path: Path
    family: str
    llm_config: PreTrainedConfig
    tower: str
    vision: dict
    projector: dict
    image_aspect_ratio: str
    mm_hidden_size: int | None
    tower_in_checkpoint: bool
    trained_from: str | None
    image_grid_pinpoints: list[list[int]] | None
    template: str | None = None  # None: the family's


def read_llava_config(folder: Path) -> LlavaSpec:
    """Map a LLaVA config.json to mllm's tower, projector, LLM and image settings.

    Raises:
        ForeignFormatError: a value mllm cannot reproduce; the message names the key.
    """
    path = folder / "config.json"
    config = read_json(path)
    architectures = config.get("architectures") or []
    known = [a for a in architectures if a in ARCHITECTURES]
    if not known:
        raise ForeignFormatError(
            f"{path}: architectures {architectures} has no LLaVA model mllm can load; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    family, config_class = ARCHITECTURES[known[0]]
    template = None
    if family == "vicuna" and llava_next.llama3_llm(config, folder):
        family, template = llava_next.LLAMA3_FAMILY, llava_next.LLAMA3_TEMPLATE

    def unsupported(key: str, why: str) -> ForeignFormatError:
        return ForeignFormatError(f"{path}: {key} {config.get(key)!r}: {why}")

    if config.get("mm_use_im_start_end"):
        raise unsupported("mm_use_im_start_end", "image start/end tokens are not supported")
    if config.get("s2"):
        raise unsupported("s2", "multi-scale (S2) towers are not supported")
    pinpoints = llava_next.read_anyres_pinpoints(config, path, _IMAGE_MODES)
    aspect = config.get("image_aspect_ratio")
    select = config.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise unsupported("mm_vision_select_feature", "supported: 'patch', 'cls_patch'")
    layer = config.get("mm_vision_select_layer", -2)
    if not isinstance(layer, int):
        raise unsupported("mm_vision_select_layer", "expected one integer layer index")
    if "mm_vision_tower" not in config:
        raise ForeignFormatError(f"{path}: no mm_vision_tower key: which tower was trained?")
    kind = config.get("mm_projector_type", "linear")
    match = _MLP.match(str(kind))
    if kind == "linear":
        projector = {"name": "linear"}
    elif match:
        projector = {"name": "mlp", "depth": int(match[1])}
    else:
        raise unsupported("mm_projector_type", "supported: 'linear' and 'mlpNx_gelu'")
    llm_fields = {
        k: v for k, v in config.items() if k not in _LLAVA_KEYS and not k.startswith("mm_")
    }
    return LlavaSpec(
        config_path=path,
        family=family,
        llm_config=config_class.from_dict(llm_fields),
        tower=str(config["mm_vision_tower"]),
        vision={"name": "clip", "feature_layer": [layer], "select": select},
        projector=projector,
        image_aspect_ratio=llava_next.ANYRES if pinpoints else _IMAGE_MODES[aspect],
        mm_hidden_size=config.get("mm_hidden_size"),
        tower_in_checkpoint=llava_next.tower_trained(config),
        trained_from=config.get("_name_or_path"),
        image_grid_pinpoints=pinpoints,
        template=template,
    )


def _projector_tensors(index: dict[str, Path], projector: dict) -> dict[str, torch.Tensor]:
    """LLaVA's ``model.mm_projector.*`` tensors under mllm's projector names (the MLP is the same
    ``nn.Sequential`` of Linear/GELU, so indices carry over; the linear map is ``proj``)."""
    tensors = read_tensors(index, PROJECTOR_PREFIX)
    if projector["name"] == "linear":
        return {f"proj.{name}": tensor for name, tensor in tensors.items()}
    return {f"layers.{name}": tensor for name, tensor in tensors.items()}


def load_llava(
    folder: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    quantize: str | None = None,
    vision_tower_path: str | None = None,
    base_llm: str | None = None,
    template: str | None = None,
) -> LoadedModel:
    """Load an original LLaVA checkpoint (full, or stage-1 projector plus ``base_llm``).

    Args:
        folder: the checkpoint folder, with safetensors weights.
        dtype: parameter dtype.
        device: where the model runs.
        quantize: ``4bit`` (NF4) or ``8bit`` for the LLM's linear layers (bitsandbytes).
        vision_tower_path: a local copy of the tower config.json names (``mm_vision_tower``).
        base_llm: the LLM a projector-only (stage-1) checkpoint was trained on.
        template: conversation template; default: the LLM family's (``vicuna_v1`` for LLaVA-1.5),
            ``llava_llama_3`` for a Llama-3 LLaVA-NeXT folder, ``plain`` for a projector-only
            checkpoint (LLaVA pretrains with it).

    Raises:
        ForeignFormatError: pickled weights only, a missing tower or base LLM, or a config value
            mllm cannot reproduce; the message says what to pass or run.
    """
    spec = read_llava_config(folder)
    if (folder / "adapter_config.json").is_file():
        raise ForeignFormatError(
            f"{folder}: a LoRA LLaVA checkpoint (adapter_config.json); merge it with LLaVA's "
            "scripts/merge_lora_weights.py first"
        )
    llm_index = safetensors_index(folder, "model")
    projector_index = safetensors_index(folder, "mm_projector") or llm_index
    if projector_index is None:
        pickled = ", ".join(p.name for p in bin_files(folder)) or "none"
        raise ForeignFormatError(
            f"{folder}: no safetensors weights (pickled: {pickled}); convert them once with "
            f"`mllm convert-llava {folder} --out NEW_FOLDER` and load NEW_FOLDER"
        )
    stage1 = llm_index is None
    if stage1 and base_llm is None:
        raise ForeignFormatError(
            f"{folder}: a projector-only (stage-1) checkpoint; pass the LLM it was trained on "
            f"with base_llm= / --base-llm PATH (config.json says {spec.trained_from!r})"
        )
    recipe = imported_recipe(
        folder,
        vision={**spec.vision, "path": vision_tower_path or spec.tower},
        projector=spec.projector,
        llm={"path": str(base_llm if stage1 else folder), "family": spec.family},
        image_token="<image>",
        template=template or ("plain" if stage1 else spec.template),
        image_aspect_ratio=spec.image_aspect_ratio,
        image_grid_pinpoints=spec.image_grid_pinpoints,
    )
    attn = resolve_attn_implementation("auto", "warn", f"{folder}")
    vision = _load_tower(recipe.model.vision, spec, dtype, attn)
    if llava_next.tower_from_checkpoint(
        spec.tower_in_checkpoint, spec.image_grid_pinpoints, llm_index
    ):
        _load_tower_weights(vision.encoder, llm_index or {}, folder)
    projector_state = _projector_tensors(projector_index, spec.projector)
    if spec.image_grid_pinpoints:
        projector_state |= llava_next.newline_tensor(llm_index or projector_index, spec.config_path)
    tokenizer = load_imported_tokenizer(recipe)
    if not stage1:
        logger.info("loading the LLM of %s; its tower and projector tensors load apart", folder)
    llm_options = llm_load_options(dtype, quantize, device)
    if not stage1:  # config.json's model_type is LLaVA's; the LLM's own config is read from it
        llm_options["config"] = spec.llm_config
    llm = load_with_attention(
        lambda **a: AutoModelForCausalLM.from_pretrained(recipe.model.llm.path, **llm_options, **a),
        attn,
        recipe.model.llm.path,
    )
    if quantize is not None:
        disable_cpu_repacking(llm)
    return assemble(
        recipe,
        vision=vision,
        llm=llm,
        tokenizer=tokenizer,
        projector_state=projector_state,
        projector_source=f"{folder} ({PROJECTOR_PREFIX}*)",
        dtype=dtype,
        device=device,
        quantized=quantize is not None,
        manifest=imported_manifest(folder, "llava", prompt_tokenization="llava"),
    )


def _load_tower(config: VisionTowerConfig, spec: LlavaSpec, dtype: torch.dtype, attn: str):
    tower_class = VISION_TOWERS.get(config.name).target
    try:
        vision = load_with_attention(
            lambda **a: tower_class.from_pretrained(config, dtype=dtype, **a), attn, config.path
        )
    except (OSError, ValueError) as exc:
        raise ForeignFormatError(
            f"{spec.config_path}: cannot load the vision tower {config.path!r} "
            f"(mm_vision_tower {spec.tower!r}): {exc}; pass a local copy with "
            "vision_tower_path= / --vision-tower PATH"
        ) from None
    width = vision.hidden_size
    if spec.mm_hidden_size is not None and width != spec.mm_hidden_size:
        raise ForeignFormatError(
            f"{spec.config_path}: mm_hidden_size is {spec.mm_hidden_size} but the tower "
            f"{config.path} gives {width} features: is it the tower this model was trained with?"
        )
    return vision


def _load_tower_weights(encoder: torch.nn.Module, index: dict[str, Path], folder: Path) -> None:
    """The trained tower's tensors from the checkpoint (``unfreeze_mm_vision_tower``)."""
    state = read_tensors(index, TOWER_PREFIX)
    if not state:
        raise ForeignFormatError(
            f"{folder}/config.json says the tower was trained (unfreeze_mm_vision_tower or "
            f"mm_tunable_parts) but the weights hold no {TOWER_PREFIX}* tensors"
        )
    state = llava_next.current_tower_names(state, encoder.state_dict().keys())
    try:
        encoder.load_state_dict({k: v.to(encoder.dtype) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ForeignFormatError(
            f"{folder}: {TOWER_PREFIX}* tensors do not fit the tower: {exc}"
        ) from None


def convert_llava(src: str | Path, out: str | Path) -> Path:
    """Copy a LLaVA checkpoint to ``out`` with its ``.bin`` weights as safetensors (atomically).

    Other top-level files (config, tokenizer, generation config) are copied as they are.

    Raises:
        ForeignFormatError: ``src`` is no LLaVA checkpoint, has no ``.bin`` weights, or is ``out``.
    """
    from mllm.checkpoint import commit_staging, prepare_staging

    src, out = Path(src).resolve(), Path(out).resolve()
    if detect_format(src) != "llava":
        raise ForeignFormatError(f"{src}: not an original LLaVA checkpoint")
    read_llava_config(src)
    if src == out:
        raise ForeignFormatError(f"{out}: write the converted copy to another folder")
    if not bin_files(src):
        raise ForeignFormatError(f"{src}: no .bin weights to convert; load the folder directly")
    staging = prepare_staging(out)
    skip = {p.name for p in bin_files(src)} | {"pytorch_model.bin.index.json"}
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name not in skip:
            shutil.copy2(path, staging / path.name)
    written = convert_bin_files(src, staging)
    commit_staging(out)
    logger.info("converted %s -> %s (%s)", src, out, ", ".join(p.name for p in written))
    return out
