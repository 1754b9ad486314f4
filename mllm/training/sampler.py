"""Deterministic, resumable assignment of samples to ranks and micro-batches.

The order is a pure function of (seed, epoch), so the data position of a run is just its
optimizer step: resuming at step ``s`` replays exactly the batches an uninterrupted run sees.
That holds for the modality- and length-grouped order too (``mllm.training.grouping``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mllm.training.grouping import modality_length_order


@dataclass(frozen=True)
class ModalityLengthGrouping:
    """What grouped sampling needs from the dataset: per sample, its length and modality."""

    lengths: Sequence[int]
    has_image: Sequence[bool]


class StepBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches of dataset indices, from ``start_step`` to ``total_steps``.

    Each optimizer step consumes ``micro_batch_size * world_size * accumulation`` samples of a
    seeded permutation (grouped by modality and length when ``grouping`` is given); a last
    partial step of an epoch is dropped so every step is full.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        micro_batch_size: int,
        accumulation: int,
        rank: int,
        world_size: int,
        seed: int,
        total_steps: int,
        start_step: int = 0,
        grouping: ModalityLengthGrouping | None = None,
    ) -> None:
        if grouping is not None and len(grouping.lengths) != num_samples:
            raise ValueError(f"grouping covers {len(grouping.lengths)} of {num_samples} samples")
        self.grouping = grouping
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size
        self.accumulation = accumulation
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.total_steps = total_steps
        self.start_step = start_step
        self.samples_per_step = micro_batch_size * world_size * accumulation
        self.steps_per_epoch = num_samples // self.samples_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch "
                f"({self.samples_per_step}); lower global_batch_size or add data"
            )

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.grouping is not None:
            return modality_length_order(
                self.grouping.lengths,
                self.grouping.has_image,
                micro_batch_size=self.micro_batch_size,
                world_size=self.world_size,
                generator=generator,
            )
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, []
        for step in range(self.start_step, self.total_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.order(epoch)
            base = (step % self.steps_per_epoch) * self.samples_per_step
            for micro in range(self.accumulation):
                start = base + (micro * self.world_size + self.rank) * self.micro_batch_size
                yield order[start : start + self.micro_batch_size]


def total_optimizer_steps(
    num_samples: int, samples_per_step: int, epochs: float, max_steps: int | None
) -> int:
    if max_steps is not None:
        return max_steps
    return max(1, int(epochs * (num_samples // samples_per_step)))


def grouping_for(dataset: Dataset, group_by: str, where: str) -> ModalityLengthGrouping | None:
    """What ``data.group_by`` needs from ``dataset`` (``None`` for ``"none"``).

    Raises:
        TypeError: the dataset has no per-sample ``lengths`` and ``has_image``; ``where`` is
            the recipe key, for the message.
    """
    if group_by == "none":
        return None
    lengths = getattr(dataset, "lengths", None)
    has_image = getattr(dataset, "has_image", None)
    if lengths is None or has_image is None:
        raise TypeError(
            f"{where}: {type(dataset).__name__} has no per-sample lengths and has_image to group by"
        )
    return ModalityLengthGrouping(lengths, has_image)


def step_loader(
    dataset: Dataset,
    sampler: StepBatchSampler,
    collate_fn: Callable,
    *,
    num_workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader:
    """A DataLoader over ``sampler``'s micro-batches that draws nothing from the global RNG.

    ``seed`` seeds the loader's own generator: starting the loader must not draw from the
    global RNG, or a resumed run's dropout (e.g. LoRA's) would be one draw off the original's.
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
