"""``mllm merge CHECKPOINT --out DIR``: fold a checkpoint's LoRA adapters into its LLM and write a
standalone model folder that loads without peft or the base model paths::

    DIR/llm/             the merged LLM (transformers ``save_pretrained``) and the tokenizer
    DIR/vision/          the vision tower and its image processor
    DIR/model.safetensors, manifest.json, recipe.yaml, tokenizer files
                         an mllm checkpoint whose recipe points at llm/ and vision/ (absolute
                         paths), so ``mllm.load`` / ``mllm eval`` / ``init_from`` take it;
                         of a modality-adaptive LLM it holds the visual copies too (llm/ is
                         the plain model, its text weights)

From a QLoRA checkpoint the 4-bit base is dequantised and the update added in full precision:
the merged model reproduces the adapted 4-bit model, not "original weights + update".

CPU:  mllm merge runs/demo/shapes-mlp/instruct/final --out runs/demo/merged
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mllm import checkpoint as ckpt
from mllm.config import dump_recipe
from mllm.models.assembly import DTYPES
from mllm.models.lora import merge_adapters
from mllm.models.modality_adaptive import (
    is_modality_adaptive,
    plain_state_dict,
    visual_state_dict,
)

logger = logging.getLogger(__name__)


def merge_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str = "fp32") -> Path:
    """Write the merged, standalone form of ``checkpoint`` to ``out`` (atomically).

    Args:
        checkpoint: an mllm stage output or periodic checkpoint (with or without adapters).
        out: the folder to create (replaced if it exists).
        dtype: ``fp32``, ``bf16`` or ``fp16`` for the saved weights (the merge runs in fp32).

    Returns:
        ``out``.

    Raises:
        CheckpointError: ``checkpoint`` is not a complete mllm checkpoint.
    """
    out = Path(out).resolve()
    loaded = ckpt.load_mllm_checkpoint(checkpoint, dtype=torch.float32)
    adapters = loaded.manifest.get("adapters", {})
    model = loaded.built.model
    merge_adapters(model)
    model.to(DTYPES[dtype])
    staging = ckpt.prepare_staging(out)
    llm_dir, vision_dir = staging / "llm", staging / "vision"
    # A modality-adaptive LLM saves as the plain model (its text weights under transformers'
    # names); its visual copies go into model.safetensors and are loaded after the rebuild.
    adaptive = is_modality_adaptive(model.llm)
    model.llm.save_pretrained(
        str(llm_dir), state_dict=plain_state_dict(model.llm) if adaptive else None
    )
    loaded.built.tokenizer.save_pretrained(str(llm_dir))
    model.vision.encoder.save_pretrained(str(vision_dir))
    loaded.built.image_processor.save_pretrained(str(vision_dir))
    recipe = loaded.recipe.model_copy(deep=True)
    recipe.model.llm.path = str(out / "llm")
    recipe.model.vision.path = str(out / "vision")
    state = {
        name: tensor.detach().to("cpu", copy=True).contiguous()
        for name, tensor in model.projector.state_dict(prefix="projector.").items()
    }
    if adaptive:
        state.update(
            {
                k: v.detach().to("cpu", copy=True)
                for k, v in visual_state_dict(model.llm, "llm.").items()
            }
        )
    manifest = loaded.manifest
    ckpt.write_weights_and_manifest(
        staging,
        state,
        stage=manifest["stage"],
        step=manifest["step"],
        components=["projector", "llm"] if adaptive else ["projector"],
        metrics=manifest.get("metrics", {}),
        recipe_yaml=dump_recipe(recipe),
        tokenizer=loaded.built.tokenizer,
        adapters={},
        extra={"merged_from": str(Path(checkpoint).resolve()), "merged_adapters": adapters},
    )
    ckpt.commit_staging(out)
    logger.info("merged %s (adapters: %s) into %s", checkpoint, list(adapters) or "none", out)
    return out
