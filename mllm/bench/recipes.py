"""What the benchmark trains: the built-in tiny recipe (models, stages) and each variant's
stage settings, applied to a recipe as command-line overrides so they are validated like any
other (``mllm.bench.run`` runs them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mllm.bench.model_section import llava_model_section

if TYPE_CHECKING:
    from mllm.bench.run import BenchOptions

#: Stage settings of each variant of our side, as keys under ``stages.S``; ``{cache}`` is a
#: feature cache of the frozen tower, built once before the rounds (its build time is printed,
#: not in the steps). Every variant without a cache runs the tower (``feature_cache: null``).
#: ``compile`` variants pay their first compile in the warm-up steps; ``scripts/bench.py
#: --compile`` reports that cost and when it is paid back.
_NO_CACHE = {"data.feature_cache": None}
_CACHED = {"data.packing": True, "data.group_by": "none", "data.feature_cache": "{cache}"}
VARIANTS: dict[str, dict[str, object]] = {
    "padded": {"data.packing": False, "data.group_by": "none", **_NO_CACHE},
    "grouped": {"data.packing": False, "data.group_by": "modality_length", **_NO_CACHE},
    "packed": {"data.packing": True, "data.group_by": "none", **_NO_CACHE},
    "packed+grouped": {"data.packing": True, "data.group_by": "modality_length", **_NO_CACHE},
    "auto": {"data.packing": "auto", "data.group_by": "none", **_NO_CACHE},
    "cached": _CACHED,
    "cached+compiled": {**_CACHED, "compile": True},
}
#: Tiny model sizes of the built-in recipe (64 image tokens per image).
TINY = {"image_size": 64, "patch_size": 8, "llm_hidden": 128, "llm_layers": 2}
TINY |= {"vision_hidden": 64, "vision_layers": 2}
#: The built-in recipe's stages: what trains besides the projector, and the learning rate.
STAGES = {"align": {"llm": "frozen", "lr": 1.0e-3}, "instruct": {"llm": "full", "lr": 2.0e-4}}
#: Each data shape's template: alignment captions in LLaVA's ``plain``, the mix multi-turn.
TEMPLATES = {"captions": "plain", "mix": "vicuna_v1"}


def builtin_recipe(workdir: Path) -> Path:
    """Write the tiny recipe (models made on first use) and return its path."""
    from mllm.tiny import make_tiny_models

    models = make_tiny_models(workdir / "models", **TINY)
    recipe = {
        "name": "bench",
        "output_dir": str(workdir / "runs"),
        "seed": 0,
        "model": llava_model_section(models, attn_implementation="sdpa"),
        "stages": {
            name: {
                "data": {"path": "set-by-bench.json", "template": "vicuna_v1"},
                "train": {"vision": "frozen", "projector": "full", "llm": settings["llm"]},
                "optim": {"lr": settings["lr"], "warmup_ratio": 0.0},
                "global_batch_size": 16,
                "micro_batch_size": 16,
                "precision": "fp32",
            }
            for name, settings in STAGES.items()
        },
    }
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def bench_recipe(
    options: BenchOptions,
    path: Path,
    variant: str,
    mix,
    stage: str,
    template: str | None,
    extra: tuple[str, ...] = (),
) -> tuple:
    """``(recipe, stage)``: the recipe with the bench's data, steps and the variant's settings
    applied as overrides, so they are validated like any command-line override."""
    from mllm.config import load_recipe

    key = f"stages.{stage}"
    bench = [
        f"output_dir={options.workdir / 'runs' / mix.records.parent.name / variant}",
        f"{key}.init_from=null",
        f"{key}.data.path={mix.records}",
        f"{key}.data.image_folder={mix.image_folder}",
        f"{key}.data.max_length={options.max_length}",
        f"{key}.data.num_workers={options.workers}",
        f"{key}.data.on_bad_record=fail",
        f"{key}.max_steps={options.warmup + options.steps}",
        f"{key}.global_batch_size={options.batch_size}",
        f"{key}.micro_batch_size={options.batch_size}",
        f"{key}.save_every=null",
        f"{key}.log_every=1",
    ]
    if template is not None:
        bench.append(f"{key}.data.template={template}")
    cache = options.workdir / "feature_cache" / mix.records.parent.name / stage
    for name, value in VARIANTS.get(variant, VARIANTS["padded"]).items():
        text = "null" if value is None else str(value).lower()
        bench.append(f"{key}.{name}={text.format(cache=cache)}")
    recipe = load_recipe(path, [*options.overrides, *bench, *extra])
    if recipe.stages[stage].data.template == "plain" and mix.records.parent.name != "captions":
        raise SystemExit(
            f"{path}: stage {stage} uses the caption-only 'plain' template, but the length mix "
            f"is multi-turn; pass {key}.data.template=vicuna_v1 (or the LLM's template)"
        )
    return recipe, stage
