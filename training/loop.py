"""The training loop: mini-batches, optimiser, validation, best-checkpoint restore, callbacks.

It knows nothing of model families or tasks. The caller hands it a module, a loss function, the
training tensors and a ``validate`` function that returns ``val_loss`` and ``val_<metric>``
values; everything task-specific (heads, scaling, metrics) stays with the caller. Overhead per
batch is one index, one forward/backward and one optimiser step; the loss is summed on the
tensor side and read once per epoch, so the loop costs almost nothing over a hand-written one
(``bench/bench_training.py`` measures it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from training.callbacks import Callback, is_improvement
from training.errors import SpecError
from training.spec import OPTIMIZERS

__all__ = ["FitResult", "LoopConfig", "fit", "make_optimizer"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ValidateFn = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class LoopConfig:
    """How to train: the optimisation hyperparameters and what "best" means."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    seed: int = 42
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global grad norm (RNNs)
    schedule: str = "constant"  # one of training.spec.SCHEDULES
    shuffle: bool = True  # False keeps batch order (stateful text training reads chunks in order)
    monitor: str = "val_loss"
    higher_is_better: bool = False
    tie_breaker: str | None = "val_loss"
    plateau_patience: int = 2  # epochs without improvement before "plateau" halves the rate


@dataclass
class FitResult:
    """What the loop did: per-epoch logs, the restored best epoch and its logs, timings."""

    history: list[dict[str, float]]
    best_epoch: int
    best_logs: dict[str, float]
    stopped_early: bool
    train_seconds: float
    samples_seen: int
    extra: dict[str, Any] = field(default_factory=dict)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the weights; much cheaper than ``copy.deepcopy`` on a state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD (momentum 0.9), Adam, AdamW (decoupled weight decay) or RMSprop by name."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise SpecError(f"unknown optimizer {name!r}; expected one of: {', '.join(OPTIMIZERS)}")


class _Schedule:
    """The learning rate per step: constant, cosine to zero over all epochs, or halve on plateau.

    Cosine runs over the configured epochs, so early stopping cuts it short rather than
    stretching it; plateau halves the rate after ``plateau_patience`` (at least 2) epochs
    without a better monitored value, so at the default early-stopping patience of 5 it acts
    before early stopping gives up.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: LoopConfig, steps: int) -> None:
        self.optimizer, self.config = optimizer, config
        self.base = config.lr
        self.total = max(1, steps * config.epochs)
        self.step_no = 0
        self.bad_epochs = 0
        self.wait = max(2, config.plateau_patience)

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """After each optimiser step."""
        self.step_no += 1
        if self.config.schedule == "cosine":
            progress = min(1.0, self.step_no / self.total)
            self._set(0.5 * self.base * (1.0 + math.cos(math.pi * progress)))

    def epoch_end(self, improved: bool) -> None:
        """After each validation."""
        if self.config.schedule != "plateau":
            return
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        if self.bad_epochs >= self.wait:
            self.bad_epochs = 0
            self._set(self.optimizer.param_groups[0]["lr"] * 0.5)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    validate: ValidateFn,
    config: LoopConfig,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` in place and leave it holding the best epoch's weights, in eval mode.

    Shuffling uses a generator seeded from ``config.seed``; with the global torch seed set by
    the caller, the same inputs give identical weights and metrics on CPU.
    """
    n = int(x.shape[0])
    if n == 0:
        raise SpecError("no training samples; the data split left the training set empty")
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    schedule = _Schedule(optimizer, config, steps=-(-n // config.batch_size))
    reset_state = getattr(model, "reset_state", None)  # stateful modules start each epoch fresh
    params = [p for p in model.parameters() if p.requires_grad]
    info = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "n_train": n,
        "parameters": sum(p.numel() for p in params),
        "model": type(model).__name__,
        "optimizer": config.optimizer,
        "lr": config.lr,
    }
    for cb in callbacks:
        cb.on_train_start(dict(info))

    history: list[dict[str, float]] = []
    best_logs: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] = _snapshot(model)
    best_epoch = 0
    stopped_early = False
    samples = 0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        if callable(reset_state):
            reset_state()
        order = torch.randperm(n, generator=generator) if config.shuffle else torch.arange(n)
        losses: list[torch.Tensor] = []  # summed once per epoch: no per-batch sync or math
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            xb, yb = x[idx], y[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
        samples += n
        sizes = torch.full((len(losses),), float(config.batch_size))
        sizes[-1] = n - config.batch_size * (len(losses) - 1)
        train_loss = float(torch.dot(torch.stack(losses).float(), sizes)) / n
        model.eval()
        if callable(reset_state):
            reset_state()
        with torch.no_grad():
            val = validate(model)
        logs: dict[str, float] = {
            "epoch": float(epoch),
            "train_loss": train_loss,
            "lr": float(optimizer.param_groups[0]["lr"]),
        }
        logs.update({k: float(v) for k, v in val.items()})
        logs["seconds"] = time.perf_counter() - epoch_start
        history.append(logs)
        improved = is_improvement(
            logs, best_logs, config.monitor, config.higher_is_better, tie_breaker=config.tie_breaker
        )
        if improved:
            best_logs, best_epoch = dict(logs), epoch
            best_state = _snapshot(model)
        schedule.epoch_end(improved)
        for cb in callbacks:
            cb.on_epoch_end(epoch, dict(logs))
        if any(cb.stop_training for cb in callbacks):
            stopped_early = epoch < config.epochs
            break
    train_seconds = time.perf_counter() - start
    if best_logs is not None:  # never improved (e.g. NaN metrics): keep the last weights
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    model.eval()
    final = best_logs if best_logs is not None else (history[-1] if history else {})
    end_logs: dict[str, Any] = {
        **{f"best_{k}": v for k, v in final.items() if k != "epoch"},
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "train_seconds": train_seconds,
        "epochs_run": len(history),
    }
    for cb in callbacks:
        cb.on_train_end(dict(end_logs))
    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_logs=dict(final),
        stopped_early=stopped_early,
        train_seconds=train_seconds,
        samples_seen=samples,
    )
