"""Callbacks: how code outside the loop watches or steers a run.

The loop calls ``on_train_start`` once, ``on_epoch_end`` after each epoch's validation, and
``on_train_end`` once (also after early stopping). pipelines/ subclasses ``Callback`` to log to
MLflow; ``training/`` ships a rich progress bar and early stopping. A callback stops the run by
setting ``stop_training = True``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Callback", "EarlyStopping", "RichProgress", "is_improvement"]


class Callback:
    """Base class; every hook is a no-op so subclasses override only what they need."""

    stop_training: bool = False

    def on_train_start(self, info: dict[str, Any]) -> None:
        """Called once before the first epoch; ``info`` describes the run (sizes, epochs...)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Called after each epoch with ``epoch`` (1-based), ``train_loss``, ``val_loss``,
        ``val_<metric>`` and ``seconds``."""

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """Called once at the end with ``best_epoch``, ``stopped_early``, ``train_seconds`` and
        the best epoch's validation values."""


def is_improvement(
    logs: dict[str, float],
    best: dict[str, float] | None,
    monitor: str,
    higher_is_better: bool,
    *,
    tie_breaker: str | None = "val_loss",
    min_delta: float = 0.0,
) -> bool:
    """Whether ``logs`` beats ``best`` on ``monitor``; ties go to the lower ``tie_breaker``.

    The tie-break matters for accuracy on small validation sets, which often stays flat for
    epochs while the loss still falls; without it early stopping would fire too soon.
    """
    value = logs.get(monitor, math.nan)
    if math.isnan(value):
        return False
    if best is None:
        return True
    ref = best.get(monitor, math.nan)
    if math.isnan(ref):
        return True
    delta = value - ref if higher_is_better else ref - value
    if delta > min_delta:
        return True
    if delta == 0 and tie_breaker and tie_breaker != monitor:
        return logs.get(tie_breaker, math.inf) < best.get(tie_breaker, math.inf)
    return False


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(
        self,
        monitor: str,
        higher_is_better: bool,
        patience: int = 5,
        tie_breaker: str | None = "val_loss",
    ) -> None:
        self.monitor = monitor
        self.higher_is_better = higher_is_better
        self.patience = patience
        self.tie_breaker = tie_breaker
        self.best: dict[str, float] | None = None
        self.best_epoch = 0
        self.wait = 0
        self.stop_training = False

    def on_train_start(self, info: dict[str, Any]) -> None:
        """Reset, so one instance can watch several runs."""
        self.best, self.best_epoch, self.wait, self.stop_training = None, 0, 0, False

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Count epochs without improvement; ask the loop to stop after ``patience`` of them."""
        if is_improvement(
            logs, self.best, self.monitor, self.higher_is_better, tie_breaker=self.tie_breaker
        ):
            self.best, self.best_epoch, self.wait = dict(logs), epoch, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stop_training = True


class RichProgress(Callback):
    """A rich progress bar: one tick per epoch, showing train loss and the monitored metric."""

    def __init__(
        self, monitor: str = "val_loss", description: str = "training", console: Any = None
    ) -> None:
        self.monitor = monitor
        self.description = description
        self.console = console  # a rich Console; None means rich's default (stdout)
        self._progress: Any = None
        self._task: Any = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        """Open the bar sized to the maximum number of epochs."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            transient=False,
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            self.description, total=int(info.get("epochs", 0)) or None, status=""
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Advance one epoch and show the latest numbers."""
        if self._progress is None:
            return
        status = f"loss {logs.get('train_loss', math.nan):.4f}  {self.monitor} " + (
            f"{logs.get(self.monitor, math.nan):.4f}"
        )
        self._progress.update(self._task, completed=epoch, status=status)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """Close the bar (also when early stopping ended the run before the last epoch)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
