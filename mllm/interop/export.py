"""``mllm export SRC --format hf-llava|hf-llava-next --out DIR``: write a model as a transformers
Llava (or LlavaNext) folder.

The folder loads with plain transformers, no mllm installed::

    model = LlavaForConditionalGeneration.from_pretrained(DIR)
    processor = AutoProcessor.from_pretrained(DIR, backend="pil")  # LlavaProcessor

and computes what mllm computes: the same tower layer(s) and CLS handling, the same MLP, the
same LLM and vocabulary (with the image token), and an image processor that pads to a square
with the mean colour when the model was trained with ``image_aspect_ratio: pad``. The
processor and tokenizer carry the model's template as a Jinja ``chat_template``
(``mllm.interop.chat_template``), so ``processor.apply_chat_template(messages,
add_generation_prompt=True)`` renders the prompt mllm renders, and the processor tokenizes it
to mllm's ids; ``mllm_export.json`` notes the template's name and the prompt tokenization the
weights were trained with.

Exportable: a ``clip`` or ``siglip`` tower and the ``mlp`` projector of depth 2 (LLaVA-1.5's;
Llava has no other projector); every other tower and projector is refused with its reason
(``REFUSED_TOWERS``, ``REFUSED_PROJECTORS``). The PIL image backend gives mllm's pixels
exactly; transformers' torchvision backend (its default where torchvision is installed) rounds
differently (``docs/interop.md``). SRC is an mllm checkpoint (adapters are merged first) or any
folder ``mllm.load`` reads (an original LLaVA checkpoint, for instance).

``hf-llava-next`` writes a ``LlavaNextForConditionalGeneration`` folder instead, for a model
trained with anyres images (``image_grid_pinpoints``) and ``mm_patch_merge_type:
spatial_unpad``: the same parts plus ``model.image_newline`` and a ``LlavaNextProcessor`` that
tiles images as mllm does (``mllm.interop.hf_llava_next``).

CPU:  mllm export runs/demo/shapes-mlp/instruct/final --format hf-llava --out runs/demo/hf
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import yaml
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
)
from transformers.image_processing_utils import BaseImageProcessor

from mllm.checkpoint import LoadedModel, load_mllm_checkpoint
from mllm.config import RecipeConfig, validate_recipe
from mllm.data.images import target_size
from mllm.data.tokenizer_template import TokenizerTemplateError, resolve_template
from mllm.interop.chat_template import ChatTemplateError, chat_template
from mllm.interop.detect import detect_format
from mllm.interop.hf_llava import EXPORT_NOTE, PROJECTOR_NAMES, TOWERS, strategy_for
from mllm.interop.hf_llava_next import llava_next_config, llava_next_image_processor, newline_state
from mllm.models.assembly import DTYPES
from mllm.models.catalog import VISION_TOWERS
from mllm.models.multimodal import MultimodalModel

logger = logging.getLogger(__name__)

#: Export format -> the transformers model and processor classes it writes.
HF_CLASSES = {
    "hf-llava": (LlavaForConditionalGeneration, LlavaProcessor),
    "hf-llava-next": (LlavaNextForConditionalGeneration, LlavaNextProcessor),
}
FORMATS = tuple(HF_CLASSES)
#: Image processor settings copied from the tower's processor into Llava's.
_PROCESSOR_FIELDS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)


class UnsupportedExportError(ValueError):
    """The export cannot be written: a part the format cannot hold, or an ``--out`` that would
    replace the source; the message names it."""


#: Why each tower mllm has but cannot export is refused (exportable: ``TOWERS``' values).
REFUSED_TOWERS = {
    "dinov2": "DINOv2; vLLM's Llava builds only CLIP, SigLIP and Pixtral towers, and mllm reads "
    "llava-hf folders with CLIP or SigLIP",
    "eva_clip": "BLIP-2's EVA ViT (Blip2VisionModel); vLLM's Llava builds only CLIP, SigLIP and "
    "Pixtral towers, and mllm reads llava-hf folders with CLIP or SigLIP",
}
#: Why each projector but the depth-2 MLP is refused: Llava's ``multi_modal_projector`` is
#: always linear_1 -> GELU -> linear_2, applied to each patch feature alone.
REFUSED_PROJECTORS = {
    "linear": "one linear layer; Llava's projector is always two with GELU between",
    "mlp": "Llava's projector has exactly two linear layers with GELU between (depth 2)",
    "qformer": "learned queries and cross-attention; Llava maps each patch on its own",
    "abstractor": "learned queries and cross-attention; Llava maps each patch on its own",
    "c_abstractor": "convolutions and pooling over the patch grid; Llava maps each patch on its "
    "own",
    "ldp": "pooling and a position convolution over the patch grid; Llava maps each patch on "
    "its own",
    "concat": "merges neighbouring patches into one token; Llava keeps one token per patch",
}


def check_exportable(recipe: RecipeConfig, format: str = "hf-llava") -> None:
    """Raise if transformers' Llava (or LlavaNext) cannot compute what this recipe's model
    computes.

    Exportable: a ``clip`` or ``siglip`` tower (any ``feature_layer`` and ``select``), the
    ``mlp`` projector of depth 2 and a plain LLM. Every other tower and projector of mllm's
    catalog is refused with its reason (``REFUSED_TOWERS``, ``REFUSED_PROJECTORS``), and so is a
    modality-adaptive LLM (mPLUG-Owl2's). ``hf-llava`` takes the ``flat`` merge of single
    images; ``hf-llava-next`` takes ``spatial_unpad`` with an anyres stage.

    Raises:
        UnsupportedExportError: listing every unsupported part (tower, projector, depth, LLM).
    """
    model = recipe.model
    problems = []
    tower = model.vision.name
    if tower not in TOWERS.values():
        reason = REFUSED_TOWERS.get(tower, f"Llava exports hold {sorted(TOWERS.values())} towers")
        problems.append(f"model.vision.name {tower!r}: {reason}")
    depth = getattr(model.projector, "depth", None)
    if model.projector.name != "mlp" or depth != 2:
        what = f"{model.projector.name!r}" + (f" (depth {depth})" if depth is not None else "")
        reason = REFUSED_PROJECTORS.get(
            model.projector.name, "Llava's projector is a 2-layer MLP with GELU ('mlp', depth 2)"
        )
        problems.append(f"model.projector {what}: {reason}")
    if getattr(model.llm, "modality_adaptive", False):
        problems.append(
            "model.llm.modality_adaptive: image tokens have their own norms and K/V projections; "
            "Llava's language model treats every token alike"
        )
    anyres = [name for name, stage in recipe.stages.items() if stage.data.image_grid_pinpoints]
    if format == "hf-llava-next":
        if model.mm_patch_merge_type != "spatial_unpad":
            problems.append(
                f"model.mm_patch_merge_type {model.mm_patch_merge_type!r}: LlavaNext always "
                "unpads the tiles and ends each row with image_newline ('spatial_unpad')"
            )
        if not anyres:
            problems.append("stages: none reads images as anyres (image_grid_pinpoints)")
    else:
        if model.mm_patch_merge_type != "flat":
            problems.append(
                f"model.mm_patch_merge_type {model.mm_patch_merge_type!r}: LLaVA-NeXT's learned "
                "image_newline and tile merge have no place in a Llava model (hf-llava-next)"
            )
        if anyres:
            problems.append(
                f"stages {anyres}: anyres images (several tiles each) are not Llava's single "
                "image (hf-llava-next)"
            )
    if problems:
        raise UnsupportedExportError(f"cannot export to {format}:\n  " + "\n  ".join(problems))


def llava_config(loaded: LoadedModel) -> LlavaConfig:
    """The ``LlavaConfig`` of a loaded mllm model (its tower and LLM configs, as they are)."""
    return LlavaConfig(**llava_fields(loaded))


def llava_fields(loaded: LoadedModel) -> dict:
    """The config fields Llava and LlavaNext share, for a loaded mllm model."""
    model, vision = loaded.built.model, loaded.recipe.model.vision
    layers = vision.feature_layer
    return dict(
        vision_config=model.vision.encoder.config.to_dict(),
        text_config=model.llm.config.to_dict(),
        image_token_index=model.image_token_id,
        image_seq_length=model.num_image_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy_for(vision.select, vision.name),
        vision_feature_layer=layers[0] if len(layers) == 1 else list(layers),
        multimodal_projector_bias=True,
        tie_word_embeddings=model.llm.config.get_text_config().tie_word_embeddings,
    )


def llava_state_dict(model: MultimodalModel) -> dict[str, torch.Tensor]:
    """mllm tensors under Llava's names (see ``mllm.interop.hf_llava``).

    Raises:
        UnsupportedExportError: an LLM tensor outside its base model and output head.
    """
    state = {f"model.vision_tower.{k}": v for k, v in model.vision.encoder.state_dict().items()}
    for ours, theirs in PROJECTOR_NAMES.items():
        for param in ("weight", "bias"):
            state[f"model.multi_modal_projector.{theirs}.{param}"] = model.projector.get_parameter(
                f"{ours}.{param}"
            )
    llm = model.llm
    base = llm.base_model_prefix
    head = next(name for name, m in llm.named_modules() if m is llm.get_output_embeddings())
    for name, tensor in llm.state_dict().items():
        if name.startswith(f"{base}."):
            state[f"model.language_model.{name[len(base) + 1 :]}"] = tensor
        elif name.startswith(f"{head}."):
            state[f"lm_head.{name[len(head) + 1 :]}"] = tensor
        else:
            raise UnsupportedExportError(f"LLM tensor {name!r} has no place in a Llava model")
    return state


def llava_image_processor(processor: BaseImageProcessor, mode: str) -> BaseImageProcessor:
    """A ``LlavaImageProcessor`` giving the pixels ``mllm.data.images.prepare_image`` gives.

    ``pad``: Llava's ``do_pad`` (expand to a square with the mean colour), then the tower's
    resize/crop; ``crop``: the tower's processing as is; ``resize``: stretch to the output size.
    """
    from transformers import LlavaImageProcessorPil

    fields = {f: getattr(processor, f) for f in _PROCESSOR_FIELDS if hasattr(processor, f)}
    fields = {k: v for k, v in fields.items() if v is not None}
    if mode == "resize":
        height, width = target_size(processor)
        fields.update(size={"height": height, "width": width}, do_center_crop=False)
    fields.setdefault("do_center_crop", False)
    return LlavaImageProcessorPil(**fields, do_pad=mode == "pad")


def _load(
    source: Path,
    dtype: torch.dtype,
    format: str,
    *,
    vision_tower_path: str | None,
    base_llm: str | None,
) -> LoadedModel:
    """Any model folder mllm reads, adapters merged into the LLM (in fp32, as ``mllm merge``)."""
    if detect_format(source) != "mllm":
        from mllm.interop import load_llava_folder

        return load_llava_folder(
            source, dtype=dtype, vision_tower_path=vision_tower_path, base_llm=base_llm
        )
    from mllm.checkpoint import RECIPE_NAME, read_manifest
    from mllm.models.lora import merge_adapters

    if vision_tower_path or base_llm:
        raise UnsupportedExportError(
            f"{source}: an mllm checkpoint records its tower and LLM; --vision-tower and "
            "--base-llm are for original LLaVA folders"
        )
    # Refuse before loading: a large model takes minutes to load.
    recipe_path = source / RECIPE_NAME
    raw = yaml.safe_load(recipe_path.read_text())
    check_exportable(validate_recipe(raw, str(recipe_path), check_files=False), format)
    adapted = bool(read_manifest(source).get("adapters"))
    loaded = load_mllm_checkpoint(source, dtype=torch.float32 if adapted else dtype)
    if adapted:
        merge_adapters(loaded.built.model)
        loaded.built.model.to(dtype)
    return loaded


def export_hf_llava(
    source: str | Path,
    out: str | Path,
    *,
    dtype: str = "fp32",
    vision_tower_path: str | None = None,
    base_llm: str | None = None,
    format: str = "hf-llava",
) -> Path:
    """Write ``source`` as a transformers Llava (or LlavaNext) folder at ``out`` (atomically).

    Args:
        source: an mllm checkpoint, or a folder ``mllm.load`` reads.
        out: the folder to create (replaced if it exists).
        dtype: ``fp32``, ``bf16`` or ``fp16`` for the saved weights.
        vision_tower_path, base_llm: passed on for original LLaVA checkpoints.
        format: ``hf-llava`` (``LlavaForConditionalGeneration``) or ``hf-llava-next``
            (``LlavaNextForConditionalGeneration``, for anyres ``spatial_unpad`` models).

    Returns:
        ``out``.

    Raises:
        UnsupportedExportError: a part Llava cannot hold (tower, projector), a template the
            chat template cannot express, or LLaVA-only options for an mllm checkpoint.
        ForeignFormatError, CheckpointError: ``source`` cannot be read.
    """
    from mllm.checkpoint import commit_staging, prepare_staging

    source, out = Path(source).resolve(), Path(out).resolve()
    if source.is_relative_to(out):
        raise UnsupportedExportError(f"{out} would replace {source}; export to another folder")
    if format not in HF_CLASSES:
        raise UnsupportedExportError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    model_class, processor_class = HF_CLASSES[format]
    loaded = _load(
        source, DTYPES[dtype], format, vision_tower_path=vision_tower_path, base_llm=base_llm
    )
    check_exportable(loaded.recipe, format)
    anyres = format == "hf-llava-next"
    if anyres != (loaded.image_aspect_ratio == "anyres"):
        raise UnsupportedExportError(
            f"{source}: its stage reads images as {loaded.image_aspect_ratio!r}; {format} "
            f"needs {'anyres' if anyres else 'single'} images"
        )
    fields = llava_fields(loaded)
    config = llava_next_config(loaded, fields) if anyres else LlavaConfig(**fields)
    state = llava_state_dict(loaded.built.model)
    if anyres:
        state.update(newline_state(loaded.built.model.projector))
    with torch.device("meta"):
        hf = model_class(config)
    hf.load_state_dict(state, strict=True, assign=True)
    hf.generation_config = loaded.built.model.llm.generation_config
    vision = loaded.recipe.model.vision
    image_token = loaded.built.image_token
    try:
        template = chat_template(
            resolve_template(loaded.template, loaded.built.tokenizer), image_token
        )
    except (ChatTemplateError, TokenizerTemplateError) as exc:
        raise UnsupportedExportError(f"cannot export to {format}: {exc}") from None
    tokenizer = loaded.built.tokenizer
    tokenizer.chat_template = template  # servers that read the tokenizer's template (SGLang)
    if anyres:
        image_processor = llava_next_image_processor(
            loaded.built.image_processor, loaded.image_grid_pinpoints
        )
    else:
        image_processor = llava_image_processor(
            loaded.built.image_processor, loaded.image_aspect_ratio
        )
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=loaded.built.model.vision.encoder.config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=image_token,
        num_additional_image_tokens=int(VISION_TOWERS.get(vision.name).target.has_cls_token),
        chat_template=template,
    )
    staging = prepare_staging(out)
    hf.save_pretrained(str(staging))
    processor.save_pretrained(str(staging))
    note = {
        "source": str(source),
        "template": loaded.template,
        "family": loaded.recipe.model.llm.family,
        "image_aspect_ratio": loaded.image_aspect_ratio,
        "num_image_tokens": loaded.built.model.num_image_tokens,
        # How the weights saw prompts in training: "mllm" (the whole text at once, as the
        # exported processor does) or "llava" (piece by piece around each image).
        "prompt_tokenization": loaded.manifest.get("prompt_tokenization", "mllm"),
    }
    (staging / EXPORT_NOTE).write_text(json.dumps(note, indent=2) + "\n")
    commit_staging(out)
    logger.info("exported %s as %s to %s", source, format, out)
    return out
