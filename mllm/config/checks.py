"""Rules across fields of a recipe that types alone cannot express.

Each rule returns ``(dotted key, reason)`` so the error points at what to edit. The rules read
the recipe and the files it names, never the machine: what this machine must offer (4-bit
kernels, FlashAttention) is ``mllm.training.environment.check_environment``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mllm.config.schema import ADAPTER_MODES, DataConfig, RecipeConfig

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
    from mllm.data.tokenizer_template import TOKENIZER_TEMPLATE
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
        if template is not None and template not in TEMPLATES and template != TOKENIZER_TEMPLATE:
            choices = [*TEMPLATES.names(), TOKENIZER_TEMPLATE]
            problems.append(
                (f"{key}.data.template", f"unknown template {template!r}; choose one of {choices}")
            )
        if (
            family is not None
            and not family.lora_target_modules
            and stage.train.llm in ADAPTER_MODES
            and (stage.lora is None or stage.lora.target_modules is None)
        ):
            problems.append(
                (
                    f"{key}.lora.target_modules",
                    f"family {family.name!r} has no default LoRA targets; list the LLM's "
                    "linear layer names (e.g. [q_proj, k_proj, v_proj, o_proj])",
                )
            )
        if stage.train.llm == "visual" and not recipe.model.llm.modality_adaptive:
            problems.append(
                (
                    f"{key}.train.llm",
                    "visual trains the LLM's visual copies, which only a modality-adaptive LLM "
                    "has; set model.llm.modality_adaptive: true",
                )
            )
        if all(mode == "frozen" for mode in stage.train.modes().values()):
            problems.append(
                (f"{key}.train", "every component is frozen: the stage would train nothing")
            )
        for component in ("projector", "vision"):
            if getattr(stage.optim, f"{component}_lr") is not None and (
                stage.train.mode(component) == "frozen"
            ):
                problems.append(
                    (
                        f"{key}.optim.{component}_lr",
                        f"set, but the {component} is frozen in this stage",
                    )
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
        if stage.data.packing and recipe.model.llm.trust_remote_code:
            problems.append(
                (
                    f"{key}.data.packing",
                    "packing relies on transformers reading sample boundaries from position "
                    "ids, which remote-code models may ignore; turn it off for this LLM",
                )
            )
        if stage.data.feature_cache not in (None, "auto") and stage.train.vision != "frozen":
            problems.append(
                (
                    f"{key}.data.feature_cache",
                    f"set, but the vision tower trains in this stage (train.vision: "
                    f"{stage.train.label('vision')}), so cached features would be stale after the first "
                    "step; freeze the tower or remove feature_cache",
                )
            )
        problems.extend(_check_anyres(stage.data, f"{key}.data"))
        problems.extend(_check_frozen_modules(recipe, name))
        problems.extend(_check_adapters(recipe, name, index))
        problems.extend(_check_validation(recipe, name))
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


def _check_anyres(data: DataConfig, key: str) -> list[tuple[str, str]]:
    """``anyres`` needs grid resolutions, and only ``anyres`` reads them; its tiles are not
    feature-cached (a cache holds one tile per image)."""
    anyres = data.image_aspect_ratio == "anyres"
    if anyres and not data.image_grid_pinpoints:
        return [(f"{key}.image_grid_pinpoints", "image_aspect_ratio anyres needs grid resolutions")]
    if not anyres and data.image_grid_pinpoints:
        return [
            (
                f"{key}.image_grid_pinpoints",
                f"set, but image_aspect_ratio is {data.image_aspect_ratio!r}; they are read "
                "only by anyres",
            )
        ]
    bad = [p for p in data.image_grid_pinpoints or () if min(p) < 1]
    if bad:
        return [(f"{key}.image_grid_pinpoints", f"resolutions must be positive, got {bad}")]
    if anyres and data.feature_cache not in (None, "auto"):
        return [
            (
                f"{key}.feature_cache",
                "anyres images are several tiles each, which the feature cache does not hold; "
                "remove feature_cache (auto skips the cache for anyres)",
            )
        ]
    return []


def _check_frozen_modules(recipe: RecipeConfig, name: str) -> list[tuple[str, str]]:
    """Each frozen module sits inside a component the stage trains (else it is frozen anyway).

    Whether the path exists is checked on the built model (``apply_stage``).
    """
    stage = recipe.stages[name]
    modes = stage.train.modes()
    problems: list[tuple[str, str]] = []
    for i, path in enumerate(stage.frozen_modules):
        key = f"stages.{name}.frozen_modules.{i}"
        component, dot, rest = path.partition(".")
        if component not in modes or not dot or not rest:
            prefixes = ", ".join(f"{c}." for c in modes)
            problems.append(
                (key, f"{path!r} must be a module inside a component: start with {prefixes}")
            )
        elif modes[component] == "frozen":
            problems.append(
                (
                    key,
                    f"{path!r} is inside {component}, which this stage freezes entirely "
                    f"(train.{component}: frozen): nothing to keep frozen; remove it or train "
                    f"{component}",
                )
            )
    return problems


def _check_adapters(recipe: RecipeConfig, name: str, index: int) -> list[tuple[str, str]]:
    """LoRA/QLoRA rules of one stage: where adapters may go and what a 4-bit base allows."""
    stage, key = recipe.stages[name], f"stages.{name}"
    problems: list[tuple[str, str]] = []
    modes = stage.train.modes()
    if modes["projector"] in ADAPTER_MODES:
        problems.append(
            (
                f"{key}.train.projector",
                f"{modes['projector']}: the projector trains fully or not at all (full/frozen)",
            )
        )
    if modes["vision"] in ADAPTER_MODES:
        problems.append(
            (
                f"{key}.train.vision",
                f"{modes['vision']} is supported for the llm only (full/frozen)",
            )
        )
    if stage.lora is not None and all(mode not in ADAPTER_MODES for mode in modes.values()):
        problems.append((f"{key}.lora", "set, but no component of this stage is lora/qlora"))
    if modes["llm"] != "qlora":
        return problems
    if stage.zero_config is not None and Path(stage.zero_config).is_file():
        try:
            settings = json.loads(Path(stage.zero_config).read_text())
            zero = settings.get("zero_optimization", {}).get("stage", 0)
        except (json.JSONDecodeError, AttributeError):
            zero = 0
        if zero == 3:
            problems.append(
                (
                    f"{key}.zero_config",
                    "ZeRO-3 cannot partition 4-bit weights; use zero2 (or zero0) with qlora",
                )
            )
    if stage.precision == "fp16":
        problems.append((f"{key}.precision", "qlora computes in bf16 or fp32, not fp16"))
    # A 4-bit base is quantised from model.llm.path: earlier LLM training cannot be carried in.
    source, names = stage.init_from, list(recipe.stages)
    while source and source.startswith(STAGE_REFERENCE):
        earlier = source[len(STAGE_REFERENCE) :]
        if earlier not in names[:index]:
            break
        if recipe.stages[earlier].train.llm != "frozen":
            problems.append(
                (
                    f"{key}.train.llm",
                    f"qlora quantises the base LLM of model.llm.path, but stage {earlier!r} "
                    "(which this stage starts from) trained the LLM; merge that stage with "
                    "`mllm merge` and point model.llm.path at the merged LLM",
                )
            )
            break
        source, index = recipe.stages[earlier].init_from, names.index(earlier)
    return problems


def _check_validation(recipe: RecipeConfig, name: str) -> list[tuple[str, str]]:
    """``eval`` names one held-out set; ``early_stop`` needs validations during the stage."""
    stage, key = recipe.stages[name], f"stages.{name}"
    problems: list[tuple[str, str]] = []
    validation = stage.eval
    if validation is not None:
        if (validation.path is None) == (validation.split is None):
            problems.append(
                (
                    f"{key}.eval",
                    "give either path (a LLaVA-format file) or split (a share of the training "
                    "records to hold out), not both or neither",
                )
            )
        if validation.split is not None and validation.image_folder is not None:
            problems.append(
                (
                    f"{key}.eval.image_folder",
                    "held-out records (split) use the stage's data.image_folder; remove it",
                )
            )
    stop = stage.early_stop
    if stop is None:
        return problems
    if validation is None or validation.every is None:
        problems.append(
            (
                f"{key}.early_stop",
                "needs validations during the stage: set eval (path or split) and eval.every",
            )
        )
    elif stop.metric == "val_accuracy" and validation.max_new_tokens == 0:
        problems.append(
            (
                f"{key}.early_stop.metric",
                "val_accuracy needs generation, but eval.max_new_tokens is 0",
            )
        )
    return problems


def check_data_paths(recipe: RecipeConfig, stages: list[str]) -> list[tuple[str, str]]:
    """The files ``stages`` read that must exist before the run starts: data files, image
    folders and explicit ``init_from`` folders (``stage:NAME`` ones are written by the run).

    Returns:
        ``(dotted key, reason)`` for each missing path.
    """
    problems: list[tuple[str, str]] = []
    for name in stages:
        stage, key = recipe.stages[name], f"stages.{name}"
        problems.extend(_missing_data(f"{key}.data", stage.data.path, stage.data.image_folder))
        if stage.eval is not None:
            problems.extend(
                _missing_data(f"{key}.eval", stage.eval.path or [], stage.eval.image_folder)
            )
        init_from = stage.init_from
        if init_from and not init_from.startswith(STAGE_REFERENCE) and not Path(init_from).is_dir():
            problems.append((f"{key}.init_from", f"{init_from}: no such folder"))
    return problems


def _missing_data(key: str, paths: list[str], image_folder: str | None) -> list[tuple[str, str]]:
    """``KEY.path`` files and the ``KEY.image_folder`` folder that do not exist."""
    problems = [
        (f"{key}.path" + (f"[{index}]" if len(paths) > 1 else ""), f"{path}: no such file")
        for index, path in enumerate(paths)
        if not Path(path).is_file()
    ]
    if image_folder is not None and not Path(image_folder).is_dir():
        problems.append((f"{key}.image_folder", f"{image_folder}: no such folder"))
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
