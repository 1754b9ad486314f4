"""Where training metrics go: JSONL in the stage folder always; TensorBoard and W&B when asked."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from mllm.config.schema import LoggingConfig

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Append one JSON object per logged step to ``metrics.jsonl`` (main rank only)."""

    def __init__(self, folder: Path, config: LoggingConfig, run_name: str, enabled: bool) -> None:
        self.enabled = enabled
        self.path = folder / "metrics.jsonl"
        self._tensorboard = None
        self._wandb = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning(
                    "logging.tensorboard is on but tensorboard is not installed; skipping it"
                )
            else:
                self._tensorboard = SummaryWriter(str(folder / "tensorboard"))
        if config.wandb:
            try:
                import wandb
            except ImportError:
                logger.warning("logging.wandb is on but wandb is not installed; skipping it")
            else:
                self._wandb = wandb.init(
                    project=config.wandb_project or "mllm", name=run_name, resume="allow"
                )

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        if self._tensorboard is not None:
            for key, value in values.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def drop_after(self, step: int) -> None:
        """Forget rows logged after ``step`` (a resumed run logs those steps again)."""
        if not self.enabled or not self.path.is_file():
            return
        rows = [row for row in read_metrics(self.path) if row["step"] <= step]
        staging = self.path.with_suffix(".jsonl.partial")
        staging.write_text("".join(json.dumps(row) + "\n" for row in rows))
        staging.replace(self.path)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def global_grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients (after backward; DeepSpeed has averaged them over ranks),
    computed as ``torch.nn.utils.clip_grad_norm_`` does, for optimizers that report none."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
