"""Recipes: every shipped one validates; bad ones fail naming the file, the key and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mllm.config import RecipeError, dump_recipe, load_recipe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "recipes").rglob("*.yaml"))


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    # Relative paths in recipes start at the directory training is launched from.
    monkeypatch.chdir(REPO)


def test_recipes_are_found():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.stages
    # The resolved recipe saved next to checkpoints must load back to the same thing.
    assert yaml.safe_load(dump_recipe(recipe)) == recipe.model_dump(mode="json")


def test_llava_v1_5_has_published_settings():
    recipe = load_recipe(REPO / "recipes/llava_v1_5.yaml")
    align, instruct = recipe.stages["align"], recipe.stages["instruct"]
    assert recipe.model.vision.path == "openai/clip-vit-large-patch14-336"
    assert recipe.model.vision.feature_layer == [-2]
    assert recipe.model.projector.name == "mlp" and recipe.model.projector.depth == 2
    assert recipe.model.llm.path == "lmsys/vicuna-7b-v1.5"
    assert (align.optim.lr, align.global_batch_size) == (1e-3, 256)
    assert (instruct.optim.lr, instruct.global_batch_size) == (2e-5, 128)
    assert align.zero_config.endswith("zero2.json") and instruct.zero_config.endswith("zero3.json")
    assert align.data.max_length == instruct.data.max_length == 2048
    assert align.data.template == "plain" and instruct.data.template == "vicuna_v1"
    assert instruct.init_from == "stage:align"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"extends: {REPO / 'recipes/llava_v1_5.yaml'}\n{text}")
    return path


def _problems(path: Path, overrides: list[str] | None = None) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    assert str(path) in str(info.value)
    return dict(info.value.problems)


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, "stages:\n  align:\n    optim: {lr: 1.0e-3, learning_rate: 2}\n")
    problems = _problems(path)
    assert problems == {"stages.align.optim.learning_rate": "unknown key"}


def test_wrong_type_is_named(tmp_path):
    path = _write(tmp_path, "stages:\n  instruct:\n    micro_batch_size: sixteen\n")
    problems = _problems(path)
    assert list(problems) == ["stages.instruct.micro_batch_size"]
    assert "integer" in problems["stages.instruct.micro_batch_size"]


def test_component_options_are_validated_by_the_component(tmp_path):
    path = _write(tmp_path, "model:\n  projector: {name: mlp, depth: 0, hidden: 3}\n")
    problems = _problems(path)
    assert set(problems) == {"model.projector.depth", "model.projector.hidden"}
    path = _write(tmp_path, "model:\n  projector: {name: qformerr}\n")
    assert "choose one of" in _problems(path)["model.projector.name"]


def test_inconsistent_values_are_named(tmp_path):
    path = _write(
        tmp_path,
        "stages:\n  align:\n    global_batch_size: 100\n    init_from: 'stage:instruct'\n"
        "    train: {vision: frozen, projector: frozen, llm: frozen}\n",
    )
    problems = _problems(path)
    assert "not a multiple of micro_batch_size 32" in problems["stages.align.global_batch_size"]
    assert "earlier stage" in problems["stages.align.init_from"]
    assert "train nothing" in problems["stages.align.train"]


def test_family_is_an_exact_name(tmp_path):
    path = _write(tmp_path, "model:\n  llm: {family: Vicuna-7B}\n")
    assert "unknown family" in _problems(path)["model.llm.family"]


def test_zero_config_must_hold_only_zero_settings(tmp_path):
    zero = tmp_path / "zero.json"
    zero.write_text('{"zero_optimization": {"stage": 2}, "train_batch_size": 64}')
    path = _write(tmp_path, f"stages:\n  align:\n    zero_config: {zero}\n")
    assert "train_batch_size" in _problems(path)["stages.align.zero_config"]
    zero.write_text('{"zero_optimization": {"stage": 2}, "train_batch_size": "auto"}')
    assert load_recipe(path).stages["align"].zero_config == str(zero)


def test_overrides_apply_and_are_validated(tmp_path):
    path = REPO / "recipes/llava_v1_5.yaml"
    recipe = load_recipe(path, ["stages.align.optim.lr=2e-4", "model.projector.depth=3"])
    assert recipe.stages["align"].optim.lr == 2e-4
    assert recipe.model.projector.depth == 3
    problems = _problems(path, ["stages.align.micro_batch_size=0"])
    assert "greater than 0" in problems["stages.align.micro_batch_size"]
    problems = _problems(path, ["stages.align.epochs=1", "stages.align.typo=1"])
    assert problems == {"stages.align.typo": "unknown key"}


def test_extends_merges_mappings(tmp_path):
    path = _write(tmp_path, "name: child\nmodel:\n  llm: {path: some/other-llm}\n")
    recipe = load_recipe(path)
    assert recipe.name == "child"
    assert recipe.model.llm.path == "some/other-llm"
    assert recipe.model.llm.family == "vicuna"  # kept from the parent


def test_extends_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_cli_recipe_check_prints_resolved_recipe_offline():
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": ""}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mllm.cli",
            "recipe",
            "check",
            "recipes/llava_v1_5.yaml",
            "stages.align.epochs=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["stages"]["align"]["epochs"] == 2.0
    assert printed["model"]["vision"]["path"] == "openai/clip-vit-large-patch14-336"


def test_cli_recipe_check_fails_with_key(tmp_path):
    path = _write(tmp_path, "stages:\n  align:\n    bogus: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "mllm.cli", "recipe", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2
    assert str(path) in result.stderr and "stages.align.bogus: unknown key" in result.stderr


def test_extends_with_another_component_replaces_its_options(tmp_path):
    # The parent's mlp has `depth`; a linear projector has no such option.
    path = _write(tmp_path, "model:\n  projector: {name: linear}\n")
    assert load_recipe(path).model.projector.name == "linear"
    path = _write(tmp_path, "model:\n  projector: {name: mlp, depth: 3}\n")
    assert load_recipe(path).model.projector.depth == 3
