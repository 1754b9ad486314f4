"""Grounding data: boxes as text, RefCOCO-style conversion, MiniGPT-v2's template and labels,
and the demo's referring split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mllm.data import IGNORE_INDEX, DataError, get_template, tokenize_conversation
from mllm.data.boxes import Box, box_from_xywh, format_box, iou, parse_box, parse_boxes
from mllm.data.grounding import convert_grounding
from mllm.data.minigpt_v2 import TASKS, task_instruction, task_of
from mllm.data.validate import CheckedRecord, check_record
from mllm.demo.grounding import make_grounding_dataset
from mllm.demo.scenes import COLOURS

# MiniGPT-v2's eval_data/refcoco_val.json, record 0: a 640x428 image.
REF = {"bbox": [468.3, 0.91, 171.7, 116.12], "width": 640, "height": 428}


# ---- boxes ---------------------------------------------------------------------------------
def test_pixel_box_to_text_truncates_like_minigpt_v2():
    # 468.3/640*100 = 73.17, 0.91/428*100 = 0.21, 640/640*100 = 100, 117.03/428*100 = 27.34
    box = box_from_xywh(REF["bbox"], REF["width"], REF["height"])
    assert format_box(box) == "{<73><0><100><27>}"
    assert parse_box("{<73><0><100><27>}") == box


def test_parse_reads_boxes_in_text_and_tolerates_spaces():
    assert parse_boxes("a {<1><2><30><40>} and { <5> <6><7><80> }.") == [
        Box(1, 2, 30, 40),
        Box(5, 6, 7, 80),
    ]
    assert parse_box("{<30><40><1><2>}") == Box(1, 2, 30, 40)  # corners sorted
    assert parse_box("{<0><0><250><50>}") == Box(0, 0, 100, 50)  # clipped to the grid
    for no_box in ("73 0 100 27", "{<73><0><100>}", "[73, 0, 100, 27]", ""):
        assert parse_box(no_box) is None


def test_iou_hand_worked():
    a, b = Box(0, 0, 10, 10), Box(5, 0, 15, 10)  # overlap 5x10 = 50; union 150
    assert iou(a, b) == pytest.approx(1 / 3)
    assert iou(a, a) == 1.0 and iou(a, Box(20, 20, 30, 30)) == 0.0
    assert iou(Box(1, 1, 1, 5), Box(1, 1, 1, 5)) == 0.0  # no area
    assert Box(10, 20, 30, 40).to_pixels(640, 428) == Box(64, 85.6, 192, 171.2)


def test_box_outside_the_image_is_refused():
    with pytest.raises(ValueError, match="outside the 100 x 100 image"):
        box_from_xywh([90, 0, 20, 10], 100, 100)
    with pytest.raises(ValueError, match="negative size"):
        box_from_xywh([0, 0, -1, 10], 100, 100)


# ---- template --------------------------------------------------------------------------------
def test_task_instructions():
    assert TASKS == ("vqa", "caption", "grounding", "refer", "detection", "identify")
    text = task_instruction("refer", "give me the location of the cup")
    assert text == "<image>\n[refer] give me the location of the cup"
    assert task_of(text) == "refer" and task_of("<image>\nwhat is this?") is None
    with pytest.raises(ValueError, match="choose one of: vqa, caption"):
        task_instruction("ground", "x")


def test_minigpt_v2_template_labels_only_the_answers(tokenizer):
    conversation = [
        {"from": "human", "value": task_instruction("refer", "give me the location of the cup")},
        {"from": "gpt", "value": "{<12><40><33><71>}"},
        {
            "from": "human",
            "value": task_instruction("identify", "what is it in {<1><2><3><4>}", image=False),
        },
        {"from": "gpt", "value": "a cup"},
    ]
    template = get_template("minigpt_v2")
    text = "".join(segment.text for segment in template.render(conversation))
    assert text == (
        "[INST] <image>\n[refer] give me the location of the cup [/INST]{<12><40><33><71>}</s>"
        "[INST] [identify] what is it in {<1><2><3><4>} [/INST]a cup</s>"
    )
    prompt = template.generation_prompt(conversation[:1])
    assert prompt == "[INST] <image>\n[refer] give me the location of the cup [/INST]"
    sample = tokenize_conversation(
        conversation,
        template,
        tokenizer,
        image_token="<image>",
        num_image_tokens=4,
        max_length=4096,
    )
    pairs = zip(sample.input_ids, sample.labels, strict=True)
    targets = [t for t, label in pairs if label != IGNORE_INDEX]
    decoded = tokenizer.decode(targets)
    assert decoded.replace(" ", "") == "{<12><40><33><71>}</s>acup</s>"
    assert "[refer]" not in decoded and "[INST]" not in decoded


# ---- conversion ------------------------------------------------------------------------------
def write_refs(tmp_path, records) -> str:
    path = tmp_path / "refs.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_refcoco_style_refs_become_llava_records(tmp_path):
    record = {
        "image": "train2014/COCO_train2014_000000580957.jpg",
        **{key: REF[key] for key in ("width", "height")},
        "refs": [{"bbox": REF["bbox"], "sentences": ["white dish", {"raw": "bowl", "sent": "b"}]}],
    }
    source = write_refs(tmp_path, [record])
    records = convert_grounding(source, tasks=("refer", "identify"), seed=None)
    assert [r["id"] for r in records] == [
        "COCO_train2014_000000580957-0-0-refer",
        "COCO_train2014_000000580957-0-0-identify",
        "COCO_train2014_000000580957-0-1-refer",
        "COCO_train2014_000000580957-0-1-identify",
    ]
    assert records[0]["conversations"] == [
        {"from": "human", "value": "<image>\n[refer] give me the location of white dish"},
        {"from": "gpt", "value": "{<73><0><100><27>}"},
    ]
    assert records[3]["conversations"] == [
        {
            "from": "human",
            "value": "<image>\n[identify] what object is in this location {<73><0><100><27>}",
        },
        {"from": "gpt", "value": "bowl"},
    ]
    # The records are plain LLaVA records: the shared checks accept them.
    for converted in records:
        checked = check_record(
            converted, image_token="<image>", template=get_template("minigpt_v2")
        )
        assert isinstance(checked, CheckedRecord), checked
    # A seed draws other phrasings, reproducibly.
    drawn = [r["conversations"][0]["value"] for r in convert_grounding(source, seed=3)]
    assert drawn == [r["conversations"][0]["value"] for r in convert_grounding(source, seed=3)]
    assert all(value.startswith("<image>\n[refer] ") for value in drawn)


def _two_shapes(tmp_path):
    refs = [
        {"bbox": [0, 0, 64, 64], "sentences": ["a"]},
        {"bbox": [64, 0, 64, 64], "sentences": ["b"]},
    ]
    return write_refs(
        tmp_path, [{"id": "x", "image": "x.png", "width": 128, "height": 64, "refs": refs}]
    )


def test_per_image_conversations_are_each_opened_by_one_question(tmp_path):
    """Every question opens one conversation: the question asked last could be answered by
    elimination (the box not given yet), and an evaluation always asks it first."""
    first, second = convert_grounding(_two_shapes(tmp_path), seed=None, per_image=True)
    assert (first["id"], second["id"]) == ("x-0", "x-1")
    assert first["image"] == second["image"] == "x.png"
    assert first["conversations"] == [
        {"from": "human", "value": "<image>\n[refer] give me the location of a"},
        {"from": "gpt", "value": "{<0><0><50><100>}"},
        {"from": "human", "value": "[refer] give me the location of b"},
        {"from": "gpt", "value": "{<50><0><100><100>}"},
    ]
    assert [turn["value"] for turn in second["conversations"]] == [
        "<image>\n[refer] give me the location of b",
        "{<50><0><100><100>}",
        "[refer] give me the location of a",
        "{<0><0><50><100>}",
    ]


def test_per_image_max_turns_and_drawn_order(tmp_path):
    refs = [{"bbox": [8 * k, 0, 8, 8], "sentences": [f"shape {k}"]} for k in range(5)]
    source = write_refs(
        tmp_path, [{"id": "y", "image": "y.png", "width": 64, "height": 64, "refs": refs}]
    )
    records = convert_grounding(source, seed=1, per_image=True, max_turns=3)
    assert len(records) == 5 and all(len(r["conversations"]) == 6 for r in records)
    for lead, record in enumerate(records):
        questions = [turn["value"] for turn in record["conversations"][::2]]
        assert questions[0].startswith("<image>\n[refer] ") and f"shape {lead}" in questions[0]
        assert len({q.rsplit(" ", 1)[-1] for q in questions}) == 3  # no question twice
    assert records == convert_grounding(source, seed=1, per_image=True, max_turns=3)
    with pytest.raises(DataError, match="max_turns"):
        convert_grounding(source, per_image=True, max_turns=0)
    with pytest.raises(DataError, match="needs per_image"):
        convert_grounding(source, max_turns=2)


def test_per_image_conversations_per_task(tmp_path):
    """With two tasks an image gets conversations per task: in one, the second ``refer``
    answer would be the box an earlier ``identify`` question already gave."""
    records = convert_grounding(
        _two_shapes(tmp_path), tasks=("refer", "identify"), seed=None, per_image=True
    )
    assert [r["id"] for r in records] == ["x-refer-0", "x-refer-1", "x-identify-0", "x-identify-1"]
    refer, identify = records[0], records[2]
    assert [turn["value"] for turn in refer["conversations"][1::2]] == [
        "{<0><0><50><100>}",
        "{<50><0><100><100>}",
    ]
    questions = [turn["value"] for turn in identify["conversations"][::2]]
    assert questions[0].startswith("<image>\n[identify] ") and "[refer]" not in "".join(questions)
    assert [turn["value"] for turn in identify["conversations"][1::2]] == ["a", "b"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 0}, "record 1.width: must be a positive number"),
        (
            {"refs": [{"bbox": [1, 2, 3], "sentences": ["x"]}]},
            r"record 1.refs\[0\].bbox: must be 4",
        ),
        ({"refs": [{"bbox": [600, 2, 100, 3], "sentences": ["x"]}]}, "lies outside the 640 x 428"),
        ({"refs": [{"bbox": [1, 2, 3, 4], "sentences": []}]}, r"refs\[0\].sentences: must be a"),
        ({"refs": [{"bbox": [1, 2, 3, 4], "sentences": [7]}]}, r"sentences\[0\]: must be a"),
        ({"image": None}, "record 1.image: must be a path"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, change, message):
    good = {"image": "a.jpg", "width": 640, "height": 428, "refs": []}
    source = write_refs(tmp_path, [good, {**good, **change}])
    with pytest.raises(DataError, match=message) as info:
        convert_grounding(source)
    assert str(info.value).startswith(f"{source}: record 1")


def test_missing_field_and_unknown_task(tmp_path):
    source = write_refs(tmp_path, [{"image": "a.jpg", "width": 1, "refs": []}])
    with pytest.raises(DataError, match="record 0: no 'height' field"):
        convert_grounding(source)
    with pytest.raises(DataError, match="choose from refer, identify"):
        convert_grounding(source, tasks=("detect",))


# ---- the demo's referring split -------------------------------------------------------------
def test_demo_grounding_split_boxes_hold_exactly_the_named_shape(tmp_path):
    dataset = make_grounding_dataset(tmp_path, num_train=6, num_test=3, image_size=64, seed=1)
    records = json.loads(dataset.train_json.read_text())
    refs = [json.loads(line) for line in dataset.refs.read_text().splitlines()]
    # MiniGPT-v2's sampling: a single-turn record per expression, in the refs' order
    assert len(refs) == 6
    assert [r["image"] for r in records] == [r["image"] for r in refs for _ in r["refs"]]
    assert all(len(r["conversations"]) == 2 for r in records)
    checked = 0
    for source in refs:
        pixels = np.asarray(Image.open(dataset.image_folder / source["image"]))
        colours = [ref["sentences"][0].split()[1] for ref in source["refs"]]
        for ref, colour in zip(source["refs"], colours, strict=True):
            assert colours.count(colour) == 1  # binding by colour alone is possible
            checked += 1
            mask = (pixels == COLOURS[colour]).all(axis=-1)
            ys, xs = np.nonzero(mask)
            x, y, w, h = ref["bbox"]
            # Every pixel of that colour lies in its box, and touches each of its edges.
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
    assert checked >= 10
    expressions = [ref["sentences"][0] for r in refs for ref in r["refs"]]
    boxes = [ref["bbox"] for r in refs for ref in r["refs"]]
    for record, expression, box in zip(records, expressions, boxes, strict=True):
        question, answer = (turn["value"] for turn in record["conversations"])
        assert question.startswith("<image>\n[refer] ") and expression in question
        assert answer == format_box(box_from_xywh(box, 64, 64))
    test = json.loads((dataset.test_root / "refcoco_val.json").read_text())
    assert {"img_id", "sents", "bbox", "height", "width", "image"} <= set(test[0])
    assert all((dataset.test_root / item["image"]).is_file() for item in test)
    again = make_grounding_dataset(tmp_path / "b", num_train=6, num_test=3, seed=1)
    assert again.train_json.read_text() == dataset.train_json.read_text()


def test_demo_data_writes_the_grounding_split_on_request(tmp_path, capsys):
    from mllm.commands.demo_data import main

    args = [str(tmp_path), "--num-align", "2", "--num-instruct", "2", "--num-test", "2"]
    assert main(args) == 0
    assert not (tmp_path / "grounding").exists()
    assert main([*args, "--num-grounding", "3"]) == 0
    assert (tmp_path / "grounding" / "test" / "refcoco_val.json").is_file()
    refs = (tmp_path / "grounding" / "refs_train.jsonl").read_text().splitlines()
    shapes = sum(len(json.loads(line)["refs"]) for line in refs)
    assert len(refs) == 3
    assert len(json.loads((tmp_path / "grounding" / "train.json").read_text())) == shapes
    assert "grounding.train_json" in capsys.readouterr().out


def test_per_image_names_a_record_that_is_not_an_object(tmp_path):
    source = tmp_path / "refs.json"
    source.write_text("[5]")
    with pytest.raises(DataError, match="record 0 is a int, not an object"):
        convert_grounding(source, per_image=True)
