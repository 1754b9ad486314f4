"""The one-line account of a finished stage: how much was trained, how fast, and where it went.

The trainer prints it once (main rank) and stores it as ``summary`` in the stage output's
``manifest.json``.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mllm.training.distributed import all_reduce_max, all_reduce_sum


@dataclass
class RunTotals:
    """What this rank has trained on so far in this invocation."""

    samples: int = 0
    tokens: int = 0  # sample tokens, padding excluded
    slots: int = 0  # rows x width of the batches: tokens plus padding

    def add(self, *, tokens: int, slots: int, samples: int) -> None:
        self.samples += samples
        self.tokens += tokens
        self.slots += slots


@dataclass(frozen=True)
class RunSummary:
    """Totals of one stage run (this invocation; a resumed run counts from ``start_step``).

    ``samples``, ``tokens`` and ``padding_tokens`` are summed over ranks; ``padding_share`` is
    padding / (tokens + padding) over the batches; memory peaks are the largest of any rank.
    """

    stage: str
    steps: int  # optimizer steps run by this invocation
    start_step: int  # 0, or the checkpoint step a --resume continued from
    samples: int
    tokens: int  # sample tokens (image placeholders included), padding excluded
    padding_tokens: int
    wall_s: float
    final_loss: float | None
    peak_rss_mib: float
    peak_cuda_mib: float | None  # torch.cuda.max_memory_allocated; None off GPU
    output: str
    validation: dict[str, float] | None = None  # the last validation's values
    stopped_early: str | None = None  # why early_stop ended the stage

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.wall_s, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.wall_s, 1e-9)

    @property
    def padding_share(self) -> float:
        return self.padding_tokens / max(self.tokens + self.padding_tokens, 1)

    def to_dict(self) -> dict:
        """The manifest's ``summary``: the fields plus the derived rates, rounded."""
        values = asdict(self)
        values.update(
            wall_s=round(self.wall_s, 3),
            samples_per_s=round(self.samples_per_s, 3),
            tokens_per_s=round(self.tokens_per_s, 1),
            padding_share=round(self.padding_share, 4),
            peak_rss_mib=round(self.peak_rss_mib, 1),
        )
        if self.peak_cuda_mib is not None:
            values["peak_cuda_mib"] = round(self.peak_cuda_mib, 1)
        return values

    def line(self) -> str:
        """One line for the console."""
        loss = "n/a" if self.final_loss is None else f"{self.final_loss:.4f}"
        resumed = f" (resumed at step {self.start_step})" if self.start_step else ""
        cuda = "" if self.peak_cuda_mib is None else f", cuda peak {self.peak_cuda_mib:.0f} MiB"
        return (
            f"stage {self.stage} done: {self.steps} steps{resumed}, {self.samples} samples in "
            f"{self.wall_s:.2f} s ({self.samples_per_s:.2f} samples/s, "
            f"{self.tokens_per_s:.0f} tokens/s), padding {self.padding_share:.1%}, "
            f"final loss {loss}{self._validation_text()}, peak RSS {self.peak_rss_mib:.0f} MiB"
            f"{cuda} -> {self.output}"
            + (f"; stopped early: {self.stopped_early}" if self.stopped_early else "")
        )

    def _validation_text(self) -> str:
        values = self.validation or {}
        text = f", val loss {values['val_loss']:.4f}" if "val_loss" in values else ""
        if "val_accuracy" in values:
            text += f", val accuracy {values['val_accuracy']:.1%}"
        return text


def peak_memory_mib(device: torch.device) -> tuple[float, float | None]:
    """This process's peak resident set size and (on CUDA) peak allocated tensor memory, MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    cuda_mib = None
    if device.type == "cuda":
        cuda_mib = torch.cuda.max_memory_allocated(device) / 2**20
    return rss_mib, cuda_mib


def summarise(
    stage: str,
    totals: RunTotals,
    *,
    steps: tuple[int, int],
    wall_s: float,
    final_loss: float | None,
    output: Path,
    device: torch.device,
    validation: dict[str, float] | None = None,
    stopped_early: str | None = None,
) -> RunSummary:
    """Combine every rank's totals into the stage's summary (collective: all ranks call it).

    Args:
        totals: this rank's totals.
        steps: the step this invocation started at and the one it ended at.
    """
    samples, tokens, slots = all_reduce_sum([totals.samples, totals.tokens, totals.slots], device)
    rss, cuda = peak_memory_mib(device)
    rss, cuda_max = all_reduce_max([rss, cuda or 0.0], device)
    return RunSummary(
        stage=stage,
        steps=steps[1] - steps[0],
        start_step=steps[0],
        samples=int(samples),
        tokens=int(tokens),
        padding_tokens=int(slots - tokens),
        wall_s=wall_s,
        final_loss=final_loss,
        peak_rss_mib=rss,
        peak_cuda_mib=None if cuda is None else cuda_max,
        output=str(output),
        validation=validation,
        stopped_early=stopped_early,
    )
