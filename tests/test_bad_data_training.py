"""Training over a corpus of bad records: `skip` completes with the right counts, `fail` stops
before the first step naming the records."""

from __future__ import annotations

import pytest
from bad_corpus import LOAD_TIME_BAD, MAX_LENGTH, construction_kinds, make_corpus
from training_utils import REPO, run_train, train_command, write_recipe

from mllm.tiny import make_tiny_models

#: Image problems the up-front header check catches; the rest only show when pixels decode.
FOUND_AT_LOAD = ("cut-png", "cut-jpg")


@pytest.fixture(scope="module")
def corpus_recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    # 16-pixel images in 8-pixel patches: 4 tokens per image, as the corpus' lengths assume.
    models = make_tiny_models(
        root / "models", image_size=16, patch_size=8, llm_hidden=32, vision_hidden=32
    )
    data, images = make_corpus(root / "corpus")

    def recipe(policy: str) -> dict:
        return {
            "name": "bad-data",
            "output_dir": str(root / policy),
            "model": {
                "vision": {"name": "clip", "path": str(models["clip"])},
                "projector": {"name": "mlp"},
                "llm": {"path": str(models["llama"]), "family": "llama"},
            },
            "stages": {
                "instruct": {
                    "data": {
                        "path": str(data),
                        "image_folder": str(images),
                        "max_length": MAX_LENGTH,
                        "on_bad_record": policy,
                    },
                    "train": {"projector": "full", "llm": "full"},
                    "optim": {"lr": 1e-3},
                    "epochs": 1,
                    "global_batch_size": 2,
                    "micro_batch_size": 1,
                    "precision": "fp32",
                }
            },
        }

    return root, recipe


def test_skip_policy_completes_with_the_skipped_count(corpus_recipe):
    root, recipe = corpus_recipe
    result = run_train([str(write_recipe(root / "skip.yaml", recipe("skip")))])
    before = len(construction_kinds()) + len(LOAD_TIME_BAD) - len(FOUND_AT_LOAD)
    assert (
        f"skipped {before} records before training and {len(FOUND_AT_LOAD)} while loading"
        in result.stderr
    )
    for record_id in FOUND_AT_LOAD:
        assert f"id {record_id}" in result.stderr or record_id in result.stderr
    assert (root / "skip/instruct/final/model.safetensors").is_file()


def test_fail_policy_stops_before_the_first_step(corpus_recipe):
    import subprocess

    root, recipe = corpus_recipe
    command, env = train_command([str(write_recipe(root / "fail.yaml", recipe("fail")))])
    result = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode != 0
    assert "no-conversations" in result.stderr and "gpt-first" in result.stderr
    assert not (root / "fail/instruct/metrics.jsonl").exists()
