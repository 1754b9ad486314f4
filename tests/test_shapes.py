"""The shapes dataset is well formed, deterministic, and its answers are true of the pixels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mllm.demo.shapes import (
    COLOURS,
    QUADRANTS,
    QUESTIONS,
    SHAPES,
    SHORT_ANSWER,
    ShapesDataset,
    main,
    make_shapes_dataset,
)

SIZES = {"num_align": 48, "num_instruct": 60, "num_test": 30}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> ShapesDataset:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), **SIZES)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def describe(path: Path) -> dict[str, str]:
    """Read colour, shape and quadrant back from the pixels alone."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)  # [height, width, 3]
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]  # [height, width]
    values, counts = np.unique(packed, return_counts=True)
    background = pixels[packed == values[counts.argmax()]][0]
    assert len(set(background.tolist())) == 1, "background must be gray"
    mask = (pixels != background).any(axis=-1)  # [height, width]
    mean = pixels[mask].mean(axis=0)
    colour = min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - mean).sum())

    ys, xs = np.nonzero(mask)
    half = pixels.shape[0] / 2
    vertical = "top" if ys.mean() < half else "bottom"
    horizontal = "left" if xs.mean() < half else "right"

    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    width = box.shape[1]
    fill = box.mean()
    top_row, bottom_row = box[0].sum() / width, box[-1].sum() / width
    if fill > 0.95:
        shape = "square"
    elif bottom_row > 0.9 and top_row < 0.5:
        shape = "triangle"
    elif 0.68 < fill < 0.9:
        shape = "circle"
    else:
        assert top_row < 0.5 and bottom_row < 0.5 and box[len(box) // 2].all()
        shape = "cross"
    return {"color": colour, "shape": shape, "position": f"{vertical} {horizontal}"}


def test_training_files_follow_llava_format(data: ShapesDataset) -> None:
    align = json.loads(data.align_json.read_text())
    assert len(align) == SIZES["num_align"]
    for record in align:
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        assert gpt["value"].endswith(".") and "<image>" not in gpt["value"]
        assert (data.image_folder / record["image"]).is_file()

    instruct = json.loads(data.instruct_json.read_text())
    assert len(instruct) == SIZES["num_instruct"]
    text_only = [r for r in instruct if "image" not in r]
    assert len(text_only) == round(0.1 * SIZES["num_instruct"])
    assert len({r["id"] for r in align + instruct}) == len(align) + len(instruct)
    allowed = set(COLOURS) | set(SHAPES) | set(QUADRANTS)
    turn_counts = set()
    for record in instruct:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        humans = [t["value"] for t in turns[::2]]
        assert all(h.endswith(f"\n{SHORT_ANSWER}") for h in humans)
        text = json.dumps(turns)
        if "image" in record:
            turn_counts.add(len(turns) // 2)
            assert humans[0].startswith("<image>\n") and text.count("<image>") == 1
            assert {t["value"] for t in turns[1::2]} <= allowed
        else:
            assert "<image>" not in text and turns[1]["value"].isdigit()
    assert turn_counts == {1, 2, 3}


def test_test_split_follows_llava_eval_format(data: ShapesDataset) -> None:
    questions, answers = read_jsonl(data.questions), read_jsonl(data.answers)
    assert len(questions) == len(answers) == 3 * SIZES["num_test"]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in answers]
    assert len({q["question_id"] for q in questions}) == len(questions)
    assert {q["category"] for q in questions} == set(QUESTIONS)
    for question in questions:
        assert question["text"].endswith(f"\n{SHORT_ANSWER}")
        assert "<image>" not in question["text"]
        assert (data.image_folder / question["image"]).is_file()


def test_answers_are_true_of_the_pixels(data: ShapesDataset) -> None:
    checked = 0
    for record in json.loads(data.instruct_json.read_text()):
        if "image" not in record:
            continue
        truth = describe(data.image_folder / record["image"])
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            category = next(
                c for c, qs in QUESTIONS.items() if human["value"].split("\n")[-2] in qs
            )
            assert gpt["value"] == truth[category], (record["id"], category)
            checked += 1
    for record in json.loads(data.align_json.read_text()):
        truth = describe(data.image_folder / record["image"])
        caption = record["conversations"][1]["value"]
        assert caption.endswith(f"{truth['color']} {truth['shape']} in the {truth['position']}.")
    answers = {a["question_id"]: a["answer"] for a in read_jsonl(data.answers)}
    for question in read_jsonl(data.questions):
        truth = describe(data.image_folder / question["image"])
        assert answers[question["question_id"]] == truth[question["category"]]
        checked += 1
    assert checked > 100


def test_test_images_are_not_training_images(data: ShapesDataset) -> None:
    def digests(split: str) -> set[str]:
        files = sorted((data.image_folder / split).glob("*.png"))
        return {hashlib.sha256(np.asarray(Image.open(f)).tobytes()).hexdigest() for f in files}

    test = digests("test")
    assert len(test) == SIZES["num_test"]
    assert not test & (digests("align") | digests("instruct"))


def test_same_seed_same_bytes_other_seed_differs(data: ShapesDataset, tmp_path: Path) -> None:
    again = make_shapes_dataset(tmp_path / "again", **SIZES)
    other = make_shapes_dataset(tmp_path / "other", **SIZES, seed=1)
    files = sorted(p.relative_to(data.root) for p in data.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    for name in files:
        assert (data.root / name).read_bytes() == (again.root / name).read_bytes(), name
    assert data.align_json.read_bytes() != other.align_json.read_bytes()
    assert data.answers.read_bytes() != other.answers.read_bytes()


def test_cli_and_image_size(tmp_path: Path) -> None:
    argv = [str(tmp_path), "--num-align", "2", "--num-instruct", "3", "--num-test", "1"]
    assert main([*argv, "--image-size", "32"]) == 0
    assert Image.open(tmp_path / "images" / "test" / "000000.png").size == (32, 32)
    with pytest.raises(ValueError, match="too small"):
        make_shapes_dataset(tmp_path, num_align=1, num_instruct=1, num_test=1, image_size=16)
