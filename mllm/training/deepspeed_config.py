"""Build the DeepSpeed config: ZeRO settings from the stage's JSON file, the rest from the recipe.

Keeping batch sizes, precision, clipping and the optimizer in the recipe means one place says
what a run does; the ZeRO file only says how state is sharded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mllm.config.schema import StageConfig


class BatchSizeError(ValueError):
    """Global batch, micro batch and world size do not divide."""


def gradient_accumulation_steps(stage: StageConfig, world_size: int, stage_key: str) -> int:
    per_step = stage.micro_batch_size * world_size
    if stage.global_batch_size % per_step:
        raise BatchSizeError(
            f"{stage_key}.global_batch_size {stage.global_batch_size} is not a multiple of "
            f"micro_batch_size {stage.micro_batch_size} x world size {world_size} = {per_step}"
        )
    return stage.global_batch_size // per_step


def zero_settings(stage: StageConfig) -> dict[str, Any]:
    if stage.zero_config is None:
        return {"zero_optimization": {"stage": 0}}
    settings = json.loads(Path(stage.zero_config).read_text())
    # LLaVA's files say "auto" for what the trainer fills in; we fill those in below.
    return {k: v for k, v in settings.items() if v != "auto" and not _all_auto(v)}


def _all_auto(value: Any) -> bool:
    return isinstance(value, dict) and all(v == "auto" for v in value.values())


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds_config: dict[str, Any]) -> bool:
    device = (
        ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    )
    return device not in ("none", None)


def build_deepspeed_config(stage: StageConfig, world_size: int, stage_key: str) -> dict[str, Any]:
    """The full DeepSpeed config for one stage.

    Raises:
        BatchSizeError: the batch sizes do not divide for this world size.
    """
    config = zero_settings(stage)
    config.update(
        train_batch_size=stage.global_batch_size,
        train_micro_batch_size_per_gpu=stage.micro_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(stage, world_size, stage_key),
        steps_per_print=10**9,  # progress is reported by mllm, not DeepSpeed
        wall_clock_breakdown=False,
        bf16={"enabled": stage.precision == "bf16"},
        fp16={"enabled": stage.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
    )
    if stage.optim.max_grad_norm is not None:
        config["gradient_clipping"] = stage.optim.max_grad_norm
    if offloads_optimizer(config):
        # Offloaded optimizer state needs DeepSpeed's own CPU Adam; built from these settings.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": stage.optim.lr,
                "betas": list(stage.optim.betas),
                "eps": stage.optim.eps,
                "weight_decay": stage.optim.weight_decay,
            },
        }
    return config
