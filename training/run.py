"""``train(spec)``: one run from a spec to a scored, export-ready model.

This is where the task meets the family: it loads and splits the data, builds the network with
its scaling buffers, picks the loss and the training view, hands both to the family-agnostic
loop, then scores the best checkpoint and the classical baseline on the same test split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from training import device as devices
from training import distributed
from training.baselines import run_baselines
from training.callbacks import Callback, EarlyStopping
from training.data import DataSplit, load_dataset
from training.loop import FitResult, LoopConfig, fit
from training.metrics import evaluate, primary_metric
from training.plans import Plan
from training.plans import plan as make_plan
from training.spec import TrainSpec

__all__ = ["Fitted", "TrainResult", "fit_spec", "monitored_metric", "predict", "train"]

PREDICT_BATCH = 1024


@dataclass
class TrainResult:
    """Everything a caller needs after a run: the model, its data, curves, scores, baseline."""

    spec: TrainSpec
    data: DataSplit
    model: nn.Module
    history: list[dict[str, float]]
    test_metrics: dict[str, float]
    baseline_name: str
    baseline_metrics: dict[str, float]
    primary_metric: str
    higher_is_better: bool
    test_output: np.ndarray
    train_seconds: float
    best_epoch: int
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    val_metrics: dict[str, float] = field(default_factory=dict)
    baseline_seconds: float = 0.0
    #: Every classical candidate as plain values: name, val_metric (primary metric on
    #: validation, which alone chose the baseline), test_metrics, params, seconds, chosen.
    baseline_candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def test_value(self) -> float:
        """The primary metric on the test split."""
        return self.test_metrics[self.primary_metric]

    @property
    def baseline_value(self) -> float:
        """The baseline's primary metric on the same test split."""
        return self.baseline_metrics[self.primary_metric]

    @property
    def beats_baseline(self) -> bool:
        """Strictly better than the baseline on the primary metric."""
        if self.higher_is_better:
            return self.test_value > self.baseline_value
        return self.test_value < self.baseline_value


@dataclass
class Fitted:
    """A spec trained but not yet scored: what :func:`train` scores and other ranks stop at."""

    spec: TrainSpec
    data: DataSplit
    plan: Plan
    fitted: FitResult


def fit_spec(spec: TrainSpec, callbacks: Sequence[Callback] = ()) -> Fitted:
    """Load the data, build the plan and run the loop: everything in :func:`train` before scoring.

    In a process group (``training.distributed``) every rank calls this: rank 0 loads the data
    first (a first download lands once in the cache), all ranks build the same initial weights
    from the spec's seed, then reseed with ``seed + rank`` so dropout and augmentation differ
    between shards, reproducibly for a given world size.

    The device is resolved first (``training.device.resolve``): ``--device cuda`` on a machine
    without a GPU is a ``DeviceError`` before any data is read. In a process group the group's
    device wins (``training.distributed`` chose its backend from the same spec).
    """
    spec.validate()
    spec = spec.resolved()
    assert spec.epochs is not None and spec.batch_size is not None and spec.lr is not None
    assert spec.weight_decay is not None and spec.schedule is not None
    world = distributed.current()
    device = world.device if world is not None else devices.check(spec.device, spec.amp)
    with distributed.rank_zero_first(world):
        data = load_dataset(spec)
    torch.manual_seed(spec.seed)
    plan = make_plan(spec, data)
    if world is not None:
        torch.manual_seed(spec.seed + world.rank)
    monitor, mon_higher = monitored_metric(data.task)
    x_val = torch.from_numpy(data.x_val)
    if devices.fits_on(device, x_val):
        x_val = x_val.to(device)  # once: every epoch validates on it

    def validate(_: nn.Module) -> dict[str, float]:
        net = plan.predictor.net
        logits = _batched(lambda xb: net(xb.to(device)), x_val).cpu()
        y_val = torch.from_numpy(data.y_val)
        out: dict[str, float] = {"val_loss": float(plan.val_loss_fn(logits, y_val))}
        scores = evaluate(data.task, data.y_val, plan.predictor.head(logits).numpy())
        out.update({f"val_{k}": v for k, v in scores.items()})
        return out

    stopper = EarlyStopping(monitor, mon_higher, patience=spec.patience)
    config = LoopConfig(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        optimizer=spec.optimizer,
        seed=spec.seed,
        weight_decay=spec.weight_decay,
        grad_clip=plan.grad_clip,
        schedule=spec.schedule,
        shuffle=plan.shuffle,
        monitor=monitor,
        higher_is_better=mon_higher,
        device=str(device),
        amp=bool(spec.amp),
    )
    fitted = fit(
        plan.train_module,
        plan.loss_fn,
        plan.x,
        plan.y,
        validate=validate,
        config=config,
        callbacks=[stopper, *callbacks],
    )
    return Fitted(spec, data, plan, fitted)


def train(spec: TrainSpec, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train one model as ``spec`` says and score it and its baseline on the test split.

    Raises ``SpecError`` / ``DataError`` before any training when the spec or data cannot
    work. The same spec and seed give identical metrics on the same CPU and thread count.
    """
    done = fit_spec(spec, callbacks)
    spec, data, plan, fitted = done.spec, done.data, done.plan, done.fitted
    metric, higher_is_better = primary_metric(data.task)
    model = plan.predictor.eval()
    test_output = predict(model, data.x_test)
    test_metrics = evaluate(data.task, data.y_test, test_output)
    start = time.perf_counter()
    baseline = run_baselines(data)
    baseline_seconds = time.perf_counter() - start
    net_config = getattr(plan.predictor.net, "config", None)
    return TrainResult(
        spec=spec,
        data=data,
        model=model,
        history=fitted.history,
        test_metrics=test_metrics,
        baseline_name=baseline.name,
        baseline_metrics=baseline.metrics,
        primary_metric=metric,
        higher_is_better=higher_is_better,
        test_output=test_output,
        train_seconds=fitted.train_seconds,
        best_epoch=fitted.best_epoch,
        baselines=baseline.all,
        architecture={
            "family": type(plan.predictor.net).__name__,
            **(asdict(net_config) if net_config is not None else {}),
        },
        stopped_early=fitted.stopped_early,
        val_metrics={k: v for k, v in fitted.best_logs.items() if k.startswith("val_")},
        baseline_seconds=baseline_seconds,
        baseline_candidates=[
            {
                "name": c.name,
                "val_metric": float(c.val_metric),
                "test_metrics": {k: float(v) for k, v in c.test_metrics.items()},
                "params": dict(c.params),
                "seconds": float(c.seconds),
                "chosen": c.name == baseline.name,
            }
            for c in baseline.candidates
        ],
    )


def monitored_metric(task: str) -> tuple[str, bool]:
    """What early stopping and the best checkpoint watch: (log key, higher is better).

    Regression, forecast and next-token watch their primary metric (R², RMSE, perplexity),
    which orders epochs exactly as their validation loss does. Classifiers watch the validation
    cross-entropy instead of accuracy: on a validation split of a few hundred samples accuracy
    moves in steps of several tenths of a point and often peaks by chance early on (digits:
    0.967 at epoch 7, then flat while the loss kept falling), so stopping on it ended runs half
    trained. Validation accuracy is still logged every epoch.
    """
    if task in ("binary", "multiclass"):
        return "val_loss", False
    metric, higher = primary_metric(task)
    return f"val_{metric}", higher


def predict(model: nn.Module, x: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Run a contract module on raw numpy input in batches; returns float32 ``[n, k]``."""
    model.eval()
    with torch.no_grad():
        return _batched(model, torch.from_numpy(np.ascontiguousarray(x)), batch_size).numpy()


def _batched(
    module: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    batch_size: int = PREDICT_BATCH,
) -> torch.Tensor:
    """Forward in slices so a large split never needs one huge activation tensor."""
    parts = [module(x[i : i + batch_size]) for i in range(0, int(x.shape[0]), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0)
