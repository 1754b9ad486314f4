"""``python scripts/bench.py``: training and generation speed, ours against transformers' Llava.

Builds tiny models and synthetic data of two shapes, short captions (alignment data) and
LLaVA-665k's spread of lengths (the mix), and benchmarks each shape in stage 1 (``align``:
the projector trains) and stage 2 (``instruct``: projector and LLM train); or takes a
recipe's model and stage settings on the mix. In one process and in alternating rounds
(baseline, ours, ours, ..., then the next round in reverse order) it trains each side for the
same steps from the same weights on the same samples, then times generation, the sides taking
turns. Other processes' load thus falls on every side alike; the ratios are medians of
per-round ratios. The goal table sets each cell's samples/s against the baseline's, with
padding, peak memory and the first steps' losses. ``--cache-epochs N`` also times whole
N-epoch stage-1 runs with the feature cache off and on (its build included).
``--llava-python PY`` adds the original LLaVA code (``llava.train.train.train()`` in a side
venv, ``mllm.bench.original_llava``) as a second baseline, one subprocess per round, with its
own columns in the goal table. Figures and how to read them: docs/benchmarks.md.

CPU (about 4 minutes on 2 idle cores; 11 minutes at a load average of 8-14)::

    python scripts/bench.py
    python scripts/bench.py --data mix --stages instruct --variants padded grouped packed
    python scripts/bench.py --recipe recipes/tiny/shapes_mlp.yaml --stage instruct
    python scripts/bench.py --data captions --stages align --variants packed cached \
        --cache-epochs 3   # the frozen tower's features cached, build included
    python scripts/bench.py --llava-python /tmp/llava-venv/bin/python --gen-prompts 0
        # + the original LLaVA code (scripts/make_llava_side_venv.sh makes the venv)
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from mllm.bench.recipes import TEMPLATES, TINY, bench_recipe, builtin_recipe

#: Side key of the original LLaVA code (``--llava-python``) among the cell's sides.
LLAVA = "llava"


@dataclass(frozen=True)
class BenchOptions:
    """What to benchmark and for how long (``mllm bench --help`` says the same per option).

    Attributes:
        workdir: models, data, runs and caches go here.
        recipe, stage, overrides: benchmark this recipe's model and stage settings on the
            mix (default: the built-in tiny recipe; the stage defaults to the recipe's last).
        data, stages: the built-in recipe's cells: data shapes (``mllm.bench.data.SHAPES``)
            times stages (:data:`mllm.bench.recipes.STAGES`).
        variants: our side's stage settings, keys of :data:`mllm.bench.recipes.VARIANTS`.
        cache_epochs: also time whole stage-1 runs of this many epochs on the captions with
            the feature cache off and ``auto`` (0: not; built-in recipe only).
        rounds: alternating rounds per side.
        steps, warmup: measured optimizer steps per run, and steps before measuring.
        batch_size: micro = global batch.
        max_length, workers, samples: the length mix and its loading.
        gen_prompts, gen_tokens: the generation benchmark.
        threads: torch threads.
        json: also write the figures here.
        llava_python: the python of a side venv with ``llava-torch`` (made by
            ``scripts/make_llava_side_venv.sh``): adds the original LLaVA code as a second
            baseline (a clip tower and a depth-2 ``mlp`` projector, fp32).
    """

    workdir: Path = Path("runs/bench")
    recipe: str | None = None
    stage: str | None = None
    overrides: tuple[str, ...] = ()
    data: tuple[str, ...] = ("captions", "mix")
    stages: tuple[str, ...] = ("align", "instruct")
    variants: tuple[str, ...] = ("padded", "packed")
    cache_epochs: int = 0
    rounds: int = 2
    steps: int = 8
    warmup: int = 2
    batch_size: int = 16
    max_length: int = 1024
    workers: int = 0
    samples: int = 600
    gen_prompts: int = 10
    gen_tokens: int = 48
    threads: int = 1
    json: Path | None = None
    llava_python: Path | None = None


def _run_baseline(recipe, stage: str, warmup: int):
    from mllm.bench.baseline import llava_from, train_baseline
    from mllm.bench.ours import set_up_without_cache

    setup = set_up_without_cache(recipe, stage)
    config, dataset = recipe.stages[stage], setup.dataset
    llava = llava_from(setup.built, recipe)
    del setup  # only its weights and data were needed
    return train_baseline(
        llava, dataset, recipe, config, dataset.tokenizer.pad_token_id, warmup=warmup
    )


def _build_caches(recipes: dict[str, tuple]) -> dict[str, float]:
    """Build the feature cache of every variant that reads one, anew; seconds per variant."""
    from mllm.bench.ours import rebuild_feature_cache

    seconds = {}
    for name, (recipe, stage) in recipes.items():
        if recipe.stages[stage].data.feature_cache in (None, "auto"):
            continue
        cache, seconds[name] = rebuild_feature_cache(recipe, stage)
        print(
            f"feature cache for {name}: {len(cache.rows)} images x {list(cache.shape)} "
            f"{str(cache.dtype).removeprefix('torch.')} built in {seconds[name]:.1f} s "
            f"(not in the step timing) at {cache.folder}",
            flush=True,
        )
    return seconds


def _side_name(name: str) -> str:
    """A side's name in the tables."""
    from mllm.bench.original_llava import NAME

    return {"baseline": "baseline", LLAVA: NAME}.get(name, f"ours {name}")


def _train_rounds(options: BenchOptions, recipes: dict[str, tuple], llava=None) -> dict:
    """Every side once per round; odd rounds run the sides in reverse order. ``llava``: the
    cell's :class:`~mllm.bench.original_llava.OriginalLlava` when ``recipes`` has its key."""
    from mllm.bench.ours import train_ours

    runs: dict[str, list] = {name: [] for name in recipes}
    for round_index in range(options.rounds):
        names = list(recipes) if round_index % 2 == 0 else list(reversed(recipes))
        for name in names:
            recipe, stage = recipes[name]
            note = ""
            if name == "baseline":
                run = _run_baseline(recipe, stage, options.warmup)
            elif name == LLAVA:
                run = llava.train(options.warmup)
                if llava.mismatches:
                    note = f" ({llava.mismatches} samples masked by its tokenization mismatch)"
            else:
                run = train_ours(recipe, stage, f"ours {name}", warmup=options.warmup)
            runs[name].append(run)
            print(
                f"round {round_index + 1} {_side_name(name)}: {run.tokens_per_s:.0f} tokens/s"
                f"{note}",
                flush=True,
            )
    return {_side_name(n): r for n, r in runs.items()}


def _generation(options: BenchOptions, recipe, stage: str, mix) -> list:
    """Both sides' generation from one freshly built model (the baseline gets its weights)."""
    from PIL import Image

    from mllm.bench.baseline import llava_from
    from mllm.bench.generation import bench_generation
    from mllm.bench.ours import set_up_without_cache
    from mllm.checkpoint import LoadedModel

    setup = set_up_without_cache(recipe, stage)
    llava = llava_from(setup.built, recipe)
    config = recipe.stages[stage]
    loaded = LoadedModel(setup.built, recipe, setup.template, config.data.image_aspect_ratio, {})
    files = sorted(mix.image_folder.glob("*.png"))[: options.gen_prompts]
    images = [Image.open(path).convert("RGB") for path in files]
    return bench_generation(loaded, llava, images, new_tokens=options.gen_tokens)


def _figures(runs: dict[str, list], generation: list, cache_build_s: dict[str, float]) -> dict:
    fields = ("tokens_per_s", "samples_per_s", "padding_share", "step_s", "peak_mib")
    return {
        "feature_cache_build_s": cache_build_s,
        "training": {
            name: [{**{f: getattr(r, f) for f in fields}, "sections": r.sections} for r in side]
            for name, side in runs.items()
        },
        "generation": {
            run.name: {"ttft_s": run.ttft_s, "tokens_per_s": run.tokens_per_s} for run in generation
        },
    }


def _cells(options: BenchOptions, path: Path) -> list[tuple[str, str, str | None]]:
    """``(data shape, stage, template)`` per cell: the built-in recipe's shapes x stages, or
    a recipe's stage (default its last) on the mix with its own template."""
    if options.recipe is None:
        return [
            (shape, stage, TEMPLATES[shape]) for shape in options.data for stage in options.stages
        ]
    from mllm.config import load_recipe

    stage = options.stage or list(load_recipe(path, list(options.overrides)).stages)[-1]
    return [("mix", stage, None)]


def _cache_end_to_end(options: BenchOptions, path: Path, mix) -> str:
    """Whole stage-1 runs of ``options.cache_epochs`` epochs on the captions, packed, with the
    feature cache off and ``auto`` (built anew in every run, so its build is included), the
    sides alternating per round; returns the table."""
    from mllm.bench.ours import time_whole_stage
    from mllm.bench.report import cache_table

    sides = {}
    for name, cache in (("tower", "null"), ("auto", "auto")):
        extra = (
            "stages.align.max_steps=null",
            f"stages.align.epochs={options.cache_epochs}",
            "stages.align.data.packing=true",
            f"stages.align.data.feature_cache={cache}",
        )
        sides[name] = bench_recipe(options, path, f"whole-{name}", mix, "align", "plain", extra)[0]
    runs: dict[str, list] = {name: [] for name in sides}
    for round_index in range(options.rounds):
        names = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for name in names:
            run = time_whole_stage(sides[name], "align")
            runs[name].append(run)
            print(f"whole stage, round {round_index + 1} {name}: {run.seconds:.1f} s", flush=True)
    return cache_table(runs, options.cache_epochs)


def _bench_cell(options: BenchOptions, path: Path, mix, stage: str, template: str | None):
    """Train every side of one cell in alternating rounds and print its tables."""
    from mllm.bench.report import breakdown_table, training_table

    names = ["baseline", *options.variants]
    recipes = {name: bench_recipe(options, path, name, mix, stage, template) for name in names}
    llava = None
    if options.llava_python is not None:
        from mllm.bench.original_llava import OriginalLlava

        recipes = {"baseline": recipes["baseline"], LLAVA: recipes["baseline"], **recipes}
        folder = options.workdir / "original_llava" / mix.records.parent.name / stage
        llava = OriginalLlava.prepare(
            options.llava_python, folder, *recipes["baseline"], options.threads
        )
    cache_build_s = _build_caches(recipes)
    runs = _train_rounds(options, recipes, llava)
    print()
    print(training_table(runs))
    print()
    print(breakdown_table(runs))
    print()
    return recipes, runs, cache_build_s


def run_bench(options: BenchOptions) -> int:
    """Run the benchmark (see the module docstring), print its tables; 0 when done."""
    os.environ["OMP_NUM_THREADS"] = str(options.threads)  # init_distributed keeps it
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    import torch
    from transformers.utils import logging as hf_logging

    from mllm.bench.data import write_length_mix
    from mllm.bench.report import generation_table, goal_table

    torch.set_num_threads(options.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    options.workdir.mkdir(parents=True, exist_ok=True)
    path = Path(options.recipe) if options.recipe else builtin_recipe(options.workdir)
    shapes = {}
    for shape in dict.fromkeys([*options.data, "mix"] if options.recipe is None else ["mix"]):
        shapes[shape] = write_length_mix(
            options.workdir / "data" / shape,
            num_samples=options.samples,
            image_size=TINY["image_size"],
            shape=shape,
        )
    cells, figures = {}, {}
    for shape, stage, template in _cells(options, path):
        print(f"== {shape}, stage {stage} ==", flush=True)
        recipes, runs, cache_build_s = _bench_cell(options, path, shapes[shape], stage, template)
        cells[f"{shape} / {stage}"] = runs
        figures[f"{shape} / {stage}"] = _figures(runs, [], cache_build_s)
        last = recipes["baseline"]
    generation = []
    if options.gen_prompts:
        recipe, stage = last
        generation = _generation(options, recipe, stage, shapes["mix"])
        print(generation_table(generation))
        print()
    print(goal_table(cells))
    print(f"recipe {path}; {time.perf_counter() - started:.0f} s in all")
    if options.cache_epochs and options.recipe is None:  # the built-in recipe's stage 1
        print()
        print(_cache_end_to_end(options, path, shapes.get("captions") or _captions(options)))
    if options.json:
        out = {"cells": figures, "generation": _figures({}, generation, {})["generation"]}
        options.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _captions(options: BenchOptions):
    from mllm.bench.data import write_length_mix

    return write_length_mix(
        options.workdir / "data" / "captions",
        num_samples=options.samples,
        image_size=TINY["image_size"],
        shape="captions",
    )
