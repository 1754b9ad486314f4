"""Turn SIGTERM / SIGINT into "save a resumable checkpoint at the next step boundary, then stop".

Clusters preempt jobs with SIGTERM; a user stops one with Ctrl-C. Either way the steps done
so far should survive. The handler only records the request; the trainer acts on it between
optimizer steps, after every rank has agreed (a signal may reach only some ranks).
"""

from __future__ import annotations

import signal
from types import FrameType

from mllm.training.distributed import Runtime, all_reduce_sum

HANDLED = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving ``checkpoint``."""

    def __init__(self, signum: int, checkpoint: str) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name}; resumable checkpoint: {checkpoint} (continue with --resume)"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequests:
    """Context manager that records SIGTERM/SIGINT instead of dying; restores handlers on exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> StopRequests:
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, runtime: Runtime) -> int:
        """The signal number if any rank was asked to stop, else 0 (collective)."""
        (total,) = all_reduce_sum([float(self.signum)], runtime.device)
        if total and not self.signum:
            self.signum = int(signal.SIGTERM)
        return self.signum if total else 0
