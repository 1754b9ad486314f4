"""Learning-rate schedules of ``optim.scheduler``: a linear warmup from 0, then cosine to 0,
linear to 0, or constant.

The curves are transformers' ``get_scheduler`` ones (``cosine``, ``linear``,
``constant_with_warmup``), step for step; they live here because importing
``transformers.optimization`` imports peft, and peft imports bitsandbytes, which a run that
quantises nothing should not load.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

Schedule = Literal["cosine", "linear", "constant"]


def lr_factor(step: int, *, schedule: Schedule, warmup: int, total: int) -> float:
    """The multiplier of the base learning rate after ``step`` optimizer steps (0-based).

    Args:
        step: optimizer steps taken so far.
        schedule: ``cosine`` (half a cosine from 1 to 0), ``linear`` (1 to 0) or ``constant``.
        warmup: steps of the linear rise from 0 to 1 before the schedule proper.
        total: all steps of the stage, warmup included.
    """
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    if schedule == "cosine":
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"optim.scheduler {schedule!r}; choose cosine, linear or constant")


def build_lr_scheduler(
    optimizer: Optimizer, schedule: Schedule, warmup: int, total: int
) -> LambdaLR:
    """A ``LambdaLR`` over ``optimizer`` following :func:`lr_factor` (stepped once per
    optimizer step; its state saves and resumes with the optimizer's)."""
    factor = partial(lr_factor, schedule=schedule, warmup=warmup, total=total)
    return LambdaLR(optimizer, factor)
