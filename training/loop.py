"""The training loop: mini-batches, optimiser, validation, best-checkpoint restore, callbacks.

It knows nothing of model families or tasks. The caller hands it a module, a loss function, the
training tensors and a ``validate`` function that returns ``val_loss`` and ``val_<metric>``
values; everything task-specific (heads, scaling, metrics) stays with the caller. Overhead per
batch is one index, one forward/backward and one optimiser step; the loss is summed on the
tensor side and read once per epoch, so the loop costs almost nothing over a hand-written one
(``bench/bench_training.py`` measures it).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from training import device as devices
from training import distributed
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
    device: str = "cpu"  # a torch device ("cpu", "cuda:0"); a process group's own wins
    amp: bool = False  # bf16 autocast on CUDA (training.device.autocast)


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


class _Shard:
    """Which samples this process trains on, and how it agrees with the others.

    Alone, it is the whole training set in the loop's own seeded order and every method is a
    no-op. In a process group, each epoch's indices come from ``DistributedSampler`` (seeded with
    the spec's seed and the epoch, so every process draws the same permutation and takes its own
    equal share), the batch is ``batch_size / world_size`` per process, the training loss is
    all-reduced and rank 0's logs and decisions are broadcast.
    """

    def __init__(self, n: int, config: LoopConfig, world: distributed.World | None) -> None:
        self.n, self.config, self.world = n, config, world
        self.batch_size = config.batch_size
        self.size = n
        self.sampler: Any = None
        if world is not None:
            from torch.utils.data import DistributedSampler

            self.batch_size = distributed.check_batch_size(config.batch_size, world.world_size)
            self.sampler = DistributedSampler(
                cast(Any, range(n)),
                num_replicas=world.world_size,
                rank=world.rank,
                shuffle=config.shuffle,
                seed=config.seed,
            )
            self.size = len(self.sampler)

    def order(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """This epoch's sample indices for this process."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            return torch.tensor(list(self.sampler), dtype=torch.long)
        if self.config.shuffle:
            return torch.randperm(self.n, generator=generator)
        return torch.arange(self.n)

    def talking(self) -> contextlib.AbstractContextManager[None]:
        """Around the loop: a dead peer or the launcher's stop becomes ``PeerError``."""
        return distributed.collectives() if self.world is not None else contextlib.nullcontext()

    def check_stop(self) -> None:
        """Between steps: stop when the launcher asked (rank 0 handles its SIGTERM so)."""
        if self.world is not None:
            distributed.check_stop()

    def mean_loss(self, loss_sum: torch.Tensor, count: int) -> tuple[int, float]:
        """(samples seen, mean training loss) over every process's samples this epoch."""
        if self.world is None:
            return count, float(loss_sum) / count
        total = torch.stack([loss_sum.float(), torch.tensor(float(count), device=loss_sum.device)])
        dist.all_reduce(total)
        return int(total[1]), float(total[0] / total[1])

    def from_rank_zero(self, logs: dict[str, float]) -> dict[str, float]:
        """Rank 0's ``logs`` on every process (itself alone: unchanged)."""
        if self.world is None:
            return logs
        box: list[Any] = [logs]
        with distributed.collectives():
            dist.broadcast_object_list(box, src=0)
        return dict(box[0])


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

    In a process group (``training.distributed``) it trains data-parallel: DDP over this
    process's shard, validation on rank 0 only, rank 0's logs and stop decision on every rank,
    the same seed and world size giving the same result. The model ends on the CPU either way.

    On a GPU ``x`` and ``y`` are moved there once when they fit (``training.device.fits_on``),
    so a step indexes device memory instead of copying its batch from the host; ``config.amp``
    runs the forward pass and loss under bf16 autocast. On the CPU neither changes anything.
    """
    n = int(x.shape[0])
    if n == 0:
        raise SpecError("no training samples; the data split left the training set empty")
    world = distributed.current()
    shard = _Shard(n, config, world)
    device = world.device if world is not None else torch.device(config.device)
    model.to(device)
    resident = devices.fits_on(device, x, y)
    if resident:  # once, not per batch (a no-op on the CPU)
        x, y = x.to(device), y.to(device)
    cast = devices.autocast(device, config.amp)
    net: nn.Module = model
    if world is not None:
        from torch.nn.parallel import DistributedDataParallel

        with distributed.collectives():  # DDP broadcasts rank 0's weights to every process
            net = DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None
            )
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    schedule = _Schedule(optimizer, config, steps=-(-shard.size // shard.batch_size))
    reset_state = getattr(model, "reset_state", None)  # stateful modules start each epoch fresh
    params = [p for p in model.parameters() if p.requires_grad]
    info: dict[str, Any] = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "n_train": n,
        "parameters": sum(p.numel() for p in params),
        "model": type(model).__name__,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "world_size": world.world_size if world is not None else 1,
        **devices.describe(device, config.amp),
        "data_on_device": resident,
    }
    if world is not None:
        info.update(backend=world.backend, batch_size_per_process=shard.batch_size)
    for cb in callbacks:
        cb.on_train_start(dict(info))

    history: list[dict[str, float]] = []
    best_logs: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] = _snapshot(model)
    best_epoch = 0
    stopped_early = False
    samples = 0
    start = time.perf_counter()
    # The whole loop is one span in which the launcher's stop waits for the next step (or
    # the span's end) instead of raising inside whatever it interrupted, e.g. MLflow logging.
    with shard.talking():
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            if callable(reset_state):
                reset_state()
            order = shard.order(epoch, generator).to(x.device)
            losses: list[torch.Tensor] = []  # summed once per epoch: no per-batch sync or math
            for i in range(0, len(order), shard.batch_size):
                shard.check_stop()
                idx = order[i : i + shard.batch_size]
                xb, yb = x[idx], y[idx]
                if not resident:
                    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with cast:
                    loss = loss_fn(net(xb), yb)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                schedule.step()
                losses.append(loss.detach())
            sizes = torch.full((len(losses),), float(shard.batch_size), device=device)
            sizes[-1] = len(order) - shard.batch_size * (len(losses) - 1)
            seen, train_loss = shard.mean_loss(
                torch.dot(torch.stack(losses).float(), sizes), len(order)
            )
            samples += seen
            model.eval()
            if callable(reset_state):
                reset_state()
            logs: dict[str, float] = {}
            if world is None or world.rank == 0:  # rank 0's model is the one exported
                with torch.no_grad():
                    val = validate(model)
                logs = {
                    "epoch": float(epoch),
                    "train_loss": train_loss,
                    "lr": float(optimizer.param_groups[0]["lr"]),
                }
                logs.update({k: float(v) for k, v in val.items()})
                logs["seconds"] = time.perf_counter() - epoch_start
            logs = shard.from_rank_zero(logs)
            history.append(logs)
            improved = is_improvement(
                logs,
                best_logs,
                config.monitor,
                config.higher_is_better,
                tie_breaker=config.tie_breaker,
            )
            if improved:
                best_logs, best_epoch = dict(logs), epoch
                best_state = _snapshot(model)
            schedule.epoch_end(improved)
            for cb in callbacks:
                cb.on_epoch_end(epoch, dict(logs))
            # Rank 0's callbacks decide for everyone (its logs are everyone's, but only it may hold
            # callbacks such as MLflow logging that could stop a run).
            stop = float(any(cb.stop_training for cb in callbacks))
            if shard.from_rank_zero({"stop": stop})["stop"]:
                stopped_early = epoch < config.epochs
                break
        train_seconds = time.perf_counter() - start
        if best_logs is not None:  # never improved (e.g. NaN metrics): keep the last weights
            model.load_state_dict(best_state)
        else:
            best_epoch = len(history)
        model.to("cpu")  # scoring and export run on the CPU
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
