"""Feature cache of a frozen tower: exact features, same losses, and refusals that name the fix."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn
from training_utils import make_workspace, run_train, tiny_recipe, workspace_dataset, write_recipe

from mllm.commands.cache_features import main as cache_features_main
from mllm.config import RecipeError, validate_recipe
from mllm.config.schema import DataConfig
from mllm.data import BadRecord, DataCollator, read_records
from mllm.data.feature_cache import (
    FeatureCacheError,
    build_feature_cache,
    feature_fingerprint,
)
from mllm.data.packing import PackingCollator
from mllm.data.recipe_templates import special_tokens_for
from mllm.models import build_model
from mllm.training.metrics import read_metrics
from mllm.training.setup import attach_feature_cache, feature_cache_wanted
from mllm.training.stage import apply_stage


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def setup(ws, tmp_path_factory):
    """A tiny fp32 model with the tower frozen (instruct settings) and its recipe."""
    recipe = validate_recipe(tiny_recipe(ws, tmp_path_factory.mktemp("run")), "test")
    torch.manual_seed(0)
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    apply_stage(built.model, recipe.stages["instruct"].train)
    return recipe, built


def _attach(dataset, built, folder, **data):
    config = DataConfig(path="unused.json", feature_cache=str(folder), **data)
    return attach_feature_cache(dataset, config, built.model, "stages.s.data.feature_cache")


def test_cached_features_equal_the_tower_exactly(ws, setup, tmp_path):
    _, built = setup
    dataset = workspace_dataset(ws, built)
    paths = dataset.image_paths()
    cache = _attach(dataset, built, tmp_path / "cache")
    assert sorted(cache.rows) == sorted(paths) and cache.shape == (16, 32)
    assert cache.dtype == torch.float32 and dataset.feature_cache is cache
    pixels = torch.stack([dataset._load(path) for path in paths])  # [n, 3, H, W]
    with torch.no_grad():
        expected = built.model.vision.eval()(pixels)  # one batch, as the build ran it
    assert torch.equal(cache.features(paths), expected)
    # Picklable for DataLoader workers; reopened there.
    assert torch.equal(pickle.loads(pickle.dumps(cache)).features(paths[:3]), expected[:3])
    index = json.loads((tmp_path / "cache/index.json").read_text())
    assert index["fingerprint"]["vision"]["feature_layer"] == [-2]
    assert len(index["fingerprint"]["weights"]) == 32


@pytest.mark.parametrize("packing", [False, True])
def test_loss_with_the_cache_equals_the_loss_with_the_tower(ws, setup, tmp_path, packing):
    _, built = setup
    dataset = workspace_dataset(ws, built)
    text_only = [i for i, flag in enumerate(dataset.has_image) if not flag]
    with_image = [i for i, flag in enumerate(dataset.has_image) if flag]
    picked = [with_image[0], text_only[0], with_image[1], with_image[2]]
    pad = built.tokenizer.pad_token_id
    collate = PackingCollator(pad, max_length=256) if packing else DataCollator(pad)
    pixel_batch = collate([dataset[i] for i in picked])
    _attach(dataset, built, tmp_path / "cache")
    cached = [dataset[i] for i in picked]
    assert cached[1]["image_features"].shape == (0, 16, 32)  # text-only
    assert "pixel_values" not in cached[0] and cached[0]["image_features"].shape == (1, 16, 32)
    feature_batch = collate(cached)
    assert feature_batch["pixel_values"] is None
    assert feature_batch["image_features"].shape == (3, 16, 32)
    model = built.model.train()
    model.vision.eval()  # frozen, as the trainer leaves it
    calls = []
    hook = model.vision.register_forward_hook(lambda *args: calls.append(1))
    losses = {}
    for name, batch in (("tower", pixel_batch), ("cache", feature_batch)):
        batch = {k: v for k, v in batch.items() if k != "num_tokens"}
        model.zero_grad(set_to_none=True)
        losses[name] = model(**batch).loss
        losses[name].backward()
        if name == "cache":
            assert not calls  # the tower never ran
        calls.clear()
    hook.remove()
    torch.testing.assert_close(losses["cache"], losses["tower"], rtol=1e-6, atol=1e-6)
    # A text-only batch from the cache: the blank path runs the projector, not the tower.
    text_batch = DataCollator(pad)([dataset[text_only[0]], dataset[text_only[1]]])
    assert text_batch["image_features"].shape == (0, 16, 32)
    model.zero_grad(set_to_none=True)
    model(**text_batch).loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())
    with pytest.raises(ValueError, match="not both"):
        model(**{**feature_batch, "pixel_values": pixel_batch["pixel_values"]})


def test_another_fingerprint_is_refused_naming_the_fields(ws, setup, tmp_path):
    _, built = setup
    folder = tmp_path / "cache"
    _attach(workspace_dataset(ws, built, "align"), built, folder)
    before = (folder / "features.bin").read_bytes()
    tower = built.model.vision
    tower.config.feature_layer = [-1]
    try:
        with pytest.raises(FeatureCacheError) as caught:
            _attach(workspace_dataset(ws, built, "align"), built, folder)
    finally:
        tower.config.feature_layer = [-2]
    message = str(caught.value)
    assert str(folder) in message and "stages.s.data.feature_cache" in message
    assert "vision.feature_layer (cached [-2], now [-1])" in message
    assert "weights" not in message and "delete" in message
    # A different checkpoint at the same path: the weights digest differs.
    weight = next(tower.parameters())
    with torch.no_grad():
        weight.add_(1.0)
    try:
        with pytest.raises(FeatureCacheError, match=r"differing: weights \(cached"):
            _attach(workspace_dataset(ws, built, "align"), built, folder)
    finally:
        with torch.no_grad():
            weight.sub_(1.0)
    assert (folder / "features.bin").read_bytes() == before  # never touched


def test_images_missing_from_the_cache_are_named(ws, setup, tmp_path):
    _, built = setup
    records = read_records(ws["align"])
    folder = tmp_path / "cache"
    _attach(workspace_dataset(ws, built, "align", records[:5]), built, folder)
    full = workspace_dataset(ws, built, "align", records)
    missing = full.image_paths()[5:]
    with pytest.raises(FeatureCacheError) as caught:
        _attach(full, built, folder)
    message = str(caught.value)
    assert f"no features for {len(missing)} of the {len(missing) + 5} images" in message
    assert repr(missing[0]) in message and "delete" in message and "another folder" in message
    assert full.feature_cache is None


class _Interrupted(nn.Module):
    """The tower, stopped by Ctrl-C at its second batch."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower, self.calls = tower, 0
        self.num_patches, self.hidden_size = tower.num_patches, tower.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.tower(pixel_values)


def test_an_interrupted_build_leaves_no_cache_folder(ws, setup, tmp_path):
    _, built = setup
    dataset = workspace_dataset(ws, built, "align")
    folder = tmp_path / "cache"
    tower = built.model.vision
    fingerprint = feature_fingerprint(tower, built.image_processor, "pad")
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(folder, _Interrupted(tower), dataset, fingerprint, batch_size=4)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the partial one
    # After a kill -9 only the partial folder stays behind: the next run builds anew.
    (tmp_path / "cache.partial-12345").mkdir()
    cache = _attach(dataset, built, folder)
    assert len(cache.rows) == len(dataset.image_paths())


def test_unreadable_images_follow_the_bad_record_policy(ws, setup, tmp_path):
    _, built = setup
    records = read_records(ws["align"])[:4]
    records[1] = {**records[1], "image": "no/such.png"}
    for policy in ("skip", "fail"):
        dataset = workspace_dataset(ws, built, "align", records, on_bad_record=policy)
        folder = tmp_path / policy
        if policy == "fail":
            with pytest.raises(FeatureCacheError, match=r"no/such.png.*on_bad_record is 'fail'"):
                _attach(dataset, built, folder)
            assert not folder.exists()
            continue
        cache = _attach(dataset, built, folder)
        assert cache.unreadable["no/such.png"]["kind"] == "image_missing"
        bad = dataset[1]
        assert isinstance(bad, BadRecord) and bad.kind == "image_missing"
        assert dataset[0]["image_features"].shape == (1, 16, 32)


def test_recipe_check_refuses_a_cache_for_a_trained_tower(ws, tmp_path):
    raw = tiny_recipe(
        ws,
        tmp_path,
        align={"train": {"vision": "full"}, "data": {"feature_cache": str(tmp_path / "c")}},
    )
    with pytest.raises(RecipeError) as caught:
        validate_recipe(raw, "my.yaml")
    message = str(caught.value)
    assert "my.yaml" in message and "stages.align.data.feature_cache" in message
    assert "vision tower trains" in message
    frozen = tiny_recipe(ws, tmp_path, align={"data": {"feature_cache": "rel/cache"}})
    assert validate_recipe(frozen, "ok.yaml").stages["align"].data.feature_cache.startswith("/")


def test_cli_builds_then_training_reads_the_cache_with_the_same_losses(ws, tmp_path):
    """``mllm cache-features`` ahead of time, then scripts/train.py with a DataLoader worker."""
    folder = tmp_path / "cache"
    losses = {}
    for cached in (False, True):
        data = {"num_workers": 1, **({"feature_cache": str(folder)} if cached else {})}
        raw = tiny_recipe(ws, tmp_path / f"run{cached}", align={"max_steps": 2, "data": data})
        path = write_recipe(tmp_path / f"r{cached}.yaml", raw)
        if cached:
            assert cache_features_main([str(path), "--stage", "align"]) == 0
            assert (folder / "index.json").is_file()
            built_at = (folder / "features.bin").stat().st_mtime_ns
        run_train([str(path), "--stage", "align"])
        metrics = read_metrics(tmp_path / f"run{cached}/align/metrics.jsonl")
        losses[cached] = [row["loss"] for row in metrics]
    assert (folder / "features.bin").stat().st_mtime_ns == built_at  # read, not rebuilt
    assert len(losses[True]) == 2
    for cached, computed in zip(losses[True], losses[False], strict=True):
        assert cached == pytest.approx(computed, rel=1e-6)


class _Data:
    """What ``feature_cache_wanted`` reads of a dataset."""

    def __init__(self, size: int, images: bool = True) -> None:
        self.size, self.images = size, images

    def __len__(self) -> int:
        return self.size

    def image_paths(self) -> list[str]:
        return ["a.png"] if self.images else []


def test_auto_caches_when_a_frozen_tower_would_see_its_images_again(ws, tmp_path):
    def wanted(dataset=None, **align):
        raw = tiny_recipe(ws, tmp_path, align={"max_steps": None, **align})
        stage = validate_recipe(raw, "test").stages["align"]
        return feature_cache_wanted(stage, dataset or _Data(32))

    assert (
        validate_recipe(tiny_recipe(ws, tmp_path), "t").stages["align"].data.feature_cache == "auto"
    )
    assert wanted(epochs=1)[0] is False
    use, reason = wanted(epochs=3)
    assert use and "passes over its data 3.00 times" in reason
    assert wanted(max_steps=9)[0]  # 36 samples drawn from 32
    assert not wanted(max_steps=8)[0]
    assert not wanted(epochs=3, train={"vision": "full"})[0]
    assert not wanted(epochs=3, data={"feature_cache": None})[0]
    assert not wanted(_Data(32, images=False), epochs=3)[0]
    assert wanted(data={"feature_cache": str(tmp_path / "c")})[0]  # the recipe asks


def test_auto_cache_is_built_on_first_use_and_keeps_the_losses(ws, tmp_path):
    """scripts/train.py over more than one epoch: the default cache is built under
    OUTPUT_DIR/feature_cache/STAGE and read, with the losses of the tower."""
    losses = {}
    for setting in ("auto", None):
        out = tmp_path / f"run_{setting}"
        align = {"max_steps": 9, "data": {"feature_cache": setting}}
        raw = tiny_recipe(ws, out, align=align)
        run_train([str(write_recipe(tmp_path / f"r_{setting}.yaml", raw)), "--stage", "align"])
        losses[setting] = [row["loss"] for row in read_metrics(out / "align/metrics.jsonl")]
    folders = list((tmp_path / "run_auto" / "feature_cache" / "align").iterdir())
    assert len(folders) == 1 and (folders[0] / "index.json").is_file()
    assert not (tmp_path / "run_None" / "feature_cache").exists()
    assert len(losses["auto"]) == 9
    for cached, computed in zip(losses["auto"], losses[None], strict=True):
        assert cached == pytest.approx(computed, rel=1e-6)
