"""``mllm_packed_sdpa``: packed rows get each sample's attention alone, and give the logits and
gradients of the same samples padded; every other call is transformers' ``sdpa`` unchanged.

Tiny LLMs are built from configs (fp32, no files); the families are those of
``mllm.tiny.family_models``. Runs in ~20 s on one thread.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

import mllm.models.packed_attention as packed_attention
from mllm.data.packing import PackingCollator
from mllm.data.row_width import attention_crossover
from mllm.data.tokenize import IGNORE_INDEX
from mllm.models.packed_attention import (
    PACKED_SDPA,
    dense_mask_skipped,
    segment_layout,
    use_packed_sdpa,
    uses_packed_sdpa,
)
from mllm.tiny.family_models import ARCHITECTURES

VOCAB = 61
#: Samples of a packed micro-batch, and the rows they are packed into (a padding tail each).
LENGTHS = [5, 11, 3, 8, 13, 6, 2]
ROWS = [[0, 1, 2], [3, 4], [5, 6]]
WIDTH = 22


def _llm(family: str, **overrides) -> torch.nn.Module:
    """A random 2-layer LLM of ``family`` (grouped-query attention), loaded with ``sdpa`` and
    switched to the packed kernel."""
    config = ARCHITECTURES[family](
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        pad_token_id=0,
        **overrides,
    )
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float()
    assert use_packed_sdpa(llm)
    return llm


def _samples() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (n,), generator=generator) for n in LENGTHS]


def _packed(samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``input_ids`` and ``position_ids`` [rows, WIDTH] and each sample's ``(row, start)``."""
    ids = torch.zeros(len(ROWS), WIDTH, dtype=torch.long)
    positions = torch.zeros(len(ROWS), WIDTH, dtype=torch.long)
    places = [None] * len(samples)
    for row, members in enumerate(ROWS):
        start = 0
        for index in members:
            length = len(samples[index])
            ids[row, start : start + length] = samples[index]
            positions[row, start : start + length] = torch.arange(length)
            places[index] = (row, start)
            start += length
        positions[row, start:] = torch.arange(WIDTH - start)  # the padding's own run
    return ids, positions, places


def _padded(samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(LENGTHS)
    ids = torch.zeros(len(samples), longest, dtype=torch.long)
    mask = torch.zeros(len(samples), longest, dtype=torch.long)
    for index, sample in enumerate(samples):
        ids[index, : len(sample)] = sample
        mask[index, : len(sample)] = 1
    return ids, mask


def _run(llm, ids, **kwargs) -> tuple[list[torch.Tensor], dict, list[torch.Tensor]]:
    """Per sample: logits [len, vocab]; gradients of the trained parameters, and per sample
    those of ``inputs_embeds`` [len, hidden], for a fixed weighting of the samples' logits.

    A packed forward runs as ``MultimodalModel`` runs it, without the dense mask; the backward
    (and so the recomputation of checkpointed layers) runs outside that block."""
    places = kwargs.pop("places")
    embeds = llm.get_input_embeddings()(ids).detach().requires_grad_(True)
    packed = "packed_segments" in kwargs
    with dense_mask_skipped() if packed else contextlib.nullcontext():
        logits = llm(inputs_embeds=embeds, use_cache=False, **kwargs).logits
    per_sample = _spans(logits, places)
    generator = torch.Generator().manual_seed(2)
    loss = sum((x * torch.randn(x.shape, generator=generator)).sum() for x in per_sample)
    trained = [(name, p) for name, p in llm.named_parameters() if p.requires_grad]
    llm.zero_grad(set_to_none=True)
    loss.backward()
    grads = {name: p.grad for name, p in trained}
    return [x.detach() for x in per_sample], grads, _spans(embeds.grad, places)


def _spans(states: torch.Tensor, places: list) -> list[torch.Tensor]:
    """[rows, width, ...] -> per sample, its tokens' [length, ...]."""
    spans = zip(places, LENGTHS, strict=True)
    return [states[row, start : start + length] for (row, start), length in spans]


def _assert_packed_equals_padded(llm) -> None:
    samples = _samples()
    ids, positions, places = _packed(samples)
    layout = segment_layout(positions)
    packed = _run(llm, ids, position_ids=positions, packed_segments=layout, places=places)
    padded_ids, mask = _padded(samples)
    padded = _run(llm, padded_ids, attention_mask=mask, places=[(i, 0) for i in range(7)])
    for got, want in zip(packed[0], padded[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert packed[1].keys() == padded[1].keys() and packed[1]
    for name, grad in padded[1].items():
        torch.testing.assert_close(packed[1][name], grad, rtol=1e-5, atol=1e-5, msg=name)
    for got, want in zip(packed[2], padded[2], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("llama3", {}),
        ("qwen2.5", {}),
        ("mistral", {"sliding_window": 4}),  # windows shorter than most samples
        ("phi3", {}),
    ],
)
def test_packed_rows_give_the_padded_logits_and_gradients(family, overrides):
    _assert_packed_equals_padded(_llm(family, **overrides).train())


def test_packed_rows_equal_transformers_block_diagonal_sdpa():
    """On every position, padding tails included, the packed kernel computes what the dense
    block-diagonal mask of transformers' ``sdpa`` does."""
    llm = _llm("llama3")
    ids, positions, _ = _packed(_samples())
    with torch.no_grad():
        ours = llm(input_ids=ids, position_ids=positions, packed_segments=segment_layout(positions))
        llm.set_attn_implementation("sdpa")
        dense = llm(input_ids=ids, position_ids=positions, use_cache=False)
    torch.testing.assert_close(ours.logits, dense.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("setting", ["lora", "gradient_checkpointing"])
def test_packed_rows_with_lora_or_checkpointing(setting):
    llm = _llm("llama3")
    if setting == "lora":
        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
        llm = get_peft_model(llm, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        torch.manual_seed(3)
        for name, param in llm.named_parameters():
            if "lora_B" in name:  # peft starts B at zero; non-zero checks the adapters' path
                torch.nn.init.normal_(param, std=0.1)
        assert uses_packed_sdpa(llm)
    else:
        llm.gradient_checkpointing_enable()
    _assert_packed_equals_padded(llm.train())


def test_packed_forward_builds_no_dense_mask(monkeypatch):
    """Inside ``dense_mask_skipped`` transformers' mask function is never reached; outside it
    (a padded batch) it is."""
    calls = []
    sdpa_mask = packed_attention.sdpa_mask

    def counting_mask(*args, **kwargs):
        calls.append(kwargs["attention_mask"])
        return sdpa_mask(*args, **kwargs)

    monkeypatch.setattr(packed_attention, "sdpa_mask", counting_mask)
    llm = _llm("llama3")
    ids, positions, _ = _packed(_samples())
    with torch.no_grad(), dense_mask_skipped():
        llm(input_ids=ids, position_ids=positions, packed_segments=segment_layout(positions))
    assert calls == []
    padded_ids, mask = _padded(_samples())
    with torch.no_grad():
        llm(input_ids=padded_ids, attention_mask=mask)
    assert len(calls) == 1


def test_a_packed_batch_without_its_layout_raises_instead_of_attending_across_samples():
    llm = _llm("llama3")
    ids, positions, _ = _packed(_samples())
    with torch.no_grad(), dense_mask_skipped(), pytest.raises(RuntimeError, match="layout"):
        llm(input_ids=ids, position_ids=positions, use_cache=False)


def test_layout_places_every_token_once():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    layout = segment_layout(positions)
    # lengths 3, 2, 1 | 4, 2: a group takes segments of at least 3/4 of its longest
    assert [(segments, longest) for _, segments, longest in layout.groups] == [
        (2, 4),
        (2, 2),
        (1, 1),
    ]
    tokens, segments, longest = layout.groups[0]
    assert tokens.view(segments, longest).tolist() == [[6, 7, 8, 9], [0, 1, 2, 0]]  # then its first
    slots = layout.slots.tolist()
    assert len(set(slots)) == len(slots) == 12  # every token has its own place
    assert slots[6:10] == [0, 1, 2, 3] and slots[:3] == [4, 5, 6]


def test_generation_is_unchanged():
    """Generation (KV cache, left padding) never sees a layout: same tokens and scores."""
    llm = _llm("llama3").eval()
    prompts = torch.tensor([[0, 0, 5, 9, 3], [7, 2, 8, 4, 6]])
    mask = (prompts != 0).long()

    def generate():
        out = llm.generate(
            input_ids=prompts,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
        return out.sequences, torch.stack(out.scores)

    ours = generate()
    llm.set_attn_implementation("sdpa")
    theirs = generate()
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[1], theirs[1])


def test_only_sdpa_is_switched(caplog):
    with caplog.at_level(logging.INFO, logger="mllm.models.packed_attention"):
        llm = _llm("llama3")
    assert llm.config._attn_implementation == PACKED_SDPA
    assert any("per-sample attention on packed rows" in r.getMessage() for r in caplog.records)
    config = ARCHITECTURES["llama3"](
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    eager = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert not use_packed_sdpa(eager) and eager.config._attn_implementation == "eager"


#: 16 caption-like samples (alignment data): ~85 tokens, 64 of them image tokens.
CAPTIONS = [80, 84, 78, 90, 96, 75, 88, 82, 79, 91, 86, 77, 83, 85, 94, 81]


def test_captions_fill_rows_under_packed_sdpa():
    config = ARCHITECTURES["llama3"](
        vocab_size=1030,
        hidden_size=128,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
    )  # the bench's LLM
    config._attn_implementation = PACKED_SDPA
    assert attention_crossover(config) is None  # per sample: rows fill up
    samples = [
        {"input_ids": torch.ones(n, dtype=torch.long), "labels": torch.full((n,), IGNORE_INDEX)}
        for n in CAPTIONS
    ]
    batch = PackingCollator(pad_token_id=0, max_length=1024)(samples)
    assert batch["input_ids"].shape == (2, 675)  # 1,349 tokens in two rows
    config._attn_implementation = "eager"  # a whole-row kernel: rows only as wide as pays
    crossover = attention_crossover(config)
    assert crossover is not None
    padded = PackingCollator(pad_token_id=0, max_length=1024, crossover=crossover)(samples)
    assert padded["input_ids"].shape == (16, 96) and "attention_mask" in padded
