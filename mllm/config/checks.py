"""Rules across fields of a recipe that types alone cannot express.

Each rule returns ``(dotted key, reason)`` so the error points at what to edit.
"""

from __future__ import annotations

import json
from pathlib import Path

from mllm.config.schema import RecipeConfig

#: DeepSpeed keys the toolkit fills in from the recipe; a ZeRO file setting them would conflict.
RECIPE_OWNED_DS_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer",
    "scheduler",
    "bf16",
    "fp16",
)

STAGE_REFERENCE = "stage:"


def check_recipe(recipe: RecipeConfig, *, check_files: bool = True) -> list[tuple[str, str]]:
    from mllm.data.templates import TEMPLATES
    from mllm.models.families import FAMILIES

    problems: list[tuple[str, str]] = []
    family = FAMILIES.get(recipe.model.llm.family)
    if family is None:
        problems.append(("model.llm.family", f"unknown family; choose one of {sorted(FAMILIES)}"))
    stage_names = list(recipe.stages)
    for index, (name, stage) in enumerate(recipe.stages.items()):
        key = f"stages.{name}"
        if stage.global_batch_size % stage.micro_batch_size:
            problems.append(
                (
                    f"{key}.global_batch_size",
                    f"{stage.global_batch_size} is not a multiple of micro_batch_size "
                    f"{stage.micro_batch_size}",
                )
            )
        template = stage.data.template or (family.template if family else None)
        if template is not None and template not in TEMPLATES:
            problems.append(
                (
                    f"{key}.data.template",
                    f"unknown template {template!r}; choose one of {TEMPLATES.names()}",
                )
            )
        if all(mode == "frozen" for mode in stage.train.model_dump().values()):
            problems.append(
                (f"{key}.train", "every component is frozen: the stage would train nothing")
            )
        if stage.optim.projector_lr is not None and stage.train.projector == "frozen":
            problems.append(
                (f"{key}.optim.projector_lr", "set, but the projector is frozen in this stage")
            )
        if stage.init_from and stage.init_from.startswith(STAGE_REFERENCE):
            source = stage.init_from[len(STAGE_REFERENCE) :]
            if source not in stage_names[:index]:
                problems.append(
                    (
                        f"{key}.init_from",
                        f"{stage.init_from!r} must name an earlier stage of {stage_names[:index]}",
                    )
                )
        if stage.zero_config is not None and check_files:
            problems.extend(_check_zero_config(f"{key}.zero_config", Path(stage.zero_config)))
        if stage.precision == "fp16" and stage.zero_config is None:
            problems.append(
                (
                    f"{key}.precision",
                    "fp16 needs loss scaling: give a zero_config (DeepSpeed) or use bf16",
                )
            )
    return problems


def _is_auto(value: object) -> bool:
    """LLaVA's ZeRO files say "auto" for what the trainer fills in; those are welcome here."""
    if isinstance(value, dict):
        return (
            all(_is_auto(v) for k, v in value.items() if k != "enabled")
            and value.get("enabled", "auto") == "auto"
        )
    return value == "auto"


def _check_zero_config(key: str, path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return [(key, f"{path} does not exist (relative paths start at the current directory)")]
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [(key, f"{path} is not valid JSON: {exc}")]
    owned = [k for k in RECIPE_OWNED_DS_KEYS if k in settings and not _is_auto(settings[k])]
    if owned:
        return [
            (key, f"{path} sets {owned}; these come from the recipe, remove them from the file")
        ]
    if not isinstance(settings.get("zero_optimization", {}), dict):
        return [(key, f"{path}: zero_optimization must be a mapping")]
    return []
