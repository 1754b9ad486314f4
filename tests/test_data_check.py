"""``mllm data check`` and the bad-record policy of training, over a corpus of broken records.

The corpus (``bad_corpus.py``, written to a tmp folder) holds one record per kind of damage, next to good
records and images in unusual modes that must pass. The checker must report each with its
kind, record index and id; the dataset must agree with it (skip drops exactly those records,
fail names them), and the collator must drop samples whose image fails at load time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from bad_corpus import (
    CORPUS,
    LENGTH_KINDS,
    LOAD_TIME_BAD,
    MAX_LENGTH,
    NUM_IMAGE_TOKENS,
    construction_kinds,
    expected_findings,
    make_corpus,
)

from mllm.commands.data_check import check_main
from mllm.data import (
    BadRecord,
    ConversationDataset,
    DataCollator,
    DataError,
    get_template,
)
from mllm.data.preflight import TokenSettings, check_data


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tokens(tokenizer) -> TokenSettings:
    return TokenSettings(tokenizer, NUM_IMAGE_TOKENS, MAX_LENGTH)


@pytest.mark.parametrize("decoded", [False, True], ids=["headers", "decoded"])
def test_every_kind_of_bad_record_is_reported(corpus, tokens, decoded: bool) -> None:
    data, images = corpus
    report = check_data(
        [data],
        name="data",
        image_folder=images,
        template=get_template("vicuna_v1"),
        tokens=tokens,
        decode_images=decoded,
        workers=2 if decoded else 1,
    )
    found = {(f.index, f.id, f.kind, f.severity) for f in report.findings}
    # long-text's second exchange starts past max_length: its reply is cut away (a warning).
    assert found == expected_findings(decoded) | {(26, "long-text", "reply_cut", "warning")}
    assert all(f.file == str(data) for f in report.findings)
    (cut,) = [f for f in report.findings if f.kind == "reply_cut"]
    assert cut.reason.startswith("reply 2 (conversations[3]): truncation removes the whole")
    assert cut.reason.endswith(f"; {MAX_LENGTH} are kept")
    assert report.label_summary()["cut_by_truncation"] == 1 and report.label_errors == 0
    kinds = {kind for _, _, kind, _ in found}
    assert len(kinds) >= 20
    # Image findings name the path; syntax errors the line and column.
    by_id = {f.id: f for f in report.findings}
    assert (
        by_id["symlink"].image == "link.png"
        and "outside the image folder" in by_id["symlink"].reason
    )
    assert "400000000 pixels" in by_id["bomb"].reason
    (syntax,) = [f for f in report.findings if f.kind == "json_syntax"]
    assert syntax.index == 2 and "line 3 column" in syntax.reason
    assert "over by" in by_id["long-image"].reason
    (long_text,) = [f for f in report.findings if f.kind == "truncated"]
    assert "by " in long_text.reason and "cuts the tail" in long_text.reason
    # Summary: counts per kind, bad records, split, modes, histogram.
    errors = sum(1 for *_, severity in expected_findings(decoded) if severity == "error")
    assert report.bad_records == errors
    assert report.counts()["error"]["image_path_unsafe"] == 3
    assert "padded to a 10000x10000 square" in by_id["strip"].reason
    assert report.counts()["warning"]["duplicate_id"] == 1
    assert report.records == len(CORPUS)
    structural = [i for i, kind in construction_kinds().items() if kind not in LENGTH_KINDS]
    assert report.text_only + report.single_image + report.multi_image == len(CORPUS) - len(
        structural
    )
    assert {"CMYK", "RGBA", "P", "L"} <= set(report.image_modes)
    assert sum(count for _, count in report.histogram()) == len(report.lengths)
    assert report.fatal
    text = report.format()
    assert "FAIL: training would stop" in text and "image_too_large 2" in text


def test_skip_policy_is_not_fatal_but_an_unreadable_file_is(corpus, tmp_path: Path) -> None:
    data, images = corpus
    report = check_data([data], name="data", image_folder=images, policy="skip")
    assert not report.fatal and report.bad_records > 0
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"id": 1},\n {"id": 2,,}\n]')
    report = check_data(
        [broken, tmp_path / "absent.json"], name="data", image_folder=images, policy="skip"
    )
    assert [(f.file, f.index, f.kind) for f in report.findings] == [
        (str(broken), None, "json_syntax"),
        (str(tmp_path / "absent.json"), None, "file_unreadable"),
    ]
    assert "line 3 column 11" in report.findings[0].reason
    assert report.fatal


def test_cli_exit_codes_and_json_report(corpus, tmp_path: Path, capsys) -> None:
    data, images = corpus
    report_path = tmp_path / "report.json"
    assert check_main([str(data), "--images", str(images), "--json", str(report_path)]) == 1
    out = capsys.readouterr().out
    assert f"ERROR {data}: record 24 (id 'symlink') [image_path_unsafe] image 'link.png':" in out
    assert "FAIL: training would stop" in out
    saved = json.loads(report_path.read_text())
    assert saved[0]["fatal"] and saved[0]["counts"]["error"]["image_empty"] == 1
    assert check_main([str(data), "--images", str(images), "--on-bad-record", "skip"]) == 0
    assert "OK: training would skip" in capsys.readouterr().out
    good = tmp_path / "good.json"
    good.write_text(json.dumps([json.loads(CORPUS[0][0]), json.loads(CORPUS[1][0])]))
    assert check_main([str(good), "--images", str(images)]) == 0
    assert check_main([str(good), "--tokenizer", "x"]) == 2  # incomplete token settings


# --- training applies the same checks ----------------------------------------------------


@pytest.fixture
def build(corpus, tokenizer, clip_processor):
    data, images = corpus

    def build_dataset(files=data, **overrides) -> ConversationDataset:
        options = {
            "template": get_template("vicuna_v1"),
            "tokenizer": tokenizer,
            "image_processor": clip_processor,
            "image_folder": images,
            "image_mode": "pad",
            "num_image_tokens": NUM_IMAGE_TOKENS,
            "max_length": MAX_LENGTH,
        } | overrides
        return ConversationDataset.from_files(files, **options)

    return build_dataset


def test_skip_drops_exactly_the_bad_records_and_logs_each_kind(build, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="mllm.data.dataset"):
        dataset = build(on_bad_record="skip")
    dropped = {
        int(bad.where.split("record ")[1].split(" ")[0]): bad.kind for bad in dataset.dropped
    }
    assert dropped == construction_kinds()
    assert len(dataset) == len(CORPUS) - len(dropped)
    assert dataset.truncated == 1  # long-text: kept, cut at the tail
    # What a skip run drops later: exactly the records whose image fails when loaded.
    at_load = [dataset[i] for i in range(len(dataset))]
    assert sorted(
        bad.where.split("id '")[1][:-2] for bad in at_load if isinstance(bad, BadRecord)
    ) == sorted(LOAD_TIME_BAD)
    for kind in set(dropped.values()):
        assert f"records: {kind} (first: " in caplog.text


def test_fail_names_the_records_and_counts_them(build) -> None:
    with pytest.raises(DataError) as error:
        build()
    lines = str(error.value).splitlines()
    total = len(construction_kinds())
    assert f"{total} of {len(CORPUS)} records cannot be trained on" in lines[0]
    assert "record 2 (id None), field 'record': line 3 column" in lines[1]
    assert "[json_syntax]" in lines[1]
    assert "record 4 (id 'no-conversations')" in lines[3]
    assert len(lines) == 1 + min(total, 20) + (total > 20)


def _index_of(dataset: ConversationDataset, record_id: str) -> int:
    return next(
        i for i, kept in enumerate(dataset._kept) if dataset.records[kept].get("id") == record_id
    )


def test_collator_drops_samples_whose_image_fails_at_load(build) -> None:
    dataset = build(on_bad_record="skip")
    good = dataset[_index_of(dataset, "ok-image")]
    bad = {
        record_id: dataset[_index_of(dataset, record_id)]
        for record_id in ("missing", "empty", "noise", "bomb", "symlink", "cut-png", "strip")
    }
    assert {record_id: item.kind for record_id, item in bad.items()} == {
        "missing": "image_missing",
        "empty": "image_unreadable",
        "noise": "image_unreadable",
        "bomb": "image_too_large",
        "symlink": "image_path_unsafe",
        "cut-png": "image_unreadable",
        "strip": "image_too_large",
    }
    assert all(isinstance(item, BadRecord) for item in bad.values())
    text = dataset[_index_of(dataset, "ok-text")]
    batch = DataCollator(pad_token_id=0)([good, bad["missing"], text, bad["bomb"]])
    assert batch["input_ids"].shape[0] == 2  # dropped, not replaced
    assert torch.equal(batch["input_ids"][0, : len(good["input_ids"])], good["input_ids"])
    assert batch["pixel_values"].shape[0] == 1
    assert [item.kind for item in batch["skipped"]] == ["image_missing", "image_too_large"]
    assert "missing.png" in batch["skipped"][0].reason
    empty = DataCollator(pad_token_id=0)([bad["noise"]])
    assert empty["input_ids"].shape == (0, 0) and len(empty["skipped"]) == 1
    assert "skipped" not in DataCollator(pad_token_id=0)([good, text])
    # Unusual modes load as RGB.
    for record_id in ("cmyk", "rgba", "palette", "gray16", "gray", "subfolder"):
        assert dataset[_index_of(dataset, record_id)]["pixel_values"].shape == (1, 3, 64, 64)


def test_fail_policy_names_file_record_and_image_at_load(build, tmp_path: Path) -> None:
    data = tmp_path / "few.jsonl"
    data.write_text("".join(CORPUS[index][0] + "\n" for index in (0, 24, 16)))
    dataset = build(files=data)  # the paths' text is fine; the files are checked when loaded
    assert dataset[0]["pixel_values"].shape == (1, 3, 64, 64)
    with pytest.raises(DataError) as error:
        dataset[1]
    message = str(error.value)
    assert message.startswith(f"{data}: record 1 (id 'symlink'), field 'image': ")
    assert "'link.png'" in message and "outside the image folder" in message
    with pytest.raises(
        DataError, match=r"record 2 \(id 'missing'\), field 'image': .*missing\.png"
    ):
        dataset[2]


def test_recipe_mode_uses_each_stage_settings(
    corpus, tmp_path: Path, tiny_tokenizer_dir: Path, capsys
) -> None:
    from mllm.cli import main as mllm_main
    from mllm.tiny import make_tiny_llm, make_tiny_vision_tower

    data, images = corpus
    llm = make_tiny_llm(tmp_path / "llama", tokenizer_dir=tiny_tokenizer_dir)
    clip = make_tiny_vision_tower(tmp_path / "clip", "clip", image_size=32, patch_size=8)
    recipe = tmp_path / "recipe.yaml"

    def write(policy: str) -> None:
        recipe.write_text(
            f"""
name: check
output_dir: {tmp_path / "runs"}
model:
  vision: {{name: clip, path: {clip}}}
  projector: {{name: mlp}}
  llm: {{path: {llm}, family: llama}}
stages:
  instruct:
    data:
      path: {data}
      image_folder: {images}
      template: vicuna_v1
      max_length: {MAX_LENGTH}
      on_bad_record: {policy}
    optim: {{lr: 1.0e-3}}
    global_batch_size: 1
    micro_batch_size: 1
"""
        )

    write("skip")
    assert mllm_main(["data", "check", str(recipe), "--stage", "instruct"]) == 0
    out = capsys.readouterr().out
    # 32 px / 8 px patches = 16 tokens per image (CLS dropped): long-image is cut elsewhere.
    assert "template vicuna_v1, max_length 96, 16 tokens/image" in out
    assert "OK: training would skip" in out
    write("fail")
    assert mllm_main(["data", "check", str(recipe)]) == 1
    assert mllm_main(["data", "check", str(recipe), "--stage", "nope"]) == 2


def test_dataloader_workers_deliver_the_skipped_records(build) -> None:
    """What the training loop sees under ``skip``: every load-time failure, once per epoch."""
    from torch.utils.data import DataLoader

    dataset = build(on_bad_record="skip")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=DataCollator(0))
    rows, skipped = 0, []
    for batch in loader:
        rows += batch["input_ids"].shape[0]
        skipped += batch.get("skipped", [])
    assert rows == len(dataset) - len(LOAD_TIME_BAD)
    assert sorted(bad.where.split("id '")[1][:-2] for bad in skipped) == sorted(LOAD_TIME_BAD)


def test_image_files_checked_up_front_before_the_first_step(build, tmp_path: Path) -> None:
    """``check_image_files`` applies the policy to image files at start-up (headers only)."""
    dataset = build(on_bad_record="skip")
    size = len(dataset)
    removed = dataset.check_image_files(workers=2)
    # Header-only: damage inside the pixel data (cut-png, cut-jpg) is still found at load.
    up_front = set(LOAD_TIME_BAD) - {"cut-png", "cut-jpg"}
    assert removed == len(up_front) and len(dataset) == size - removed
    ids = [bad.where.split("id '")[1][:-2] for bad in dataset.dropped[-removed:]]
    assert sorted(ids) == sorted(up_front)
    assert len(dataset.lengths) == len(dataset.has_image) == len(dataset)
    data = tmp_path / "few.jsonl"
    data.write_text("".join(CORPUS[index][0] + "\n" for index in (0, 16, 24)))
    fail = build(files=data)
    with pytest.raises(DataError) as error:
        fail.check_image_files()
    message = str(error.value)
    assert "2 of 3 records cannot be trained on" in message
    assert (
        "record 1 (id 'missing'), field 'image': 'missing.png': no such file [image_missing]"
        in message
    )
    assert "record 2 (id 'symlink')" in message and "[image_path_unsafe]" in message


@pytest.mark.parametrize(
    ("name", "select", "projector"),
    [("clip", "patch", "mlp"), ("clip", "cls_patch", "linear"), ("siglip", "patch", "mlp")],
)
def test_image_tokens_from_configs_match_the_built_model(
    tmp_path: Path, name: str, select: str, projector: str
) -> None:
    from mllm.config.schema import ModelConfig
    from mllm.data.preflight.model_info import image_tokens_per_image
    from mllm.models.catalog import VISION_TOWERS
    from mllm.tiny import make_tiny_vision_tower

    path = make_tiny_vision_tower(tmp_path / name, name, image_size=32, patch_size=8)
    config = ModelConfig.model_validate(
        {
            "vision": {"name": name, "path": str(path), "select": select},
            "projector": {"name": projector},
            "llm": {"path": str(tmp_path / "unused"), "family": "llama"},
        }
    )
    tower = VISION_TOWERS.get(name).target.from_pretrained(
        config.vision, dtype=torch.float32, attn_implementation="eager"
    )
    assert image_tokens_per_image(config) == tower.num_patches == 16 + (select == "cls_patch")
