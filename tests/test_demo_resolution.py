"""The resolution demo's task: its answer survives anyres tiling and not the pad mode's 32-px
view, through mllm's own preprocessing; and its files are in LLaVA's formats."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor

from mllm.data.anyres import prepare_anyres
from mllm.data.images import prepare_image
from mllm.demo.resolution import (
    IMAGE_SIZES,
    PATTERNS,
    QUESTIONS,
    SQUARE_SIDES,
    make_resolution_dataset,
    render_texture,
    sample_texture_scene,
    texture_signs,
)
from mllm.models.anyres import image_token_count
from mllm.tiny.models import make_tiny_vision_tower

#: The demo recipes' grid resolutions (recipes/tiny/resolution_anyres.yaml).
PINPOINTS = [(64, 64), (32, 64), (64, 32)]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    """The demo tower's processor: CLIP at 32 px (shortest edge 32, centre crop)."""
    folder = make_tiny_vision_tower(
        tmp_path_factory.mktemp("clip32"), "clip", image_size=32, patch_size=8
    )
    return AutoImageProcessor.from_pretrained(folder, backend="pil")


def _levels(pixel_values, processor) -> np.ndarray:
    """Normalised pixel values back in 0-255 levels, so differences read as colour steps."""
    std = np.asarray(processor.image_std)[:, None, None]
    return pixel_values.numpy() * std * 255


def _all_patterns(seed: int):
    """One scene drawn four times, once per pattern, everything else equal."""
    scene = sample_texture_scene(random.Random(seed))
    return [render_texture(dataclasses.replace(scene, pattern=p)) for p in PATTERNS], scene


@pytest.mark.parametrize("seed", range(24))
def test_patterns_are_one_image_at_base_resolution(processor, seed):
    """The pad mode halves every image to 32 px: the four patterns then differ by at most 3
    colour levels (the resize's rounding and overshoot at the square's faded edges), against
    a texture whose two colours lie 80-150 levels apart, and by under half a level on average."""
    images, _ = _all_patterns(seed)
    views = [_levels(prepare_image(image, processor, "pad"), processor) for image in images]
    assert views[0].shape == (3, 32, 32)
    largest = max(np.abs(a - b).max() for a in views for b in views)
    assert largest <= 3.5, f"seed {seed}: the 32-px views differ by {largest:.1f} levels"
    average = max(np.abs(a - b).mean() for a in views for b in views)
    assert average <= 0.5, f"seed {seed}: the 32-px views differ by {average:.2f} levels on average"


@pytest.mark.parametrize("seed", range(24))
def test_patterns_differ_in_the_anyres_tiles(processor, seed):
    """The anyres grid tiles show the image at full resolution: every two patterns differ by
    the texture's contrast (40+ levels) over a quarter of the square or more."""
    images, scene = _all_patterns(seed)
    tiles = [prepare_anyres(image, processor, PINPOINTS)[0] for image in images]
    grids = [_levels(t[1:], processor) for t in tiles]  # the grid tiles, base tile dropped
    for first in range(len(PATTERNS)):
        for second in range(first):
            difference = np.abs(grids[first] - grids[second])
            assert difference.max() >= 40
            assert (difference.max(axis=1) >= 20).sum() >= scene.side**2 // 4  # not an edge


def test_texture_keeps_the_mean_colour():
    """Every pattern averages to the square's mean, so colour and brightness tell nothing."""
    for pattern in PATTERNS:
        for side in SQUARE_SIDES:
            for phase in (0, 1):
                assert abs(texture_signs(pattern, side, phase).sum()) < 1e-9


def test_sizes_exercise_unpadding():
    """64x64 fills the 2x2 grid; a 48-px side leaves a band that spatial_unpad cuts."""
    counts = {size: image_token_count("spatial_unpad", 16, size, (2, 2)) for size in IMAGE_SIZES}
    assert counts == {(64, 64): 16 + 8 * 9, (48, 64): 16 + 6 * 9, (64, 48): 16 + 8 * 7}


def test_dataset_files(tmp_path):
    dataset = make_resolution_dataset(tmp_path / "data", num_train=24, num_test=12, seed=3)
    records = json.loads(dataset.train_json.read_text())
    assert len(records) == 24 and len({r["id"] for r in records}) == 24
    for record in records:
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        assert gpt["value"] in PATTERNS
        with Image.open(dataset.image_folder / record["image"]) as image:
            assert (image.height, image.width) in IMAGE_SIZES and image.mode == "RGB"

    questions = [json.loads(line) for line in dataset.questions.read_text().splitlines()]
    answers = [json.loads(line) for line in dataset.answers.read_text().splitlines()]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers]
    assert len(questions) == 12
    for question, answer in zip(questions, answers, strict=True):
        assert question["text"].startswith(QUESTIONS[0]) and "<image>" not in question["text"]
        assert question["category"] == answer["answer"] in PATTERNS
        assert (dataset.image_folder / question["image"]).is_file()
        assert question["image"].startswith("test/")


def test_dataset_is_deterministic(tmp_path):
    first = make_resolution_dataset(tmp_path / "a", num_train=6, num_test=4, seed=1)
    second = make_resolution_dataset(tmp_path / "b", num_train=6, num_test=4, seed=1)
    for path in (
        "train.json",
        "test/questions.jsonl",
        "test/answers.jsonl",
        "images/test/000003.png",
    ):
        assert (first.root / path).read_bytes() == (second.root / path).read_bytes()


def test_negative_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        make_resolution_dataset(tmp_path, num_train=-1, num_test=1)


def test_demo_data_writes_the_task(tmp_path):
    """``mllm demo-data OUT --num-resolution N`` writes it beside the shapes data."""
    from mllm.commands.demo_data import main

    argv = [str(tmp_path), "--num-align", "1", "--num-instruct", "1", "--num-test", "2"]
    assert main([*argv, "--num-resolution", "3"]) == 0
    records = json.loads((tmp_path / "resolution" / "train.json").read_text())
    assert len(records) == 3
    assert len((tmp_path / "resolution/test/questions.jsonl").read_text().splitlines()) == 2
