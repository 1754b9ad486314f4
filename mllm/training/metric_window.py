"""What the training loop counts between two logged metric rows, and how a row is made of it.

The loop adds each micro-batch's loss, tokens and skipped samples; at a logging step every
rank sums its counts (one collective) and the row's loss is the mean over the micro-batches
that ran, its throughput the tokens per second of wall time. That arithmetic is kept apart from
the optimisation loop so the loop reads as steps, and so the row's meaning (which tokens
count, what a packed batch brings) is stated in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from mllm.training.distributed import all_reduce_sum


@dataclass(slots=True)
class MetricWindow:
    """Accumulators between two metric rows, on this rank."""

    loss: float = 0.0  # summed over the micro-batches that ran
    micro: int = 0  # micro-batches that ran (one whose samples were all dropped does not)
    tokens: int = 0  # samples' tokens, padding excluded
    skipped: int = 0  # samples dropped at load time
    start: float = field(default_factory=time.perf_counter)

    def row(self, device: torch.device, lr: float) -> dict[str, float]:
        """The logged values of this window over all ranks (collective): ``loss``, ``lr``,
        ``tokens_per_s`` and, if any were, ``skipped_samples``."""
        loss_sum, micro, tokens, skipped = all_reduce_sum(
            [self.loss, self.micro, self.tokens, self.skipped], device
        )
        elapsed = time.perf_counter() - self.start
        values = {
            "loss": loss_sum / max(micro, 1),
            "lr": lr,
            "tokens_per_s": tokens / max(elapsed, 1e-9),
        }
        if skipped:
            values["skipped_samples"] = skipped
        return values


def sample_tokens(batch: dict) -> int:
    """Tokens of the batch's samples, padding excluded; a packed batch brings its count
    (``num_tokens``, popped here so the model never sees it)."""
    count = batch.pop("num_tokens", None)
    if count is not None:
        return int(count)
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()
