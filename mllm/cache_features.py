"""Build a stage's feature cache ahead of training, with the model built as training builds it;
``mllm cache-features`` (``mllm.commands.cache_features``) runs it for a recipe's stages."""

from __future__ import annotations

import time
from pathlib import Path

from mllm.config import RecipeConfig


def cache_stage_features(recipe: RecipeConfig, stage_name: str, batch_size: int) -> None:
    """Build (or check) the feature cache of one stage and print what it holds.

    The model is built by ``mllm.training.run.set_up_stage`` (the stage's precision and
    ``init_from`` weights), so the fingerprints match training's; a cache that exists already
    is checked against the stage (tower, preprocessing, images) and kept.

    Raises:
        FeatureCacheError: the folder holds another fingerprint or lacks the stage's images.
        CheckpointError: the stage's ``init_from`` is not a complete checkpoint.
    """
    from mllm.training.run import set_up_stage

    stage = recipe.stages[stage_name]
    existed = Path(stage.data.feature_cache).exists()
    started = time.perf_counter()
    setup = set_up_stage(recipe, stage_name, cache_batch_size=batch_size)
    cache = setup.dataset.feature_cache
    assert cache is not None
    print(
        f"{stage_name}: {'checked' if existed else 'built'} {cache.folder}: {len(cache.rows)} "
        f"images x {list(cache.shape)} {str(cache.dtype).removeprefix('torch.')}, "
        f"{len(cache.unreadable)} unreadable ({time.perf_counter() - started:.1f} s)"
    )
