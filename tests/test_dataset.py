"""ConversationDataset and DataCollator: files, markers, batches, image order, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from mllm.data import (
    IGNORE_INDEX,
    ConversationDataset,
    DataCollator,
    DataError,
    get_template,
    place_image_markers,
    read_records,
)

NUM_IMAGE_TOKENS = 4
RECORDS = [
    {
        "id": "marker-last",
        "image": "red.png",
        "conversations": [
            {"from": "human", "value": "What color is the shape?\n<image>"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Where is the shape?"},
            {"from": "gpt", "value": "top left"},
        ],
    },
    {
        "id": "text-only",
        "conversations": [
            {"from": "human", "value": "What is 2 plus 3?"},
            {"from": "gpt", "value": "5"},
        ],
    },
    {
        "id": "two-images",
        "image": ["blue.png", "green.png"],
        "conversations": [
            {"from": "human", "value": "Is <image> the same colour as <image>?"},
            {"from": "gpt", "value": "no"},
        ],
    },
    {
        "id": "no-marker",
        "image": "tall.png",
        "conversations": [
            {"from": "human", "value": "Describe the image briefly."},
            {"from": "gpt", "value": "A small house."},
        ],
    },
]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 20), (255, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (30, 30), (0, 0, 255)).save(folder / "blue.png")
    Image.new("RGBA", (24, 24), (0, 255, 0, 255)).save(folder / "green.png")
    Image.new("L", (10, 30), 200).save(folder / "tall.png")
    return folder


@pytest.fixture
def build(
    tokenizer: PreTrainedTokenizerBase, clip_processor: BaseImageProcessor, image_folder: Path
):
    def build_dataset(records=RECORDS, *, files=None, **overrides) -> ConversationDataset:
        options = {
            "template": get_template("vicuna_v1"),
            "tokenizer": tokenizer,
            "image_processor": clip_processor,
            "image_folder": image_folder,
            "image_mode": "pad",
            "image_token": "<image>",
            "num_image_tokens": NUM_IMAGE_TOKENS,
            "max_length": 512,
        } | overrides
        if files is not None:
            return ConversationDataset.from_files(files, **options)
        return ConversationDataset(records, **options)

    return build_dataset


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_json_and_jsonl_give_the_same_samples(build, tmp_path: Path) -> None:
    from_json = build(files=write_json(tmp_path / "d.json", RECORDS))
    from_jsonl = build(files=[write_jsonl(tmp_path / "d.jsonl", RECORDS)])
    assert len(from_json) == len(from_jsonl) == 4
    for index in range(4):
        a, b = from_json[index], from_jsonl[index]
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])


def test_samples_have_the_documented_shapes(build, tokenizer) -> None:
    dataset = build()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    expected_images = [1, 0, 2, 1]
    for index, count in enumerate(expected_images):
        sample = dataset[index]
        ids, labels = sample["input_ids"], sample["labels"]
        assert ids.dtype == labels.dtype == torch.long and ids.ndim == 1
        assert ids.shape == labels.shape
        assert int((ids == image_id).sum()) == count * NUM_IMAGE_TOKENS
        assert dataset.lengths[index] == len(ids)
        if count:
            assert sample["pixel_values"].shape == (count, 3, 64, 64)
            assert sample["pixel_values"].dtype == torch.float32
        else:
            assert sample["pixel_values"] is None
    assert dataset.has_image == [True, False, True, True]


def test_multi_turn_labels_every_reply(build, tokenizer) -> None:
    labels = build()[0]["labels"].tolist()
    runs, run = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    assert runs == ["Red.</s>", "top left</s>"]


def test_markers_are_placed_as_llava_does() -> None:
    moved = place_image_markers(RECORDS[0]["conversations"], 1, "<image>")
    assert moved[0]["value"] == "<image>\nWhat color is the shape?"  # LLaVA moves it first
    added = place_image_markers(RECORDS[3]["conversations"], 1, "<image>")
    assert added[0]["value"] == "<image>\nDescribe the image briefly."
    kept = place_image_markers(RECORDS[2]["conversations"], 2, "<image>")
    assert kept[0]["value"] == "Is <image> the same colour as <image>?"  # interleaved stays
    assert RECORDS[0]["conversations"][0]["value"].endswith("<image>")  # input not modified


def test_text_and_image_samples_collate_with_images_in_order(build, tokenizer) -> None:
    dataset = build()
    samples = [dataset[i] for i in range(4)]
    batch = DataCollator(pad_token_id=0)(samples)
    longest = max(len(s["input_ids"]) for s in samples)
    assert batch["input_ids"].shape == batch["labels"].shape == (4, longest)
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(s["input_ids"]) for s in samples]
    # Images in sample order = the order of their placeholders in the flattened batch.
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    expected = torch.cat(
        [samples[0]["pixel_values"], samples[2]["pixel_values"], samples[3]["pixel_values"]]
    )
    assert torch.equal(batch["pixel_values"], expected)
    red, blue, green = batch["pixel_values"][:3, :, 32, 32]  # centre pixels, [3] each
    assert red.argmax() == 0 and green.argmax() == 1 and blue.argmax() == 2
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    owners = (batch["input_ids"] == image_id).nonzero()[:, 0]  # row of each placeholder
    assert owners.tolist() == [0] * 4 + [2] * 8 + [3] * 4
    for row, sample in enumerate(samples):
        length = len(sample["input_ids"])
        assert torch.equal(batch["input_ids"][row, :length], sample["input_ids"])
        assert (batch["input_ids"][row, length:] == 0).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()


def test_left_padding_and_text_only_batches(build) -> None:
    dataset = build()
    samples = [dataset[1], dataset[0]]
    batch = DataCollator(pad_token_id=0, padding_side="left")(samples)
    short = len(samples[0]["input_ids"])
    assert torch.equal(batch["input_ids"][0, -short:], samples[0]["input_ids"])
    assert batch["attention_mask"][0, : batch["input_ids"].shape[1] - short].sum() == 0
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    text_only = DataCollator(pad_token_id=0)([dataset[1], dataset[1]])
    assert text_only["pixel_values"] is None


def test_dataloader_end_to_end(build) -> None:
    loader = DataLoader(build(), batch_size=2, collate_fn=DataCollator(pad_token_id=0))
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2]
    assert [b["pixel_values"].shape[0] for b in batches] == [1, 3]


def test_over_long_records_are_dropped_and_reported(build, caplog) -> None:
    full = build()
    # Long enough for the text-only record; every 64-token image block would be cut.
    max_length = full.lengths[1]
    with caplog.at_level(logging.WARNING, logger="mllm.data.dataset"):
        dataset = build(max_length=max_length, num_image_tokens=64, on_bad_record="skip")
    assert len(dataset) == 1 and dataset.has_image == [False]
    assert torch.equal(dataset[0]["input_ids"], full[1]["input_ids"])  # not replaced
    assert [where for where, _, _ in dataset.dropped] == [
        "<records>: record 0 (id 'marker-last')",
        "<records>: record 2 (id 'two-images')",
        "<records>: record 3 (id 'no-marker')",
    ]
    assert [kind for _, kind, _ in dataset.dropped] == ["cuts_image"] * 3
    assert "skipped 3 of 4 records: cuts_image" in caplog.text
    assert "truncating would cut image 1 of 1" in caplog.text
    # The default policy stops instead, listing every such record.
    with pytest.raises(DataError) as error:
        build(max_length=max_length, num_image_tokens=64)
    assert "3 of 4 records cannot be trained on" in str(error.value)
    two_images = build(num_image_tokens=64).lengths[2]
    assert f"record 2 (id 'two-images'), {two_images} tokens > max_length" in str(error.value)


# --- errors -----------------------------------------------------------------------------


def test_a_dataset_with_nothing_to_train_on_is_an_error(build, tmp_path: Path) -> None:
    path = write_json(tmp_path / "long.json", RECORDS[:1])
    with pytest.raises(
        DataError, match=r"long\.json: no trainable records \(1 read, 1 skipped: 1 cuts_image\)"
    ):
        build(files=path, max_length=8, on_bad_record="skip")
    with pytest.raises(DataError, match="0 read"):
        build(files=write_json(tmp_path / "empty.json", []))


def test_malformed_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"id": 1},\n  {"id": 2,,}\n]')
    with pytest.raises(DataError, match=r"bad\.json: invalid JSON at line 3"):
        read_records(path)
    path.write_text('{"id": 1}')
    with pytest.raises(DataError, match="must hold a list of records"):
        read_records(path)


def test_malformed_jsonl_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: invalid JSON"):
        read_records(path)
    path.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2 is a list"):
        read_records(path)


def test_unknown_file_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"d\.csv: unknown data file type"):
        read_records(tmp_path / "d.csv")


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"image": 3, "conversations": []}, "image", "a path or a list of paths"),
        ({"conversations": "hi"}, "conversations", "expected a list of turns"),
        (
            {"image": "red.png", "conversations": [{"from": "gpt", "value": "x"}]},
            "conversations[0].from",
            "turn 0 is from 'gpt'",
        ),
        (
            {
                "image": ["red.png"],
                "conversations": [
                    {"from": "human", "value": "<image> <image>"},
                    {"from": "gpt", "value": "x"},
                ],
            },
            "conversations",
            "2 '<image>' markers but the record has 1 image",
        ),
        (
            {
                "image": ["red.png", "blue.png"],
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}],
            },
            "conversations",
            "0 '<image>' markers but the record has 2 image",
        ),
        (
            {
                "conversations": [
                    {"from": "human", "value": "<image>"},
                    {"from": "gpt", "value": "x"},
                ]
            },
            "conversations",
            "1 '<image>' markers but the record has 0 image",
        ),
    ],
)
def test_record_errors_name_file_record_id_and_field(
    build, tmp_path: Path, record, field: str, message: str
) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", RECORDS[:2])
    bad = write_json(tmp_path / "bad.json", [RECORDS[1], {"id": "broken", **record}])
    with pytest.raises(DataError) as error:
        build(files=[good, bad])
    first, line = str(error.value).splitlines()
    assert first.startswith(f"{bad}: 1 of 4 records cannot be trained on")
    assert line.startswith(f"  {bad}: record 1 (id 'broken'), field '{field}': ")
    assert message in line


def test_missing_image_is_reported_when_loaded(build) -> None:
    records = [{**RECORDS[3], "id": "lost", "image": "nowhere.png"}]
    dataset = build(records)  # construction reads no images
    with pytest.raises(DataError, match=r"record 0 \(id 'lost'\), field 'image': .*nowhere\.png"):
        dataset[0]


def test_collator_rejects_a_missing_pad_id() -> None:
    with pytest.raises(ValueError, match="pad token"):
        DataCollator(pad_token_id=None)
