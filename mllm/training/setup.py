"""Steps that prepare a stage before its first optimizer step."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mllm import checkpoint as ckpt
from mllm.config.checks import STAGE_REFERENCE
from mllm.config.schema import DataConfig, LoraConfig, RecipeConfig, StageConfig
from mllm.data.dataset import ConversationDataset
from mllm.data.feature_cache import (
    BUILD_BATCH_SIZE,
    FeatureCache,
    FeatureCacheError,
    build_feature_cache,
    feature_fingerprint,
)
from mllm.models.lora import add_adapters, merge_adapters
from mllm.models.multimodal import MultimodalModel
from mllm.training.deepspeed_config import zero_stage
from mllm.training.sampler import total_optimizer_steps

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_init_from(recipe: RecipeConfig, stage_name: str) -> Path | None:
    """The folder a stage starts from, checked to be a complete checkpoint.

    ``stage:NAME`` means NAME's ``final`` folder under this recipe's ``output_dir``; anything
    else is a path. Raises CheckpointError naming the recipe key when it is missing or partial.
    """
    init_from = recipe.stages[stage_name].init_from
    if init_from is None:
        return None
    if init_from.startswith(STAGE_REFERENCE):
        folder = Path(recipe.stage_output_dir(init_from[len(STAGE_REFERENCE) :])) / "final"
    else:
        folder = Path(init_from)
    try:
        ckpt.read_manifest(folder)
    except ckpt.CheckpointError as exc:
        raise ckpt.CheckpointError(
            f"stages.{stage_name}.init_from={init_from!r}: {exc}. Run that stage first or fix the path."
        ) from None
    return folder


def completed_output(recipe: RecipeConfig, stage_name: str) -> Path | None:
    """The stage's ``final`` folder if it is complete (``--resume`` then skips the stage)."""
    folder = Path(recipe.stage_output_dir(stage_name)) / "final"
    try:
        ckpt.read_manifest(folder)
    except ckpt.CheckpointError:
        return None
    return folder


def load_start_point(model: MultimodalModel, folder: Path, key: str, llm_mode: str) -> None:
    """Load a stage's ``init_from`` folder into ``model`` (collective under ZeRO-3).

    An LLM saved with LoRA adapters is rebuilt with the same adapters, loaded, and the adapters
    are merged into its weights: the new stage starts from a plain LLM and applies its own tune
    mode (full, frozen, or fresh adapters). Its outputs then hold the whole LLM, since the base
    is no longer the pretrained one.

    Raises:
        CheckpointError: the folder holds QLoRA adapters (merge them with ``mllm merge`` and
            start from the merged LLM), or a qlora stage would start from trained LLM weights.
    """
    manifest = ckpt.read_manifest(folder)
    adapters = manifest.get("adapters", {})
    entry = adapters.get("llm")
    if "llm" in manifest["components"] and llm_mode == "qlora":
        raise ckpt.CheckpointError(
            f"{key}: {folder} holds trained LLM weights, but qlora quantises the base of "
            "model.llm.path; export them with `mllm merge` and set model.llm.path to DIR/llm"
        )
    if entry is not None and entry["mode"] == "qlora":
        raise ckpt.CheckpointError(
            f"{key}: {folder} holds QLoRA adapters of a 4-bit base; run `mllm merge {folder} "
            "--out DIR` and set model.llm.path to DIR/llm (the dequantised, merged LLM)"
        )
    if entry is not None:
        settings = {k: v for k, v in entry.items() if k not in ("mode", "base")}
        add_adapters(model, LoraConfig(**settings), entry["mode"])
    ckpt.load_weights(model, folder)
    if entry is not None:
        with ckpt.gathered_parameters(list(model.llm.parameters()), modify=True):
            merge_adapters(model)
        logger.info("%s: merged the LoRA adapters of %s into the LLM", key, folder)
    if "llm" in manifest["components"]:
        setattr(model.llm, ckpt.BASE_FROM_CHECKPOINT, True)


def saved_components(init_folder: Path | None, trained: list[str]) -> list[str]:
    """Components a stage's outputs hold: those trained now plus those its start point held."""
    inherited = ckpt.read_manifest(init_folder)["components"] if init_folder else []
    return [c for c in ("vision", "projector", "llm") if c in trained or c in inherited]


def register_zero3_loading(ds_config: dict):
    """Under ZeRO-3, make ``from_pretrained`` load straight into partitioned parameters.

    Returns an object that must stay referenced while the model is alive (or None).
    """
    if zero_stage(ds_config) != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def enable_gradient_checkpointing(model: MultimodalModel) -> None:
    """Recompute activations of the LLM (and a trained tower) in backward to save memory.

    Non-reentrant checkpointing gives correct gradients even when the inputs (frozen
    embeddings) do not require grad, so no input-grad hook is needed.
    """
    modules = [model.llm]
    if any(p.requires_grad for p in model.vision.parameters()):
        modules.append(model.vision.encoder)
    for module in modules:
        if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x name
            module.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            module.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )


#: ``data.feature_cache`` value that lets the stage decide (:func:`feature_cache_wanted`).
AUTO_CACHE = "auto"


def feature_cache_wanted(stage: StageConfig, dataset: ConversationDataset) -> tuple[bool, str]:
    """Whether a stage reads cached tower features, and why (a phrase for the log).

    A folder in ``data.feature_cache`` is always used (the recipe asks); ``auto`` caches when
    the tower is frozen and the stage's steps draw more samples than the data holds (more
    than one epoch), since then every image would run through the tower again; null never.
    """
    setting = stage.data.feature_cache
    if setting is None:
        return False, "data.feature_cache is null"
    if setting != AUTO_CACHE:
        return True, "the recipe names a cache folder"
    if stage.train.vision != "frozen":
        return False, f"the vision tower trains ({stage.train.vision})"
    if stage.data.image_aspect_ratio == "anyres":
        return False, "anyres images are several tiles each, which the cache does not hold"
    if not dataset.image_paths():
        return False, "the data has no images"
    steps = total_optimizer_steps(
        len(dataset), stage.global_batch_size, stage.epochs, stage.max_steps
    )
    passes = steps * stage.global_batch_size / max(len(dataset), 1)
    if passes <= 1:
        return False, f"the stage passes over its data {passes:.2f} times"
    return True, f"the tower is frozen and the stage passes over its data {passes:.2f} times"


def _auto_cache_folder(root: Path, fingerprint: dict, dataset: ConversationDataset) -> Path:
    """``root/DIGEST``: a folder per tower, preprocessing and image set, so another tower or
    other data gets a folder of its own instead of an error."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps(fingerprint, sort_keys=True).encode())
    digest.update("\n".join(dataset.image_paths()).encode())
    return root / digest.hexdigest()


def attach_feature_cache(
    dataset: ConversationDataset,
    data: DataConfig,
    model: MultimodalModel,
    key: str,
    *,
    batch_size: int = BUILD_BATCH_SIZE,
    auto_root: Path | None = None,
) -> FeatureCache | None:
    """Make ``dataset`` yield cached ``image_features`` when ``data.feature_cache`` is set
    (``mllm.data.feature_cache``); a no-op returning None when it is not. ``auto`` means a
    folder under ``auto_root`` named by a digest of the fingerprint and the images (the
    caller decides whether to cache, :func:`feature_cache_wanted`).

    Builds the cache when its folder does not exist yet, on rank 0 while the other ranks wait,
    then opens it on every rank, checked against this tower and preprocessing and against the
    dataset's images. Call it before the DeepSpeed engine exists (collective under
    ``torch.distributed``): the tower's parameters are gathered if ZeRO-3 partitioned them at
    load, since every rank needs them for the weights digest and rank 0 runs the tower.

    Args:
        dataset: the stage's dataset.
        data: the stage's ``data`` section (``feature_cache``, ``num_workers``).
        model: the model with the stage's tower weights loaded; its tower must be frozen.
        key: the recipe key of the folder, for messages (``stages.S.data.feature_cache``).
        batch_size: images per tower call when building.
        auto_root: where ``auto`` caches go (``OUTPUT_DIR/feature_cache/STAGE``).

    Returns:
        The opened cache, also set as ``dataset.feature_cache``.

    Raises:
        FeatureCacheError: a trained tower, or a folder of another fingerprint or data.
    """
    if data.feature_cache is None:
        return None
    tower = model.vision
    if any(p.requires_grad for p in tower.parameters()):
        raise FeatureCacheError(f"{key}: the vision tower trains; its features change each step")
    processor = dataset.image_processor
    if processor is None:  # a text-only dataset: fingerprint the tower's own processor
        processor = tower.image_processor
    with ckpt.gathered_parameters(list(tower.parameters())):
        fingerprint = feature_fingerprint(tower, processor, dataset.image_mode)
        if data.feature_cache == AUTO_CACHE:
            if auto_root is None:
                raise ValueError(f"{key} is {AUTO_CACHE!r}: give auto_root")
            folder = _auto_cache_folder(auto_root, fingerprint, dataset)
        else:
            folder = Path(data.feature_cache)
        failure: BaseException | None = None
        if (dist.get_rank() if dist.is_initialized() else 0) == 0 and not folder.exists():
            started = time.perf_counter()
            try:
                build_feature_cache(
                    folder,
                    tower,
                    dataset,
                    fingerprint,
                    batch_size=batch_size,
                    num_workers=data.num_workers,
                    fail_unreadable=dataset.on_bad_record == "fail",
                )
                logger.info("built %s in %.1f s", folder, time.perf_counter() - started)
            except BaseException as exc:  # every rank must hear of it, not wait forever
                failure = exc
        _share_outcome(failure, folder, key)
    cache = FeatureCache.open(folder, fingerprint, key)
    cache.check_covers(
        dataset.image_paths(), key=key, fail_unreadable=dataset.on_bad_record == "fail"
    )
    dataset.feature_cache = cache
    logger.info("%s: reading %d images' features from %s", key, len(cache.rows), folder)
    return cache


def _share_outcome(failure: BaseException | None, folder: Path, key: str) -> None:
    """Rank 0's build outcome to every rank (a barrier too): all go on, or all stop."""
    message = None if failure is None else f"{type(failure).__name__}: {failure}"
    if dist.is_initialized() and dist.get_world_size() > 1:
        shared = [message]
        dist.broadcast_object_list(shared, src=0)
        message = shared[0]
    if failure is not None:
        raise failure
    if message is not None:
        raise FeatureCacheError(f"{key}: rank 0 could not build {folder}: {message}")
