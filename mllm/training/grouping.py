"""Modality- and length-grouped sample order (LLaVA's ``group_by_modality_length``).

Micro-batches drawn from a plain random order mix a 20-token text-only question with a
600-token image dialogue, and padding to the longest wastes most of the batch. Grouping
makes every micro-step (``micro_batch_size * world_size`` consecutive samples of the order)
hold one modality and similar lengths:

1. split the samples by modality (with / without an image);
2. shuffle each modality, cut it into groups of ``GROUP_MICRO_STEPS`` micro-steps, and sort
   each group by length, longest first, so neighbouring micro-steps have similar lengths;
3. cut the sorted groups into micro-steps and deal each micro-step's samples to the ranks,
   longest first to the rank with the fewest tokens, so ranks get equal work;
4. shuffle the micro-steps of both modalities together; the leftover samples of each
   modality (too few to fill a micro-step) go last, mixed.

The order is a permutation of all samples and a pure function of the generator, so the
step-addressed sampler keeps its determinism and its resume position. LLaVA's version fails
when a dataset has one modality only (``zip`` of an empty list); here an empty modality just
contributes no micro-steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Micro-steps sorted together: more gives closer lengths within a micro-step and less
#: randomness in which samples meet.
GROUP_MICRO_STEPS = 16


def modality_length_order(
    lengths: Sequence[int],
    has_image: Sequence[bool],
    *,
    micro_batch_size: int,
    world_size: int,
    generator: torch.Generator,
) -> list[int]:
    """An epoch's sample order grouped by modality and length (see the module docstring).

    Args:
        lengths: tokens per sample, image placeholders included.
        has_image: per sample, whether it has an image.
        micro_batch_size: samples per rank per micro-step.
        world_size: number of ranks.
        generator: the epoch's seeded generator; the only source of randomness.

    Returns:
        A permutation of ``range(len(lengths))``.

    Raises:
        ValueError: ``lengths`` and ``has_image`` differ in length.
    """
    if len(lengths) != len(has_image):
        raise ValueError(f"{len(lengths)} lengths but {len(has_image)} has_image flags")
    step_size = micro_batch_size * world_size
    steps: list[list[int]] = []
    leftovers: list[int] = []
    for modality in (True, False):
        members = [i for i, flag in enumerate(has_image) if bool(flag) == modality]
        shuffled = [members[i] for i in torch.randperm(len(members), generator=generator)]
        group_size = step_size * GROUP_MICRO_STEPS
        ordered: list[int] = []
        for start in range(0, len(shuffled), group_size):
            group = shuffled[start : start + group_size]
            ordered.extend(sorted(group, key=lambda i: -lengths[i]))  # stable: ties keep order
        full = len(ordered) - len(ordered) % step_size
        for start in range(0, full, step_size):
            step = ordered[start : start + step_size]
            steps.append(_deal_to_ranks(step, lengths, micro_batch_size, world_size))
        leftovers.extend(ordered[full:])
    order = [i for k in torch.randperm(len(steps), generator=generator) for i in steps[k]]
    return order + sorted(leftovers, key=lambda i: -lengths[i])


def _deal_to_ranks(
    step: list[int], lengths: Sequence[int], micro_batch_size: int, world_size: int
) -> list[int]:
    """Reorder one micro-step (sorted longest first) so rank r's slice holds its share.

    Each sample goes to the rank with the fewest tokens that still has room.
    """
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for index in step:
        open_ranks = [r for r in range(world_size) if len(ranks[r]) < micro_batch_size]
        rank = min(open_ranks, key=lambda r: (loads[r], r))
        ranks[rank].append(index)
        loads[rank] += lengths[index]
    return [index for rank in ranks for index in rank]
