"""Where a training step's time goes: data, vision forward, LLM forward, backward, optimizer.

The trainer marks its sections on a timer; :class:`NullTimer` (the default) does nothing, so
an untimed run pays one attribute lookup per section. :class:`StepTimer` records wall time per
section and per optimizer step. On a GPU, kernels run asynchronously, so a section's time is
only its own when the device is synchronised at its edges: ``sync=True`` does that, at a cost,
which is why throughput should be taken from a run with ``sync=False`` (one sync per step,
where the loop reads the loss anyway).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StepRecord:
    """One optimizer step: when it ended and what its micro-batches held."""

    end: float  # time.perf_counter() after the optimizer step
    tokens: int  # sample tokens (image placeholders included), padding excluded
    slots: int  # rows x width of the batches: tokens plus padding
    samples: int


class NullTimer:
    """The interface the trainer calls; records nothing."""

    def section(self, name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def end_micro(self, *, tokens: int, slots: int, samples: int) -> None:
        """A micro-batch finished its backward pass."""

    def end_step(self) -> None:
        """An optimizer step finished."""


class StepTimer(NullTimer):
    """Seconds per section and a :class:`StepRecord` per optimizer step.

    Args:
        sync: synchronise the CUDA device at section edges (exact sections, slower steps).
    """

    def __init__(self, *, sync: bool = False) -> None:
        self.sync = sync and torch.cuda.is_available()
        self.steps: list[StepRecord] = []
        self.section_times: list[dict[str, float]] = []  # per step: section -> seconds
        self._current: dict[str, float] = defaultdict(float)
        self._micro = {"tokens": 0, "slots": 0, "samples": 0}
        self.start = time.perf_counter()

    def _now(self, sync: bool) -> float:
        if sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        start = self._now(self.sync)
        try:
            yield
        finally:
            self._current[name] += self._now(self.sync) - start

    def watch(self, module: nn.Module, name: str) -> list[torch.utils.hooks.RemovableHandle]:
        """Time every forward of ``module`` as section ``name`` (nested in another section).

        Returns:
            The hook handles; ``remove()`` them to stop timing.
        """
        starts: list[float] = []

        def before(_module: nn.Module, _args: object) -> None:
            starts.append(self._now(self.sync))

        def after(_module: nn.Module, _args: object, _output: object) -> None:
            self._current[name] += self._now(self.sync) - starts.pop()

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def end_micro(self, *, tokens: int, slots: int, samples: int) -> None:
        self._micro["tokens"] += tokens
        self._micro["slots"] += slots
        self._micro["samples"] += samples

    def end_step(self) -> None:
        end = self._now(torch.cuda.is_available())
        self.steps.append(StepRecord(end=end, **self._micro))
        self.section_times.append(dict(self._current))
        self._current = defaultdict(float)
        self._micro = {"tokens": 0, "slots": 0, "samples": 0}
