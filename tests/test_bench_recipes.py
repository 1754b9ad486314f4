"""The benchmark's variants reach the recipe it trains as validated stage settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_utils import make_workspace, tiny_recipe, write_recipe

from mllm.bench.data import LengthMix
from mllm.bench.recipes import VARIANTS, bench_recipe
from mllm.bench.run import BenchOptions


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_sets_its_stage_settings(ws, tmp_path, variant):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(ws, tmp_path / "runs"))
    options = BenchOptions(workdir=tmp_path)
    mix = LengthMix(records=Path(ws["instruct"]), image_folder=Path(ws["images"]))
    recipe, stage = bench_recipe(options, path, variant, mix, "instruct", "vicuna_v1")
    settings = recipe.stages[stage]
    cache = tmp_path / "feature_cache" / Path(ws["instruct"]).parent.name / "instruct"
    for key, value in VARIANTS[variant].items():
        section, _, name = key.rpartition(".")
        actual = getattr(settings.data if section == "data" else settings, name)
        expected = value.format(cache=cache) if isinstance(value, str) else value
        assert str(actual) == str(expected), f"{variant}: {key}"
    assert settings.compile == variant.endswith("compiled")
    assert settings.max_steps == options.warmup + options.steps
