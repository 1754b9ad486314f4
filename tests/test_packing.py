"""Sequence packing: row planning, the packed batch layout, and the same loss and gradients."""

from __future__ import annotations

import pytest
import torch
from training_utils import make_workspace, run_train, tiny_recipe, workspace_dataset, write_recipe

from mllm.config import validate_recipe
from mllm.data import IGNORE_INDEX, BadRecord, DataCollator
from mllm.data.packing import PackingCollator, plan_rows
from mllm.data.recipe_templates import special_tokens_for
from mllm.data.row_width import choose_packing, dense_attention_crossover, pack_width
from mllm.data.stage_data import stage_collator
from mllm.models import build_model
from mllm.models.attention import flash_attention_unavailable_reason
from mllm.models.multimodal import join_packed_rows
from mllm.training.metric_window import sample_tokens
from mllm.training.metrics import read_metrics
from mllm.training.stage import apply_stage

FLASH_PROBLEM = flash_attention_unavailable_reason()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def test_plan_rows_fills_few_balanced_rows():
    lengths = [90, 10, 60, 40, 50, 30, 20]  # 300 tokens
    rows = plan_rows(lengths, capacity=100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in row) for row in rows]
    assert len(rows) == 3 and loads == [100, 100, 100]
    assert all(row == sorted(row) for row in rows)  # samples keep their batch order
    # Greedy balancing can miss with ceil(total / capacity) rows; it then adds one.
    rows = plan_rows([60, 60, 60], capacity=100)
    assert [len(row) for row in rows] == [1, 1, 1]
    assert plan_rows([], capacity=8) == []


def test_plan_rows_refuses_a_sample_longer_than_a_row():
    with pytest.raises(ValueError, match="12 tokens cannot fit a row of 10"):
        plan_rows([3, 12], capacity=10)


def _sample(ids: list[int], labels: list[int], images: int = 0) -> dict:
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "pixel_values": torch.full((images, 3, 2, 2), float(ids[0])) if images else None,
    }


def test_packed_batch_layout():
    samples = [
        _sample([1, 5, 6, 7], [IGNORE_INDEX, 5, 6, 7], images=1),
        _sample([1, 8], [8, 8]),  # a label on the first token is never predicted: dropped
        _sample([2, 9, 9], [IGNORE_INDEX, IGNORE_INDEX, 9], images=2),
    ]
    batch = PackingCollator(pad_token_id=0, max_length=6)(samples)
    # 9 tokens in rows of 6: two rows, balanced as [0] (4 tokens + 1 padding) and [1, 2].
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 0], [1, 8, 2, 9, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 5, 6, 7, IGNORE_INDEX],
        [IGNORE_INDEX, 8, IGNORE_INDEX, IGNORE_INDEX, 9],
    ]
    assert "attention_mask" not in batch
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 2.0, 2.0]  # packed order
    assert sample_tokens(batch) == 9 and "num_tokens" not in batch


def test_packing_drops_skipped_samples():
    bad = BadRecord("f.json: record 3 (id 'x')", "image_missing", "gone")
    batch = PackingCollator(pad_token_id=0, max_length=8)([bad, _sample([1, 4], [4, 4])])
    assert batch["skipped"] == [bad] and batch["input_ids"].tolist() == [[1, 4]]
    empty = PackingCollator(pad_token_id=0, max_length=8)([bad])
    assert empty["input_ids"].shape == (0, 0) and sample_tokens(empty) == 0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_the_padded_batch(ws, tmp_path, attn):
    raw = tiny_recipe(ws, tmp_path)
    raw["model"]["llm"]["attn_implementation"] = attn
    recipe = validate_recipe(raw, "test")
    torch.manual_seed(0)
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    stage = recipe.stages["instruct"]
    apply_stage(built.model, stage.train.model_copy(update={"vision": "full"}))
    dataset = workspace_dataset(ws, built)
    # Text-only and image samples of different lengths, in one micro-batch.
    text_only = [i for i, flag in enumerate(dataset.has_image) if not flag]
    with_image = sorted(
        (i for i, f in enumerate(dataset.has_image) if f), key=dataset.lengths.__getitem__
    )
    picked = [with_image[0], text_only[0], with_image[-1], with_image[len(with_image) // 2]]
    samples = [dataset[i] for i in picked]
    pad = built.tokenizer.pad_token_id
    padded = DataCollator(pad_token_id=pad)(samples)
    packed = PackingCollator(pad_token_id=pad, max_length=256)(samples)
    assert packed["input_ids"].shape[0] < len(samples)  # something was actually packed
    packed.pop("num_tokens")

    model = built.model.train()
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def loss_and_grads(batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        # The tower's last block is unused (features from layer -2): it gets no gradient.
        grads = {name: p.grad.clone() for name, p in trained if p.grad is not None}
        return loss.detach(), grads

    padded_loss, padded_grads = loss_and_grads(padded)
    packed_loss, packed_grads = loss_and_grads(packed)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-6, atol=1e-6)
    for component in ("vision", "projector", "llm"):
        assert any(name.startswith(component) for name in packed_grads)
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_joined_rows_give_the_same_loss(ws, tmp_path):
    """The one-row layout used for FlashAttention-2, checked here with SDPA."""
    recipe = validate_recipe(tiny_recipe(ws, tmp_path), "test")
    torch.manual_seed(0)
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    dataset = workspace_dataset(ws, built, "align")
    samples = [dataset[i] for i in range(9)]
    pad = built.tokenizer.pad_token_id
    packed = PackingCollator(pad_token_id=pad, max_length=128)(samples)
    assert packed["input_ids"].shape[0] > 1 and (packed["input_ids"] == pad).any()
    model = built.model.eval()
    with torch.no_grad():
        rows = model(**{k: v for k, v in packed.items() if k != "num_tokens"})
        embeds = model.embed(packed["input_ids"], packed["pixel_values"])
        joined = join_packed_rows(embeds, packed["position_ids"], packed["labels"])
        one_row = model.llm(
            inputs_embeds=joined[0], position_ids=joined[1], labels=joined[2], use_cache=False
        )
        padded = model(**DataCollator(pad_token_id=pad)(samples))
    torch.testing.assert_close(one_row.loss, padded.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rows.loss, padded.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(one_row.logits.reshape(rows.logits.shape), rows.logits)


@pytest.mark.gpu
@pytest.mark.skipif(FLASH_PROBLEM is not None, reason=f"FlashAttention cannot run: {FLASH_PROBLEM}")
def test_flash_attention_packing_equals_padding(ws, tmp_path):
    raw = tiny_recipe(ws, tmp_path)
    raw["model"]["llm"]["attn_implementation"] = "flash_attention_2"
    raw["model"]["vision"]["attn_implementation"] = "sdpa"
    recipe = validate_recipe(raw, "test")
    built = build_model(
        recipe.model, dtype=torch.bfloat16, special_tokens=special_tokens_for(recipe)
    )
    model = built.model.cuda().eval()
    dataset = workspace_dataset(ws, built)
    samples = [dataset[i] for i in range(8)]
    pad = built.tokenizer.pad_token_id

    def loss(batch: dict) -> torch.Tensor:
        batch = {k: v.cuda() for k, v in batch.items() if v is not None and k != "num_tokens"}
        with torch.no_grad():
            return model(**batch).loss.float()

    packed = PackingCollator(pad_token_id=pad, max_length=256)(samples)
    assert packed["input_ids"].shape[0] > 1  # several rows: joined into one for the kernel
    padded = loss(DataCollator(pad_token_id=pad)(samples))
    torch.testing.assert_close(loss(packed), padded, rtol=2e-2, atol=2e-2)  # bf16


def test_packed_training_matches_padded_losses(ws, tmp_path):
    """Through scripts/train.py: packing changes the batch layout, never the losses."""
    losses = {}
    for packing in (False, True):
        out = tmp_path / f"packing_{packing}"
        raw = tiny_recipe(ws, out, align={"max_steps": 3, "data": {"packing": packing}})
        run_train([str(write_recipe(tmp_path / f"r{packing}.yaml", raw)), "--stage", "align"])
        losses[packing] = [row["loss"] for row in read_metrics(out / "align/metrics.jsonl")]
    assert len(losses[True]) == 3
    for packed, padded in zip(losses[True], losses[False], strict=True):
        assert packed == pytest.approx(padded, rel=1e-5)


#: Caption-like (alignment) and LLaVA-665k-like micro-batches of 16 sample lengths.
CAPTIONS = [80, 84, 78, 90, 96, 75, 88, 82, 79, 91, 86, 77, 83, 85, 94, 81]
MIX = [676, 130, 123, 60, 150, 420, 118, 182, 300, 87, 126, 140, 250, 115, 170, 98]


def _ids(length: int, first: int) -> dict:
    ids = [first] * length
    return _sample(ids, [IGNORE_INDEX] + ids[1:])


def test_dense_kernels_get_rows_only_as_wide_as_pays():
    """With a whole-row attention, 16 captions in one 1,024-token row would cost ~12x their
    padded attention: the row width follows the estimated cost instead of max_length."""
    assert pack_width(CAPTIONS, 1024, crossover=None) == 1024  # per-sample attention
    assert pack_width(CAPTIONS, 1024, crossover=500.0) == max(CAPTIONS)
    cheap = pack_width(CAPTIONS, 1024, crossover=1e9)  # attention costs ~nothing: fewest rows
    rows = plan_rows(CAPTIONS, cheap)
    assert len(rows) * max(sum(CAPTIONS[i] for i in row) for row in rows) < 1.05 * sum(CAPTIONS)
    assert pack_width(MIX, 1024, crossover=800.0) == max(MIX)
    samples = [_ids(length, first=i + 1) for i, length in enumerate(CAPTIONS)]
    # A row per caption: exactly the padded batch, returned as such.
    batch = PackingCollator(pad_token_id=0, max_length=1024, crossover=500.0)(samples)
    padded = DataCollator(pad_token_id=0)(samples)
    assert "position_ids" not in batch and int(batch.pop("num_tokens")) == sum(CAPTIONS)
    assert batch.keys() == padded.keys()
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], padded[key]), key
    # Per-sample attention: every caption in one row of position runs.
    packed = PackingCollator(pad_token_id=0, max_length=1024)(samples)
    assert packed["input_ids"].shape[0] == 2  # 1,348 tokens
    assert "attention_mask" not in packed and "position_ids" in packed
    # The mix still packs under a dense kernel, into rows of its longest sample.
    mixed = [_ids(length, first=i + 1) for i, length in enumerate(MIX)]
    rows = PackingCollator(pad_token_id=0, max_length=1024, crossover=800.0)(mixed)
    assert rows["input_ids"].shape[1] == max(MIX) and rows["input_ids"].shape[0] < len(MIX)
    assert int((rows["position_ids"] == 0).sum()) >= len(MIX)


def test_auto_packs_spread_lengths_and_pads_even_ones():
    choice = choose_packing(CAPTIONS * 4, 16, 1024, crossover=500.0)
    assert not choice.packed and "75-96 tokens" in choice.reason
    choice = choose_packing(MIX * 4, 16, 1024, crossover=800.0)
    assert choice.packed and "padding" in choice.reason
    # Per-sample attention: even captions pack, 16 rows into one.
    assert choose_packing(CAPTIONS * 4, 16, 1024, crossover=None).packed


def test_dense_attention_crossover_follows_the_model(ws):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ws["llama"])
    trained = dense_attention_crossover(config)
    frozen = dense_attention_crossover(config, trains_weights=False)
    assert 0 < frozen < trained  # a frozen LLM's backward skips weight gradients
    wider = AutoConfig.from_pretrained(ws["llama"], hidden_size=4 * config.hidden_size)
    assert dense_attention_crossover(wider) > trained  # linear layers grow faster


def test_stage_collator_resolves_auto_and_logs_why(ws, tmp_path, caplog):
    align = {"data": {"packing": "auto"}, "global_batch_size": 8, "micro_batch_size": 8}
    raw = tiny_recipe(ws, tmp_path, align=align)
    recipe = validate_recipe(raw, "test")
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    stage = recipe.stages["align"]
    key = "stages.align.data.packing"
    with caplog.at_level("INFO", logger="mllm.data.stage_data"):
        even = stage_collator(stage, built, [100] * 32, key)
        spread = stage_collator(stage, built, [20, 240] * 16, key)
    assert isinstance(even, DataCollator) and isinstance(spread, PackingCollator)
    assert spread.crossover is None  # sdpa runs mllm_packed_sdpa: attention per sample
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(key)]
    assert lines[0].startswith(f"{key}: auto -> padded: samples of 100-100 tokens")
    assert lines[1].startswith(f"{key}: auto -> packed: samples of 20-240 tokens")


def test_training_loss_reads_only_the_logits_it_needs(ws, tmp_path):
    """In training, the output head runs at label-predicting positions only; the loss and the
    gradients are those of the full logits."""
    recipe = validate_recipe(tiny_recipe(ws, tmp_path), "test")
    torch.manual_seed(0)
    built = build_model(recipe.model, special_tokens=special_tokens_for(recipe))
    apply_stage(built.model, recipe.stages["instruct"].train)
    dataset = workspace_dataset(ws, built, "instruct")
    batch = DataCollator(pad_token_id=built.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    model = built.model.train()
    kept = model(**batch)
    kept.loss.backward()
    kept_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    embeds = model.embed(batch["input_ids"], batch["pixel_values"])
    full = model.llm(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]
    )
    full.loss.backward()
    assert kept.logits.shape[1] < full.logits.shape[1]  # the prompts' positions are skipped
    torch.testing.assert_close(kept.loss, full.loss, rtol=1e-6, atol=1e-6)
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(kept_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
