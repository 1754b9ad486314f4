"""The shapes dataset is well formed, deterministic, and its answers are true of the pixels."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import deque
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mllm.commands.demo_data import main
from mllm.demo.scenes import HARD_SHAPES, VARIANTS, draw_shape, sample_scene
from mllm.demo.shapes import (
    COLOURS,
    QUADRANTS,
    QUESTIONS,
    SHAPES,
    SHORT_ANSWER,
    ShapesDataset,
    make_shapes_dataset,
    render,
)

SIZES = {"num_align": 48, "num_instruct": 60, "num_test": 30}
GRID = {"basic": 2, "hard": 3}
EXISTS = re.compile(r"Is there an? (\w+) (\w+) in the image\?")
TOWER = 32  # the demo tower's input side; the processor resizes (bicubic) to it


@pytest.fixture(scope="module", params=["basic", "hard"])
def data(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, ShapesDataset]:
    variant = request.param
    root = tmp_path_factory.mktemp(f"shapes-{variant}")
    return variant, make_shapes_dataset(root, **SIZES, variant=variant)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as a boolean mask of its own."""
    labels = np.zeros(mask.shape, int)
    found = []
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        labels[start] = len(found) + 1
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = len(found) + 1
                    queue.append((ny, nx))
        found.append(labels == len(found) + 1)
    return found


def cell_name(row: int, column: int, grid: int) -> str:
    """Grid cell names spelled out independently of the generator's tables."""
    vertical = ("top", "", "bottom") if grid == 3 else ("top", "bottom")
    horizontal = ("left", "", "right") if grid == 3 else ("left", "right")
    return f"{vertical[row]} {horizontal[column]}".strip() or "center"


def classify(box: np.ndarray) -> str:
    """Name a shape from its bounding-box mask; exactly one rule must fit."""
    height, width = box.shape
    fill, top, bottom = box.mean(), box[0].mean(), box[-1].mean()
    quarter = box[height // 4].mean()
    bottom_runs = np.count_nonzero(np.diff(np.concatenate([[0], box[-1].astype(int), [0]])) == 1)
    rules = {
        "square": fill > 0.95,
        "triangle": bottom > 0.9 and top < 0.5,
        "circle": 0.68 < fill < 0.9 and top < 0.5 and bottom < 0.5,
        "cross": 0.15 < top < 0.3 and quarter < 0.3 and fill < 0.5 and box[height // 2].all(),
        "diamond": top < 0.12 and bottom < 0.12 and 0.4 < quarter < 0.7 and 0.45 < fill < 0.55,
        "star": bottom_runs == 2 and 0.4 < fill < 0.5,
    }
    fits = [name for name, fit in rules.items() if fit]
    assert len(fits) == 1, (fits, box.astype(int))
    return fits[0]


def describe(path: Path, variant: str) -> dict[str, str]:
    """Read every answer back from the pixels alone (lower case, as a caption words it)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)  # [height, width, 3]
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)  # [height, width]
    mask = saturation > 100  # every shape colour has >= 150, backgrounds near-gray
    background = pixels[~mask]
    assert saturation[~mask].max() <= 60, "background must be near-gray"
    if variant == "basic":
        assert len(np.unique(background)) == 1, "basic background must be one flat gray"
    else:
        assert np.unique(background, axis=0).shape[0] > 50, "hard background must vary"

    grid, side = GRID[variant], pixels.shape[0]
    bounds = [i * side // grid for i in range(grid + 1)]
    colours, shapes, cells = set(), set(), []
    for copy in components(mask):
        ys, xs = np.nonzero(copy)
        colours |= {tuple(p) for p in pixels[copy].tolist()}
        shapes.add(classify(copy[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]))
        row = np.searchsorted(bounds, ys.min(), side="right") - 1
        column = np.searchsorted(bounds, xs.min(), side="right") - 1
        # wholly inside its cell, so counting copies is counting occupied cells
        assert ys.max() < bounds[row + 1] and xs.max() < bounds[column + 1], path
        cells.append((row, column))
    assert len(colours) == 1 and len(shapes) == 1 and len(set(cells)) == len(cells), path
    rgb = colours.pop()
    colour = next(name for name, value in COLOURS.items() if value == rgb)
    names = [cell_name(r, c, grid) for r, c in sorted(cells)]
    truth = {"color": colour, "shape": shapes.pop(), "count": str(len(cells)), "cells": names}
    if len(cells) == 1:
        truth["position"] = names[0]
    return truth


def category_of(question: str) -> str:
    return next(c for c, phrasings in QUESTIONS.items() if question.split("\n")[-2] in phrasings)


def expected_answer(truth: dict, category: str) -> str:
    return truth[category] if category == "count" else truth[category].capitalize()


def test_training_files_follow_llava_format(data: tuple[str, ShapesDataset]) -> None:
    variant, data = data
    align = json.loads(data.align_json.read_text())
    assert len(align) == SIZES["num_align"]
    for record in align:
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        assert gpt["value"][0].isupper() and gpt["value"].endswith(".")
        assert "<image>" not in gpt["value"]
        assert (data.image_folder / record["image"]).is_file()

    instruct = json.loads(data.instruct_json.read_text())
    assert len(instruct) == SIZES["num_instruct"]
    text_only = [r for r in instruct if "image" not in r]
    assert len(text_only) == round(0.1 * SIZES["num_instruct"])
    assert len({r["id"] for r in align + instruct}) == len(align) + len(instruct)
    names = {*COLOURS, *VARIANTS[variant].shapes, *VARIANTS[variant].cells}
    allowed = {name.capitalize() for name in names} | {"1", "2", "3", "4"}
    turn_counts = set()
    exists_answers: list[str] = []
    for record in instruct:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        humans = [t["value"] for t in turns[::2]]
        assert all(h.endswith(f"\n{SHORT_ANSWER}") for h in humans)
        text = json.dumps(turns)
        if "image" in record:
            asked = EXISTS.match(humans[-1].split("\n")[-2])
            if asked:  # the yes/no object question comes last, true of the pixels
                truth = describe(data.image_folder / record["image"], variant)
                present = asked.groups() == (truth["color"], truth["shape"])
                assert turns[-1]["value"] == ("Yes" if present else "No")
                exists_answers.append(turns[-1]["value"])
                turns, humans = turns[:-2], humans[:-1]
            turn_counts.add(len(turns) // 2)
            assert humans[0].startswith("<image>\n") and text.count("<image>") == 1
            assert {t["value"] for t in turns[1::2]} <= allowed
            assert len({category_of(h) for h in humans}) == len(humans)  # no repeated category
        else:
            assert "<image>" not in text and turns[1]["value"].isdigit()
    assert {1, 2, 3} <= turn_counts <= {1, 2, 3, 4}
    # about half of the image dialogues, about half of those answered "No"
    assert 0.3 * len(instruct) <= len(exists_answers) <= 0.6 * len(instruct)
    assert 0.25 <= exists_answers.count("No") / len(exists_answers) <= 0.75


def test_test_split_asks_each_applicable_category_once(data: tuple[str, ShapesDataset]) -> None:
    _, data = data
    questions, answers = read_jsonl(data.questions), read_jsonl(data.answers)
    assert len(questions) == len(answers)
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers]
    assert len({q["question_id"] for q in questions}) == len(questions)
    answer_of = {a["question_id"]: a["answer"] for a in answers}
    by_image: dict[str, dict[str, str]] = {}
    for question in questions:
        assert question["text"].endswith(f"\n{SHORT_ANSWER}")
        assert "<image>" not in question["text"]
        assert category_of(question["text"]) == question["category"]
        assert (data.image_folder / question["image"]).is_file()
        categories = by_image.setdefault(question["image"], {})
        assert question["category"] not in categories
        categories[question["category"]] = answer_of[question["question_id"]]
    assert len(by_image) == SIZES["num_test"]
    counts = []
    for categories in by_image.values():
        counts.append(categories["count"])
        single = categories["count"] == "1"
        assert list(categories) == [c for c in QUESTIONS if c != "position" or single]
    # about half the images hold one shape (position stays trained), the rest 2-4
    assert 0.25 < counts.count("1") / len(counts) < 0.75 and set(counts) == {"1", "2", "3", "4"}
    assert {q["category"] for q in questions} == set(QUESTIONS)


def test_answers_are_true_of_the_pixels(data: tuple[str, ShapesDataset]) -> None:
    variant, data = data
    checked = 0
    for record in json.loads(data.instruct_json.read_text()):
        if "image" not in record:
            continue
        truth = describe(data.image_folder / record["image"], variant)
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            if EXISTS.match(human["value"].split("\n")[-2]):
                continue  # checked in test_training_files_follow_llava_format
            category = category_of(human["value"])
            assert gpt["value"] == expected_answer(truth, category), (record["id"], category)
            checked += 1
    for record in json.loads(data.align_json.read_text()):
        truth = describe(data.image_folder / record["image"], variant)
        caption = record["conversations"][1]["value"]
        if truth["count"] == "1":
            match = re.fullmatch(r"An? (\w+) (\w+) (?:in|at|on) the ([a-z ]+)\.", caption)
            assert match and list(match.groups()) == [
                truth["color"],
                truth["shape"],
                *truth["cells"],
            ]
        else:
            match = re.fullmatch(r"(Two|Three|Four) (\w+) (\w+): ([a-z, ]+)\.", caption)
            assert match, caption
            number, colour, plural, where = match.groups()
            assert ["Two", "Three", "Four"].index(number) + 2 == int(truth["count"])
            assert colour == truth["color"] and plural in (f"{truth['shape']}s", "crosses")
            assert re.split(", | and ", where) == truth["cells"], caption
    answers = {a["question_id"]: a["answer"] for a in read_jsonl(data.answers)}
    for question in read_jsonl(data.questions):
        truth = describe(data.image_folder / question["image"], variant)
        assert answers[question["question_id"]] == expected_answer(truth, question["category"])
        checked += 1
    assert checked > 150


def test_answers_are_capitalised_words_or_digits(data: tuple[str, ShapesDataset]) -> None:
    """Real tokenizers split "Purple" and "3" unlike "purple"; the demo must not avoid them."""
    _, data = data
    answers = [a["answer"] for a in read_jsonl(data.answers)]
    for record in json.loads(data.instruct_json.read_text()):
        answers += [t["value"] for t in record["conversations"][1::2]]
    for answer in answers:
        assert answer.isdigit() or (answer[0].isupper() and answer[1:] == answer[1:].lower())
    assert any(a.isdigit() for a in answers) and any(" " in a for a in answers)


def test_test_images_are_not_training_images(data: tuple[str, ShapesDataset]) -> None:
    _, data = data

    def digests(split: str) -> set[str]:
        files = sorted((data.image_folder / split).glob("*.png"))
        return {hashlib.sha256(np.asarray(Image.open(f)).tobytes()).hexdigest() for f in files}

    test = digests("test")
    assert len(test) == SIZES["num_test"]
    assert not test & (digests("align") | digests("instruct"))


def test_same_seed_same_bytes_other_seed_differs(
    data: tuple[str, ShapesDataset], tmp_path: Path
) -> None:
    variant, data = data
    again = make_shapes_dataset(tmp_path / "again", **SIZES, variant=variant)
    other = make_shapes_dataset(tmp_path / "other", **SIZES, seed=1, variant=variant)
    files = sorted(p.relative_to(data.root) for p in data.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    for name in files:
        assert (data.root / name).read_bytes() == (again.root / name).read_bytes(), name
    assert data.align_json.read_bytes() != other.align_json.read_bytes()
    assert data.answers.read_bytes() != other.answers.read_bytes()


def coverage(shape: str, size: int, image_size: int) -> np.ndarray:
    """How much of each tower pixel one centred copy covers, after the processor's resize."""
    image = Image.new("L", (image_size, image_size), 0)
    draw_shape(ImageDraw.Draw(image), shape, (image_size // 2,) * 2, size, 255)
    return np.asarray(image.resize((TOWER, TOWER), Image.Resampling.BICUBIC)) / 255.0


@pytest.mark.parametrize("image_size", [48, 61])
def test_hard_answers_survive_the_resize_to_the_tower(image_size: int) -> None:
    """At 32 px the copies stay apart in their cells and every two shapes differ by > 12 px.

    For scale: basic at 32 px (100% held-out) differs by >= 24 px between its closest shapes;
    shapes of 7-11 px at 32 (~60% on shape) by 9-12 px.
    """
    rng = random.Random(0)
    sizes = set()
    for _ in range(40):
        scene = sample_scene(rng, image_size, "hard")
        sizes.add(scene.size)
        pixels = np.asarray(render(scene, image_size).resize((TOWER, TOWER), Image.BICUBIC))
        saturation = pixels.max(axis=-1).astype(int) - pixels.min(axis=-1)  # [32, 32]
        copies = components(saturation > 75)
        assert len(copies) == scene.count
        found = set()
        for copy in copies:
            ys, xs = np.nonzero(copy)
            row, column = int(ys.mean() * 3 // TOWER), int(xs.mean() * 3 // TOWER)
            found.add(cell_name(row, column, 3))
        assert found == set(scene.cells)
    for size in sizes:
        for a, b in combinations(HARD_SHAPES, 2):
            difference = np.abs(coverage(a, size, image_size) - coverage(b, size, image_size))
            assert difference.sum() > 12, (a, b, size)


def test_hard_variant_uses_its_shapes_cells_and_size(tmp_path: Path) -> None:
    hard = make_shapes_dataset(tmp_path, num_align=0, num_instruct=0, num_test=40, variant="hard")
    answers = {a["question_id"]: a["answer"] for a in read_jsonl(hard.answers)}
    seen: dict[str, set[str]] = {}
    for question in read_jsonl(hard.questions):
        seen.setdefault(question["category"], set()).add(answers[question["question_id"]])
    assert (
        seen["shape"]
        == {shape.capitalize() for shape in HARD_SHAPES}
        > {shape.capitalize() for shape in SHAPES}
    )
    assert {"Top", "Left", "Center", "Right", "Bottom"} & seen["position"]
    assert seen["position"] - {cell.capitalize() for cell in QUADRANTS}
    assert seen["count"] == {"1", "2", "3", "4"}
    assert Image.open(hard.image_folder / "test" / "000000.png").size == (48, 48)


def test_cli_variant_and_image_size(tmp_path: Path) -> None:
    argv = ["--num-align", "2", "--num-instruct", "3", "--num-test", "2"]
    assert main([str(tmp_path / "basic"), *argv, "--image-size", "33"]) == 0
    assert Image.open(tmp_path / "basic/images/test/000000.png").size == (33, 33)
    assert main([str(tmp_path / "hard"), *argv, "--variant", "hard"]) == 0
    hard = tmp_path / "hard"
    assert Image.open(hard / "images/test/000000.png").size == (48, 48)
    for question in read_jsonl(hard / "test/questions.jsonl"):
        truth = describe(hard / "images" / question["image"], "hard")
        assert truth["shape"] in HARD_SHAPES
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), *argv, "--variant", "harder"])
    with pytest.raises(ValueError, match="too small"):
        make_shapes_dataset(tmp_path, num_align=1, num_instruct=1, num_test=1, image_size=16)
    with pytest.raises(ValueError, match=">= 48"):
        make_shapes_dataset(
            tmp_path, num_align=1, num_instruct=1, num_test=1, variant="hard", image_size=40
        )
    with pytest.raises(ValueError, match="unknown variant 'harder'; choose one of: basic, hard"):
        make_shapes_dataset(tmp_path, num_align=1, num_instruct=1, num_test=1, variant="harder")
