"""When to stop a stage whose validation metric no longer improves (``stages.S.early_stop``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mllm.config.schema import EarlyStopConfig

#: Which way each metric improves.
LOWER_IS_BETTER = {"val_loss": True, "val_accuracy": False}


@dataclass
class EarlyStopping:
    """The best value so far and how many validations in a row have not beaten it by
    ``min_delta``; kept in resumable checkpoints so a resumed run stops where one run would.
    """

    config: EarlyStopConfig
    best: float | None = None
    best_step: int | None = None
    stale: int = 0  # validations since the best

    def update(self, step: int, values: dict[str, float]) -> bool:
        """Record a validation's values; returns whether it is a new best."""
        value = values[self.config.metric]
        margin = value - self.best if self.best is not None else None
        if margin is not None and LOWER_IS_BETTER[self.config.metric]:
            margin = -margin
        if margin is None or margin > self.config.min_delta:
            self.best, self.best_step, self.stale = value, step, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.config.patience

    def describe(self) -> str:
        return (
            f"{self.config.metric} has not improved by more than {self.config.min_delta} for "
            f"{self.stale} validations; the best, {self.best:.4f}, was at step {self.best_step}"
        )

    def state_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "config"}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.stale = state["best"], state["best_step"], state["stale"]
