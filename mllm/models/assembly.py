"""Assemble a MultimodalModel and its tokenizer from the ``model`` section of a recipe."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from mllm.config.schema import LoraConfig, ModelConfig
from mllm.models import projectors, vision  # noqa: F401 - registers every component
from mllm.models.anyres import SpatialUnpad
from mllm.models.attention import load_with_attention, resolve_attn_implementation
from mllm.models.catalog import PROJECTORS, VISION_TOWERS
from mllm.models.llm import load_llm, load_tokenizer
from mllm.models.modality_adaptive import ADAPTED_MODULES, make_modality_adaptive
from mllm.models.multimodal import MultimodalModel

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BuiltModel:
    model: MultimodalModel
    tokenizer: PreTrainedTokenizerBase
    image_processor: object
    image_token: str


#: Seed of the rows added to the embeddings for new tokens: every build of a recipe (training,
#: resume, inference, merge) gets the same rows, so frozen rows never need saving.
RESIZE_SEED = 0


def grow_embeddings(llm: PreTrainedModel, num_tokens: int) -> int:
    """Give the LLM's input and output embeddings a row for each token the tokenizer gained.

    New rows are drawn as transformers' ``mean_resizing`` draws them (a normal around the mean
    of the existing rows, with their covariance scaled by 1e-9), from ``RESIZE_SEED``; logged
    once, here. transformers announces ``mean_resizing`` with a warning per matrix even when it
    is asked for explicitly, so its modeling logger is held at errors for this one call.

    Args:
        llm: the language model, resized in place.
        num_tokens: the tokenizer's length.

    Returns:
        The number of rows added (0 when the embeddings are large enough already).
    """
    before = llm.get_input_embeddings().num_embeddings
    if num_tokens <= before:
        return 0
    notices = logging.getLogger("transformers.modeling_utils")
    level = notices.level
    notices.setLevel(logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RESIZE_SEED)
            llm.resize_token_embeddings(num_tokens, mean_resizing=True)
    finally:
        notices.setLevel(level)
    matrices = "input and output embeddings" if llm.get_output_embeddings() else "embeddings"
    added = num_tokens - before
    logger.info(
        "added %d row%s to the LLM's %s (%d -> %d tokens), drawn around the mean of the "
        "existing rows (seed %d)",
        added,
        "s" * (added != 1),
        matrices,
        before,
        num_tokens,
        RESIZE_SEED,
    )
    return added


def _no_bar(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A ``transformers.utils.logging.set_tqdm_hook`` hook: the bar transformers asked for,
    disabled (it still iterates)."""
    return factory(*args, **{**kwargs, "disable": True})


@contextmanager
def logged_load(key: str, path: str) -> Iterator[list[PreTrainedModel]]:
    """A block that loads one component and logs one line for it, in place of transformers'
    "Loading weights" bar.

    The bar counts tensors copied from files already on disk: a few seconds for a real model,
    drawn by every rank, so 8 GPUs interleave 16 bars per run and a log file keeps each as a
    stream of carriage returns. One line, logged at INFO (which only rank 0 prints), says what
    a researcher checks afterwards: which class came from where, in which dtype, in how long.
    Parameter counts are in the stage's table (``mllm.training.stage``).

    transformers' own bars are off inside the block through its ``set_tqdm_hook`` switch
    (transformers >= 5.4; older versions keep the bar). Hub download bars are not transformers'
    and stay on: a first download takes minutes and its bar is the only sign of progress
    (rank 0 only, see ``mllm.training.distributed.quiet_progress_bars``).

    Args:
        key: the component's recipe key, e.g. ``model.llm``.
        path: where it is loaded from (hub id or folder).

    Yields:
        A list for the loaded transformers model; logged when the block ends without error.
    """
    loaded: list[PreTrainedModel] = []
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    previous = set_hook(_no_bar) if set_hook is not None else None
    started = time.perf_counter()
    try:
        yield loaded
    finally:
        if set_hook is not None:
            set_hook(previous)
    seconds = time.perf_counter() - started
    for model in loaded:
        dtype = str(model.dtype).removeprefix("torch.")
        logger.info(
            "%s: loaded %s (%s, %s) in %.1f s", key, path, type(model).__name__, dtype, seconds
        )


def build_model(
    config: ModelConfig,
    *,
    dtype: torch.dtype = torch.float32,
    special_tokens: list[str] = (),
    quantize_llm: LoraConfig | None = None,
) -> BuiltModel:
    """Load the tower and LLM from their paths, build the projector, and join them.

    Args:
        config: the recipe's ``model`` section.
        dtype: parameter dtype for the pretrained parts (the projector is built in it too).
        special_tokens: template tokens that must be single tokens (added when missing); a
            recipe's come from ``mllm.data.recipe_templates.special_tokens_for``.
        quantize_llm: load the LLM's linear layers in 4-bit with these settings (QLoRA); the
            tower and projector are never quantised.

    Returns:
        The model, its tokenizer (with the image token added) and the tower's image processor.

    Raises:
        AttentionUnavailableError: FlashAttention asked for where it cannot run, no fallback.
    """
    llm_attn = resolve_attn_implementation(
        config.llm.attn_implementation, config.llm.attn_fallback, "model.llm.attn_implementation"
    )
    vision_attn = llm_attn
    if config.vision.attn_implementation is not None:
        vision_attn = resolve_attn_implementation(
            config.vision.attn_implementation,
            config.llm.attn_fallback,
            "model.vision.attn_implementation",
        )
    tower_class = VISION_TOWERS.get(config.vision.name).target
    with logged_load("model.vision", config.vision.path) as loaded:
        vision = load_with_attention(
            lambda **attn: tower_class.from_pretrained(config.vision, dtype=dtype, **attn),
            vision_attn,
            f"model.vision.path {config.vision.path}",
        )
        loaded.append(vision.encoder)
    tokenizer = load_tokenizer(config.llm, config.image_token, list(special_tokens))
    with logged_load("model.llm", config.llm.path) as loaded:
        llm = load_llm(config.llm, dtype=dtype, attn_implementation=llm_attn, quantize=quantize_llm)
        loaded.append(llm)
    if config.llm.modality_adaptive:
        layers = make_modality_adaptive(llm)
        logger.info(
            "model.llm.modality_adaptive: visual copies of %s in %d decoder layers",
            ", ".join(ADAPTED_MODULES),
            layers,
        )
    grow_embeddings(llm, len(tokenizer))
    llm.config.pad_token_id = tokenizer.pad_token_id
    projector_class = PROJECTORS.get(config.projector.name).target
    projector = projector_class(
        config.projector,
        vision_dim=vision.hidden_size,
        llm_dim=llm.config.get_text_config().hidden_size,
        num_patches=vision.num_patches,
    )
    if config.mm_patch_merge_type == "spatial_unpad":
        projector.patch_merge = SpatialUnpad(projector.llm_dim)
    projector = projector.to(dtype)
    image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
    model = MultimodalModel(
        vision,
        projector,
        llm,
        image_token_id=image_token_id,
        patch_merge=config.mm_patch_merge_type,
    )
    logger.info(
        "built %s tower (%d patches) -> %s projector (%d tokens per image) -> %s LLM",
        config.vision.name,
        vision.num_patches,
        config.projector.name,
        projector.num_output_tokens,
        config.llm.family,
    )
    return BuiltModel(model, tokenizer, vision.image_processor, config.image_token)
