"""LLaVA-NeXT's anyres: tiles as transformers' LlavaNext makes them, token counts, logits parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from mllm.config import validate_recipe
from mllm.data.anyres import anyres_layout, best_resolution, layout_tensors, prepare_anyres
from mllm.interop.export import llava_state_dict
from mllm.models import build_model
from mllm.models.anyres import image_token_count, unpadded_shape
from mllm.tiny import make_tiny_models

TILE = 32
PINPOINTS = [(32, 64), (64, 32), (64, 64), (96, 32), (32, 96)]
#: (height, width): wide, tall, square, tiny, odd sizes that exercise rounding and centring.
SIZES = [(40, 100), (100, 40), (50, 50), (7, 9), (33, 65), (97, 31), (61, 83), (20, 200), (10, 200)]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("anyres_models"), image_size=32, patch_size=8)


def model_config(dirs, merge="spatial_unpad"):
    raw = {
        "name": "t",
        "output_dir": "unused",
        "model": {
            "vision": {"name": "clip", "path": str(dirs["clip"])},
            "projector": {"name": "mlp", "depth": 2},
            "llm": {"path": str(dirs["llama"]), "family": "llama"},
            "mm_patch_merge_type": merge,
        },
        "stages": {
            "s": {
                "data": {
                    "path": "unused.json",
                    "template": "vicuna_v1",
                    "image_aspect_ratio": "anyres",
                    "image_grid_pinpoints": [list(p) for p in PINPOINTS],
                },
                "optim": {"lr": 1e-3},
                "global_batch_size": 2,
                "micro_batch_size": 1,
            }
        },
    }
    return validate_recipe(raw, "test").model


@pytest.fixture(scope="module")
def built(tiny_dirs):
    torch.manual_seed(0)
    return build_model(model_config(tiny_dirs), special_tokens=["</s>"])


def random_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def hf_processor(built, do_pad: bool = False) -> LlavaNextImageProcessorPil:
    ours = built.image_processor
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        image_mean=ours.image_mean,
        image_std=ours.image_std,
        image_grid_pinpoints=[list(p) for p in PINPOINTS],
        do_pad=do_pad,
    )


def test_best_resolution_matches_transformers():
    for height in range(1, 200, 7):
        for width in range(1, 200, 11):
            expected = select_best_resolution((height, width), [list(p) for p in PINPOINTS])
            assert best_resolution((height, width), PINPOINTS) == tuple(expected)


@pytest.mark.parametrize("size", SIZES)
def test_tiles_match_llava_next_image_processor(built, size):
    image = random_image(size)
    ours, layout = prepare_anyres(image, built.image_processor, PINPOINTS)
    theirs = hf_processor(built)(images=image, return_tensors="pt")
    assert layout.size == size
    assert theirs["image_sizes"].tolist() == [list(size)]
    assert ours.shape == theirs["pixel_values"][0].shape  # [1 + rows * cols, 3, 32, 32]
    torch.testing.assert_close(ours, theirs["pixel_values"][0], rtol=0, atol=1e-6)


def test_unpadded_shape_matches_transformers_unpad_image():
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    for height in range(1, 120, 3):
        for width in range(1, 120, 5):
            for grid in ((8, 16), (16, 8), (16, 16), (24, 8)):
                cut = unpad_image(torch.zeros(1, *grid), (height, width))
                assert unpadded_shape((height, width), *grid) == tuple(cut.shape[1:])


def hf_llava_next(built) -> LlavaNextForConditionalGeneration:
    """A LlavaNext with the mllm model's weights, configured as mllm computes."""
    model = built.model
    config = LlavaNextConfig(
        vision_config=model.vision.encoder.config.to_dict(),
        text_config=model.llm.config.to_dict(),
        image_token_index=model.image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=[list(p) for p in PINPOINTS],
        multimodal_projector_bias=True,
        tie_word_embeddings=model.llm.config.tie_word_embeddings,
    )
    hf = LlavaNextForConditionalGeneration(config).eval()
    state = llava_state_dict(model)
    state["model.image_newline"] = model.projector.patch_merge.image_newline
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in name for name in missing), missing
    return hf


def test_token_counts_match_llava_next_features(built):
    hf = hf_llava_next(built)
    processor = hf_processor(built)
    for size in SIZES:
        inputs = processor(images=random_image(size), return_tensors="pt")
        with torch.no_grad():
            features = hf.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        layout = anyres_layout(size, PINPOINTS, TILE)
        count = built.model.image_token_count(layout.size, layout.grid)
        assert count == features.pooler_output[0].shape[0], size
        assert count == image_token_count("spatial_unpad", 16, layout.size, layout.grid)


def test_logits_match_llava_next(built):
    """Three images of different shapes between text, in fp32: the same logits as
    transformers' LlavaNext (bit-identical on CPU; asserted to 1e-4)."""
    model = built.model.eval()
    hf = hf_llava_next(built)
    processor = hf_processor(built, do_pad=True)  # tiles padded to the longest image's
    images = [random_image((40, 100), 1), random_image((90, 45), 2), random_image((7, 9), 3)]
    prepared = [prepare_anyres(i, built.image_processor, PINPOINTS) for i in images]
    tiles, layouts = zip(*prepared, strict=True)
    counts = [model.image_token_count(lay.size, lay.grid) for lay in layouts]
    image_id = model.image_token_id
    assert counts == [60, 56, 44]
    ids = [1, 5, 6] + [image_id] * counts[0] + [7, 8] + [image_id] * counts[1] + [9]
    ids += [image_id] * counts[2] + [10, 11]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        ours = model(
            input_ids=input_ids, pixel_values=torch.cat(tiles), **layout_tensors(layouts)
        ).logits
        inputs = processor(images=images, return_tensors="pt")
        theirs = hf(input_ids=input_ids, **inputs).logits
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-4, diff


def test_flat_merge_counts_every_tile(tiny_dirs):
    torch.manual_seed(0)
    flat = build_model(model_config(tiny_dirs, merge="flat"), special_tokens=["</s>"]).model
    assert flat.projector.patch_merge is None and flat.num_image_tokens == 16
    layout = anyres_layout((40, 100), PINPOINTS, TILE)  # 1 x 3 tiles
    assert flat.image_token_count(layout.size, layout.grid) == 16 * 4
    features = torch.randn(4, 16, 8)
    assert flat.merge_tiles(features, *layout_tensors([layout]).values()).shape == (64, 8)


def test_spatial_unpad_layout_base_first_newline_per_row(built):
    """The merge puts the base tile first, the kept grid row by row, a newline after each."""
    merge = built.model.projector.patch_merge
    hidden = merge.image_newline.shape[0]
    layout = anyres_layout((40, 100), PINPOINTS, TILE)  # grid 1 x 3 -> map 4 x 12, cut to 4 x 10
    assert layout.grid == (1, 3) and unpadded_shape(layout.size, 4, 12) == (4, 10)
    features = torch.randn(4, 16, hidden)
    merged = merge(features, *layout_tensors([layout]).values())
    assert merged.shape == (16 + 4 * 11, hidden)
    torch.testing.assert_close(merged[:16], features[0])
    stitched = features[1:].reshape(1, 3, 4, 4, hidden).permute(0, 2, 1, 3, 4).reshape(4, 12, -1)
    rows = merged[16:].reshape(4, 11, hidden)
    torch.testing.assert_close(rows[:, :10], stitched[:, 1:11])  # one column cut each side
    torch.testing.assert_close(rows[:, 10], merge.image_newline.expand(4, hidden))


def test_single_tile_images_get_one_newline(built):
    model = built.model.eval()
    assert model.num_image_tokens == 17  # 16 patches + the newline
    ids = torch.tensor([[1] + [model.image_token_id] * 17 + [5]])
    embeds = model.embed(ids, torch.randn(1, 3, 32, 32))
    newline = model.projector.patch_merge.image_newline
    torch.testing.assert_close(embeds[0, 17], newline.to(embeds.dtype))


def test_tile_count_mismatch_raises(built):
    from mllm.models import ImageFeatureCountError

    layout = anyres_layout((40, 100), PINPOINTS, TILE)
    with pytest.raises(ImageFeatureCountError, match="3 image tiles but the 1 image grids need 4"):
        built.model.embed(
            torch.tensor([[1, 5]]), torch.randn(3, 3, 32, 32), **layout_tensors([layout])
        )


def write_records(folder, sizes) -> list[dict]:
    """An image of each size under ``folder`` and a record asking about it, plus a text-only
    record."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index, size in enumerate(sizes):
        random_image(size, index).save(folder / f"{index}.png")
        question = {"from": "human", "value": "<image>\nWhat is it?"}
        records.append(
            {"id": index, "image": f"{index}.png", "conversations": [question, GPT_REPLY]}
        )
    text = {"from": "human", "value": "What is 2 plus 3?"}
    records.append({"id": "text", "conversations": [text, {"from": "gpt", "value": "5"}]})
    return records


GPT_REPLY = {"from": "gpt", "value": "a red square"}


def anyres_dataset(built, records, folder, **options):
    from mllm.data import ConversationDataset, get_template
    from mllm.data.anyres import anyres_spec

    return ConversationDataset(
        records,
        template=get_template("vicuna_v1"),
        tokenizer=built.tokenizer,
        image_processor=built.image_processor,
        image_folder=folder,
        image_mode="anyres",
        num_image_tokens=built.model.num_image_tokens,
        max_length=options.pop("max_length", 512),
        anyres=anyres_spec(PINPOINTS, built.image_processor, built.model),
        **options,
    )


def test_dataset_counts_tokens_from_headers_exactly(built, tmp_path):
    sizes = [(40, 100), (100, 40), (50, 50), (61, 83)]
    dataset = anyres_dataset(built, write_records(tmp_path, sizes), tmp_path)
    model = built.model
    for index, size in enumerate(sizes):
        sample = dataset[index]
        layout = anyres_layout(size, PINPOINTS, TILE)
        count = model.image_token_count(layout.size, layout.grid)
        assert int((sample["input_ids"] == model.image_token_id).sum()) == count
        assert len(sample["input_ids"]) == dataset.lengths[index]  # the construction's count
        assert sample["pixel_values"].shape == (layout.num_tiles, 3, TILE, TILE)
        assert sample["image_sizes"].tolist() == [list(size)]
        assert sample["image_grids"].tolist() == [list(layout.grid)]
    assert dataset[len(sizes)]["pixel_values"] is None  # the text-only record
    assert dataset.has_image == [True] * len(sizes) + [False]


def test_unreadable_images_are_bad_records_at_construction(built, tmp_path):
    from mllm.data import DataError

    records = write_records(tmp_path, [(40, 100), (50, 50)])
    (tmp_path / "1.png").write_bytes(b"not a png")
    records[0]["image"] = "missing.png"
    dataset = anyres_dataset(built, records, tmp_path, on_bad_record="skip")
    assert len(dataset) == 1
    assert sorted(bad.kind for bad in dataset.dropped) == ["image_missing", "image_unreadable"]
    with pytest.raises(DataError, match="missing.png"):
        anyres_dataset(built, records, tmp_path)


def test_max_length_drops_what_would_cut_an_anyres_image(built, tmp_path):
    records = write_records(tmp_path, [(64, 64), (20, 200)])
    layouts = [anyres_layout(s, PINPOINTS, TILE) for s in ((64, 64), (20, 200))]
    counts = [built.model.image_token_count(lay.size, lay.grid) for lay in layouts]
    assert counts == [16 + 8 * 9, 16 + 2 * 13]  # the strip keeps 2 of its 4 token rows
    strip = anyres_dataset(built, records, tmp_path).lengths[1]
    dataset = anyres_dataset(built, records, tmp_path, max_length=strip, on_bad_record="skip")
    assert [bad.kind for bad in dataset.dropped] == ["cuts_image"]
    assert dataset.lengths == [strip, dataset.lengths[1]]  # the strip and the text record


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_batches_feed_the_model(built, tmp_path, packed):
    from mllm.data import DataCollator
    from mllm.data.packing import PackingCollator

    sizes = [(40, 100), (100, 40), (7, 9)]
    dataset = anyres_dataset(built, write_records(tmp_path, sizes), tmp_path)
    pad = built.tokenizer.pad_token_id
    collate = PackingCollator(pad, max_length=2048) if packed else DataCollator(pad)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert ("position_ids" in batch) == packed
    batch.pop("num_tokens", None)
    tiles = sum(anyres_layout(s, PINPOINTS, TILE).num_tiles for s in sizes)
    assert batch["pixel_values"].shape[0] == tiles
    assert batch["image_sizes"].shape == batch["image_grids"].shape == (3, 2)
    model = built.model.train()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.projector.patch_merge.image_newline.grad.abs().sum() > 0
    model.zero_grad()
    model.eval()


def anyres_recipe(dirs, data_file, images, output_dir) -> dict:
    """Two stages on anyres data: align padded, instruct packed (tiny, fp32, 2 steps each)."""

    def stage(template: str, train: dict, packing: bool) -> dict:
        return {
            "data": {
                "path": str(data_file),
                "image_folder": str(images),
                "template": template,
                "max_length": 256,
                "image_aspect_ratio": "anyres",
                "image_grid_pinpoints": [list(p) for p in PINPOINTS],
                "packing": packing,
                "group_by": "modality_length",
            },
            "train": train,
            "optim": {"lr": 1e-2, "warmup_ratio": 0.0},
            "max_steps": 2,
            "global_batch_size": 4,
            "micro_batch_size": 2,
            "precision": "fp32",
        }

    return {
        "name": "anyres",
        "output_dir": str(output_dir),
        "seed": 0,
        "model": {
            "vision": {"name": "clip", "path": str(dirs["clip"])},
            "projector": {"name": "mlp", "depth": 2},
            "llm": {"path": str(dirs["llama"]), "family": "llama"},
            "mm_patch_merge_type": "spatial_unpad",
        },
        "stages": {
            "align": stage("vicuna_v1", {"projector": "full"}, packing=False),
            "instruct": {
                **stage("vicuna_v1", {"projector": "full", "llm": "full"}, packing=True),
                "init_from": "stage:align",
            },
        },
    }


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"image_grid_pinpoints": None}, "image_grid_pinpoints"),
        ({"image_aspect_ratio": "pad"}, "image_grid_pinpoints"),
        ({"feature_cache": "cache/"}, "feature_cache"),
    ],
)
def test_recipe_checks_anyres_settings(tiny_dirs, tmp_path, change, key):
    from mllm.config import RecipeError

    raw = anyres_recipe(tiny_dirs, "d.json", tmp_path, tmp_path)
    raw["stages"]["align"]["data"].update(change)
    with pytest.raises(RecipeError, match=f"stages.align.data.{key}"):
        validate_recipe(raw, "test", check_files=False)


def test_data_check_counts_anyres_tokens_as_training(built, tiny_dirs, tmp_path):
    import json

    import yaml

    from mllm.data.preflight.check import ImageCheckOptions, check_recipe

    sizes = [(40, 100), (100, 40), (61, 83)]
    records = write_records(tmp_path / "images", sizes)
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(records))
    recipe_path = tmp_path / "recipe.yaml"
    raw = anyres_recipe(tiny_dirs, data_file, tmp_path / "images", tmp_path / "out")
    recipe_path.write_text(yaml.safe_dump(raw))
    (report, _) = check_recipe(str(recipe_path), [], None, ImageCheckOptions())
    dataset = anyres_dataset(built, records, tmp_path / "images")
    assert sorted(report.lengths) == sorted(dataset.lengths)
    assert not [f for f in report.findings if f.severity == "error"]


@pytest.fixture(scope="module")
def trained_anyres(tiny_dirs, tmp_path_factory) -> Path:
    """Two stages trained on anyres images (padded, then packed): the instruct stage's folder.
    A training subprocess: ~15 s on 2 idle cores."""
    import json

    from training_utils import run_train, write_recipe

    work = tmp_path_factory.mktemp("anyres_run")
    sizes = [(40, 100), (100, 40), (50, 50), (61, 83), (20, 200), (90, 30), (33, 65)]
    records = write_records(work / "images", sizes)
    data_file = work / "data.json"
    data_file.write_text(json.dumps(records))
    raw = anyres_recipe(tiny_dirs, data_file, work / "images", work / "out")
    run_train([str(write_recipe(work / "recipe.yaml", raw))])
    return work / "out" / "instruct" / "final"


@pytest.mark.slow
def test_an_anyres_recipe_trains_padded_and_packed_then_generates(trained_anyres):
    """The trained model answers about a new wide image through generation's own
    preparation."""
    import mllm
    from mllm.inference.generate import GenerationRequest, SamplingSettings, complete
    from mllm.inference.prompts import prepare_batch

    loaded = mllm.load(trained_anyres)
    assert loaded.image_aspect_ratio == "anyres"
    request = GenerationRequest(
        [{"from": "human", "value": "<image>\nWhat is it?"}], [random_image((40, 100), 9)]
    )
    settings = SamplingSettings(max_new_tokens=3)
    prepared = prepare_batch(loaded, [request], settings)
    assert prepared.pixel_values.shape == (4, 3, TILE, TILE)  # base + 1 x 3 grid
    count = int((prepared.input_ids == loaded.built.model.image_token_id).sum())
    assert count == loaded.built.model.image_token_count((40, 100), (1, 3)) == 60
    (answer,) = complete(loaded, [request, request], settings)[:1]
    assert answer.prompt_tokens == prepared.prompt_lengths[0]
    assert answer.completion_tokens >= 1


@pytest.mark.slow
def test_lmms_eval_scores_anyres_images_as_transformers_llava_next(trained_anyres):
    """lmms-eval's loglikelihood on an anyres model: two images of different shapes in one
    right-padded batch score what transformers' LlavaNext gives each alone, and greedy
    decoding's own answer is reported as the greedy continuation."""
    pytest.importorskip("lmms_eval.api.model", reason="lmms-eval is not installed")
    from lmms_eval.api.instance import Instance

    from mllm.inference.generate import GenerationRequest, SamplingSettings, complete
    from mllm.integrations.lmms_eval import MllmModel

    lmm = MllmModel(str(trained_anyres), batch_size=2)
    images = [random_image((40, 100), 9), random_image((90, 45), 2)]
    question = "What is it?"
    (greedy,) = complete(
        lmm.loaded,
        [GenerationRequest([{"from": "human", "value": f"<image>\n{question}"}], images[:1])],
        SamplingSettings(max_new_tokens=4),
    )
    lmm.task_dict = {"shapes": {"test": [{"image": image} for image in images]}}

    def request(target: str, doc_id: int) -> Instance:
        args = (question, target, lambda doc: [doc["image"]], doc_id, "shapes", "test")
        metadata = {"task": "shapes", "doc_id": doc_id, "repeats": 1}
        return Instance("loglikelihood", args, idx=0, metadata=metadata)

    requests = [request(" " + greedy.text, 0), request(" A red circle", 1)]
    scores = lmm.loglikelihood(requests)
    assert scores[0][1] is True  # the greedy answer is greedy under scoring too
    assert scores[1][1] is False

    hf = hf_llava_next(lmm.loaded.built)
    processor = hf_processor(lmm.loaded.built)
    for req, (log_prob, _) in zip(requests, scores, strict=True):
        ids, prompt_length, row_images = lmm._scored_ids(req.args)
        with torch.no_grad():
            logits = hf(
                input_ids=torch.tensor([ids]), **processor(images=row_images, return_tensors="pt")
            ).logits[0]
        targets = torch.tensor(ids[prompt_length:])
        expected = logits[prompt_length - 1 : len(ids) - 1].log_softmax(-1)
        expected = expected.gather(-1, targets[:, None]).sum().item()
        assert log_prob == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("name", "llm", "template"),
    [
        ("llava_next_vicuna_7b", "lmsys/vicuna-7b-v1.5", "vicuna_v1"),
        ("llava_next_mistral_7b", "mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
        ("llava_next_llama3_8b", "meta-llama/Meta-Llama-3-8B-Instruct", "llava_llama_3"),
    ],
)
def test_llava_next_recipes_have_published_settings(name, llm, template):
    from pathlib import Path

    from mllm.config import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / f"{name}.yaml")
    align, instruct = recipe.stages["align"], recipe.stages["instruct"]
    assert recipe.model.vision.path == "openai/clip-vit-large-patch14-336"
    assert recipe.model.llm.path == llm and recipe.model.mm_patch_merge_type == "spatial_unpad"
    assert (align.optim.lr, align.global_batch_size, align.train.modes()) == (
        1e-3,
        256,
        {"vision": "frozen", "projector": "full", "llm": "frozen"},
    )
    assert instruct.data.image_aspect_ratio == "anyres" and instruct.data.template == template
    assert instruct.data.image_grid_pinpoints == [
        (336, 672),
        (672, 336),
        (672, 672),
        (1008, 336),
        (336, 1008),
    ]
    assert (instruct.optim.lr, instruct.optim.vision_lr, instruct.global_batch_size) == (
        2e-5,
        2e-6,
        128,
    )
    assert instruct.train.modes() == {"vision": "full", "projector": "full", "llm": "full"}
    assert instruct.init_from == "stage:align" and instruct.data.max_length == 4096
    # The largest image fits: a square one is 576 + 48 x 49 tokens.
    assert image_token_count("spatial_unpad", 576, (672, 672), (2, 2)) == 2928


def test_anyres_stages_skip_the_feature_cache_and_the_llava_export(tiny_dirs, tmp_path):
    from types import SimpleNamespace

    from mllm.interop.export import UnsupportedExportError, check_exportable
    from mllm.training.setup import feature_cache_wanted

    recipe = validate_recipe(anyres_recipe(tiny_dirs, "d.json", tmp_path, tmp_path), "t")
    dataset = SimpleNamespace(image_paths=lambda: ["a.png"])
    wanted, why = feature_cache_wanted(recipe.stages["instruct"], dataset)
    assert not wanted and "vision tower trains" not in why
    assert "anyres" in feature_cache_wanted(recipe.stages["align"], dataset)[1]
    with pytest.raises(UnsupportedExportError, match="mm_patch_merge_type 'spatial_unpad'"):
        check_exportable(recipe)


def test_token_counts_match_llava_next_processor(built):
    """transformers' processor expands ``<image>`` to as many tokens as mllm counts, so an
    exported llava-next-hf folder will tokenize prompts as mllm does."""
    from transformers import LlavaNextProcessor

    processor = LlavaNextProcessor(
        image_processor=hf_processor(built),
        tokenizer=built.tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by "default"
    )
    for size in SIZES:
        inputs = processor(text="<image>\nWhat is it?", images=random_image(size))
        layout = anyres_layout(size, PINPOINTS, TILE)
        expected = built.model.image_token_count(layout.size, layout.grid)
        assert inputs["input_ids"][0].count(built.model.image_token_id) == expected, size
