"""transformers' Llava ("llava-hf" folders) <-> mllm: the field and tensor correspondence.

``LlavaForConditionalGeneration`` is mllm's composition under other module names (on disk
transformers writes its 4.x tensor names, ``language_model.model.*`` and so on, and reads
both)::

    model.vision_tower.*                  vision.encoder.*      (CLIP or SigLIP vision model)
    model.multi_modal_projector.linear_1  projector.layers.0    (2-layer MLP, GELU between)
    model.multi_modal_projector.linear_2  projector.layers.2
    model.language_model.*                llm.<base model>.*    (e.g. llm.model.*)
    lm_head.*                             llm.lm_head.*

``vision_feature_layer`` is mllm's ``feature_layer``; ``vision_feature_select_strategy``
``default`` drops the first token (CLIP's CLS: ``select: patch``), ``full`` keeps all. The
processor's ``do_pad`` is LLaVA's expand-to-square (``image_aspect_ratio: pad``). transformers'
classes stay the source of truth for these fields: folders are read with ``LlavaConfig`` and
``from_pretrained``, never by parsing their JSON by hand. ``LlavaNextForConditionalGeneration``
("llava-next-hf") is the same plus anyres (``mllm.interop.hf_llava_next``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

from mllm.checkpoint import LoadedModel
from mllm.interop.assemble import (
    assemble,
    imported_manifest,
    imported_recipe,
    load_imported_tokenizer,
)
from mllm.interop.detect import ForeignFormatError
from mllm.interop.hf_llava_next import NEWLINE, tile_processor
from mllm.models.attention import load_with_attention, resolve_attn_implementation
from mllm.models.catalog import VISION_TOWERS
from mllm.models.llm import disable_cpu_repacking
from mllm.models.quantization import llm_load_options

#: transformers vision model types that Llava can hold and mllm has a tower for.
TOWERS = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
#: Text model types -> mllm LLM family (pad token, default template, LoRA targets).
FAMILIES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
#: Written by ``mllm export`` next to the model: what a Llava config cannot say (template).
EXPORT_NOTE = "mllm_export.json"
#: mllm projector tensor names <-> Llava's.
PROJECTOR_NAMES = {"layers.0": "linear_1", "layers.2": "linear_2"}
#: Folder kind -> transformers' config and model classes (LlavaNext: ``hf_llava_next``).
HF_CLASSES = {
    "llava-hf": (LlavaConfig, LlavaForConditionalGeneration),
    "llava-next-hf": (LlavaNextConfig, LlavaNextForConditionalGeneration),
}


def select_for(strategy: str, tower: str, source: str) -> str:
    """mllm's ``select`` for a Llava ``vision_feature_select_strategy`` and tower.

    Raises:
        ForeignFormatError: ``default`` on a tower without CLS token would drop a real patch.
    """
    has_cls = VISION_TOWERS.get(tower).target.has_cls_token
    if strategy == "full":
        return "cls_patch" if has_cls else "patch"
    if has_cls:
        return "patch"
    raise ForeignFormatError(
        f"{source}: vision_feature_select_strategy 'default' drops the first token, but the "
        f"{tower} tower has no CLS token, so that would drop a patch; mllm keeps every patch"
    )


def strategy_for(select: str, tower: str) -> str:
    """Llava's ``vision_feature_select_strategy`` for mllm's ``select`` on ``tower``."""
    has_cls = VISION_TOWERS.get(tower).target.has_cls_token
    return "default" if has_cls and select == "patch" else "full"


def _read_spec(folder: Path, config: LlavaConfig | LlavaNextConfig) -> tuple[dict, dict, str]:
    """The mllm vision, projector and family settings a Llava config describes."""
    source = f"{folder}/config.json"
    vision_type = config.vision_config.model_type
    if vision_type not in TOWERS:
        raise ForeignFormatError(
            f"{source}: vision_config.model_type {vision_type!r} is not supported; mllm "
            f"reads {', '.join(TOWERS)}"
        )
    tower = TOWERS[vision_type]
    layers = config.vision_feature_layer
    vision = {
        "name": tower,
        "path": str(folder),
        "feature_layer": [layers] if isinstance(layers, int) else list(layers),
        "select": select_for(config.vision_feature_select_strategy, tower, source),
    }
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        raise ForeignFormatError(
            f"{source}: projector_hidden_act {config.projector_hidden_act!r} with "
            f"multimodal_projector_bias {config.multimodal_projector_bias}: mllm's MLP projector "
            "is 'gelu' with biases"
        )
    text_type = config.text_config.model_type
    if text_type not in FAMILIES:
        raise ForeignFormatError(
            f"{source}: text_config.model_type {text_type!r} has no mllm LLM family; known: "
            f"{', '.join(FAMILIES)}"
        )
    return vision, {"name": "mlp", "depth": 2}, FAMILIES[text_type]


def load_hf_llava(
    folder: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    quantize: str | None = None,
    template: str | None = None,
    kind: str = "llava-hf",
) -> LoadedModel:
    """Load a transformers Llava or LlavaNext folder as an mllm model (the same modules,
    renamed; LlavaNext's anyres as ``mm_patch_merge_type: spatial_unpad``).

    Args:
        folder: a ``LlavaForConditionalGeneration`` folder with its processor and tokenizer
            (``kind`` ``llava-hf``), or a ``LlavaNextForConditionalGeneration`` one
            (``llava-next-hf``).
        dtype: parameter dtype.
        device: where the model runs.
        quantize: ``4bit`` (NF4) or ``8bit`` for the language model's linear layers.
        template: conversation template; default: the one ``mllm export`` noted, else the
            LLM family's.

    Raises:
        ForeignFormatError: a tower, projector or LLM mllm has no counterpart for.
    """
    config_class, model_class = HF_CLASSES[kind]
    config = config_class.from_pretrained(folder)
    anyres = kind == "llava-next-hf"
    vision, projector, family = _read_spec(folder, config)
    note_path = folder / EXPORT_NOTE
    note = json.loads(note_path.read_text()) if note_path.is_file() else {}
    processor = AutoProcessor.from_pretrained(folder, backend="pil")  # a Llava(Next)Processor
    image_token, image_processor = processor.image_token, processor.image_processor
    if anyres:
        image_aspect_ratio, image_processor = "anyres", tile_processor(image_processor)
    else:
        image_aspect_ratio = "pad" if getattr(image_processor, "do_pad", False) else "crop"
    recipe = imported_recipe(
        folder,
        vision=vision,
        projector=projector,
        llm={"path": str(folder), "family": note.get("family", family)},
        image_token=image_token,
        template=template or note.get("template"),
        image_aspect_ratio=image_aspect_ratio,
        image_grid_pinpoints=config.image_grid_pinpoints if anyres else None,
    )
    tokenizer = load_imported_tokenizer(recipe)
    if tokenizer.convert_tokens_to_ids(image_token) != config.image_token_id:
        raise ForeignFormatError(
            f"{folder}: the tokenizer gives {image_token!r} id "
            f"{tokenizer.convert_tokens_to_ids(image_token)}, config.json image_token_index "
            f"says {config.image_token_id}"
        )
    attn = resolve_attn_implementation("auto", "warn", str(folder))
    kept = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]  # not 4-bit
    hf = load_with_attention(
        lambda **a: model_class.from_pretrained(
            folder, **llm_load_options(dtype, quantize, device, skip_modules=kept), **a
        ),
        attn,
        str(folder),
    )
    tower_class = VISION_TOWERS.get(recipe.model.vision.name).target
    tower = tower_class(recipe.model.vision, hf.model.vision_tower, image_processor)
    llm = _causal_lm(hf, folder)
    if quantize is not None:
        disable_cpu_repacking(llm)
    projector_state = {
        f"{ours}.{param}": hf.model.multi_modal_projector.get_submodule(theirs).get_parameter(param)
        for ours, theirs in PROJECTOR_NAMES.items()
        for param in ("weight", "bias")
    }
    if anyres:
        projector_state[NEWLINE] = hf.model.image_newline
    return assemble(
        recipe,
        vision=tower,
        llm=llm,
        tokenizer=tokenizer,
        projector_state=projector_state,
        projector_source=f"{folder} (model.multi_modal_projector.*)",
        dtype=dtype,
        device=device,
        quantized=quantize is not None,
        manifest=imported_manifest(folder, kind, prompt_tokenization=_tokenization(note)),
    )


def _tokenization(note: dict) -> str:
    """How the folder's weights saw prompts in training: ``llava`` (piece by piece around each
    image) for an export of an original LLaVA checkpoint, as its note says; else ``mllm`` (the
    whole text at once, as transformers' processor and mllm's training tokenize)."""
    kind = note.get("prompt_tokenization", "mllm")
    if kind not in ("mllm", "llava"):
        raise ForeignFormatError(
            f"{EXPORT_NOTE}: prompt_tokenization {kind!r} is not mllm or llava"
        )
    return kind


def _causal_lm(hf: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """The text model and head of ``hf`` as a causal LM of their own (the modules are moved,
    not copied): mllm's ``llm`` is a complete ``...ForCausalLM`` that can generate alone."""
    text_config = hf.config.text_config
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(text_config, dtype=hf.dtype)
    setattr(llm, llm.base_model_prefix, hf.model.language_model)
    llm.set_output_embeddings(hf.lm_head)
    llm.generation_config = hf.generation_config
    left = [name for name, p in llm.named_parameters() if p.is_meta]
    if left:
        raise ForeignFormatError(
            f"{folder}: the {type(llm).__name__} built from text_config has parameters outside "
            f"its base model and head ({left[:3]}); mllm cannot take this LLM apart"
        )
    return llm
