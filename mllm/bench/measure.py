"""What one benchmarked training run yields, and the peak-memory probe shared by both sides."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import statistics
import threading
import time
from dataclasses import dataclass, field

import torch

from mllm.training.timing import StepRecord


@dataclass
class TrainRun:
    """One timed training run: the steady-state steps (warm-up excluded) and what they held.

    Attributes:
        name: the side and variant (``ours packed``, ``baseline``).
        steps: one record per measured optimizer step, the first one being the last warm-up
            step (its end is where the clock starts).
        sections: mean seconds per measured step of each section (ours only).
        peak_mib: peak memory above the level before the run (RSS on CPU, allocated on CUDA).
        losses: the loss of each step, for checking that both sides train the same thing.
    """

    name: str
    steps: list[StepRecord]
    sections: dict[str, float] = field(default_factory=dict)
    peak_mib: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.steps[-1].end - self.steps[0].end

    @property
    def measured(self) -> list[StepRecord]:
        return self.steps[1:]

    @property
    def samples_per_s(self) -> float:
        return sum(s.samples for s in self.measured) / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.measured) / self.seconds

    @property
    def padding_share(self) -> float:
        slots = sum(s.slots for s in self.measured)
        return 1 - sum(s.tokens for s in self.measured) / slots if slots else 0.0

    @property
    def step_s(self) -> float:
        return self.seconds / len(self.measured)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rss_mib() -> float:
    """This process's resident memory now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _release_freed_memory() -> None:
    """Collect garbage and return the allocator's free pages to the system (glibc only)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS starts higher
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a block above its starting level: CUDA allocations, or sampled RSS.

    The process-wide RSS peak cannot tell two runs of one process apart, so on CPU a thread
    samples the current RSS every ``interval`` seconds (short spikes between samples are
    missed; training steps last far longer than the interval), starting from a level where
    memory freed by earlier runs has been handed back to the system (glibc's ``malloc_trim``).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated() / 2**20
            return self
        _release_freed_memory()
        self._start = _rss_mib()
        self._highest = self._start
        self._thread = threading.Thread(target=self._sample, daemon=True, name="bench-rss")
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._highest = max(self._highest, _rss_mib())

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is None:
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20 - self._start
            return
        self._stop.set()
        self._thread.join()
        self._highest = max(self._highest, _rss_mib())
        self.peak_mib = self._highest - self._start


def clock() -> float:
    """Wall time after the device has finished its queued work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()
