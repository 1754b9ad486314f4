"""Modality- and length-grouped sampling: one modality per micro-step, similar lengths, resumable."""

from __future__ import annotations

import random

import pytest
import torch

from mllm.training.grouping import modality_length_order
from mllm.training.sampler import ModalityLengthGrouping, StepBatchSampler


def _mix(n: int, seed: int = 0) -> tuple[list[int], list[bool]]:
    """LLaVA-like lengths: image samples 80-600 tokens, a fifth text-only at 10-400."""
    rng = random.Random(seed)
    has_image = [rng.random() > 0.2 for _ in range(n)]
    lengths = [rng.randint(80, 600) if img else rng.randint(10, 400) for img in has_image]
    return lengths, has_image


def _order(lengths, has_image, mbs=4, world=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return modality_length_order(
        lengths, has_image, micro_batch_size=mbs, world_size=world, generator=generator
    )


def _padding(lengths, order, mbs):
    slots = sum(
        mbs * max(lengths[i] for i in order[s : s + mbs])
        for s in range(0, len(order) - mbs + 1, mbs)
    )
    used = sum(lengths[i] for i in order[: len(order) // mbs * mbs])
    return 1 - used / slots


def test_micro_steps_hold_one_modality_and_less_padding():
    lengths, has_image = _mix(403)
    order = _order(lengths, has_image)
    assert sorted(order) == list(range(403))
    full_steps = [order[s : s + 4] for s in range(0, 400, 4)]
    mixed = [step for step in full_steps if len({has_image[i] for i in step}) > 1]
    assert len(mixed) <= 1  # only where the leftovers of both modalities meet, at the end
    assert mixed == [] or mixed[0] == full_steps[-1]
    random_order = torch.randperm(403, generator=torch.Generator().manual_seed(0)).tolist()
    assert _padding(lengths, order, 4) < 0.5 * _padding(lengths, random_order, 4)


@pytest.mark.parametrize("flag", [True, False])
def test_a_dataset_with_one_modality_is_fine(flag):
    # LLaVA's grouped sampler fails here: zip(*[]) of the missing modality.
    lengths = list(range(10, 60))
    order = _order(lengths, [flag] * 50)
    assert sorted(order) == list(range(50))


def test_order_depends_only_on_the_generator():
    lengths, has_image = _mix(200)
    assert _order(lengths, has_image, seed=1) == _order(lengths, has_image, seed=1)
    assert _order(lengths, has_image, seed=1) != _order(lengths, has_image, seed=2)


def test_ranks_get_equal_work():
    lengths, has_image = _mix(800)
    order = _order(lengths, has_image, mbs=4, world=2)
    for start in range(0, 768, 8):
        rank0, rank1 = order[start : start + 4], order[start + 4 : start + 8]
        load0, load1 = sum(lengths[i] for i in rank0), sum(lengths[i] for i in rank1)
        assert abs(load0 - load1) <= max(lengths[i] for i in rank0 + rank1)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="3 lengths but 2"):
        _order([1, 2, 3], [True, False])
    with pytest.raises(ValueError, match="grouping covers 3 of 4 samples"):
        StepBatchSampler(
            4,
            micro_batch_size=2,
            accumulation=1,
            rank=0,
            world_size=1,
            seed=0,
            total_steps=1,
            grouping=ModalityLengthGrouping([1, 2, 3], [True] * 3),
        )


def test_grouped_sampler_resumes_at_any_step_and_covers_each_rank_once():
    lengths, has_image = _mix(100)
    grouping = ModalityLengthGrouping(lengths, has_image)

    def batches(rank: int, start: int) -> list[list[int]]:
        sampler = StepBatchSampler(
            100,
            micro_batch_size=3,
            accumulation=2,
            rank=rank,
            world_size=2,
            seed=7,
            total_steps=20,  # 8 steps per epoch: crosses two epoch boundaries
            start_step=start,
            grouping=grouping,
        )
        return list(sampler)

    full = batches(0, 0)
    assert batches(0, 13) == full[13 * 2 :]
    # Within an epoch, the two ranks see disjoint samples.
    epoch0 = {i for b in full[:16] for i in b}
    other = {i for b in batches(1, 0)[:16] for i in b}
    assert not epoch0 & other and len(epoch0) == len(other) == 48
