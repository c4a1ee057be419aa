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
import torch.nn.functional as F
from torch import nn

from training.baselines import run_baselines
from training.callbacks import Callback, EarlyStopping
from training.data import DataSplit, load_dataset
from training.loop import LoopConfig, fit
from training.metrics import evaluate, primary_metric
from training.models import CNN, FNN, CNNConfig, FNNConfig, Predictor, RNNConfig, SeriesRNN, TextRNN
from training.models.cnn import default_channels, default_hidden, default_shift
from training.models.rnn import AllSteps
from training.spec import TrainSpec

__all__ = ["TrainResult", "monitored_metric", "predict", "train"]

PREDICT_BATCH = 1024
RNN_GRAD_CLIP = 1.0
TABLE_WEIGHT_DECAY = 1e-2  # small tables overfit fast; tuned on diabetes / breast-cancer
TEXT_HIDDEN = 128  # the vocabulary-sized output layer dominates the cost; 128 keeps epochs short
TEXT_EMBED = 64


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
class _Plan:
    """What the loop needs for one task: the module to train, its loss, tensors, validation."""

    predictor: Predictor
    train_module: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    val_loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    weight_decay: float = 0.0
    grad_clip: float | None = None


def train(spec: TrainSpec, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train one model as ``spec`` says and score it and its baseline on the test split.

    Raises ``SpecError`` / ``DataError`` before any training when the spec or data cannot
    work. The same spec and seed give identical metrics on the same CPU and thread count.
    """
    spec.validate()
    spec = spec.resolved()
    assert spec.epochs is not None and spec.batch_size is not None and spec.lr is not None
    data = load_dataset(spec)
    torch.manual_seed(spec.seed)
    plan = _plan(spec, data)
    metric, higher_is_better = primary_metric(data.task)
    monitor, mon_higher = monitored_metric(data.task)
    x_val = torch.from_numpy(data.x_val)

    def validate(_: nn.Module) -> dict[str, float]:
        logits = _batched(plan.predictor.net, x_val)
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
        weight_decay=plan.weight_decay,
        grad_clip=plan.grad_clip,
        monitor=monitor,
        higher_is_better=mon_higher,
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


def _plan(spec: TrainSpec, data: DataSplit) -> _Plan:
    """Build network, head, loss and training tensors for the data's input kind and task."""
    if data.input_kind == "table":
        return _plan_table(spec, data)
    if data.input_kind == "image":
        return _plan_image(data)
    if data.input_kind == "series":
        return _plan_series(spec, data)
    return _plan_text(spec, data)


def _classifier_losses(
    task: str,
) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], int | None]:
    """Loss on logits for a classification task; ``None`` outputs means one per class."""
    if task == "binary":
        return (lambda z, y: F.binary_cross_entropy_with_logits(z[:, 0], y.to(z.dtype))), 1
    return F.cross_entropy, None


def _mse(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE between ``[batch, 1]`` predictions and 1-D targets (both standardised)."""
    return F.mse_loss(z[:, 0], y)


def _plan_table(spec: TrainSpec, data: DataSplit) -> _Plan:
    """FNN with standardised features; regression learns standardised targets."""
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    x = torch.from_numpy(data.x_train)
    if data.task == "regression":
        y_mean, y_std = float(data.y_train.mean()), float(data.y_train.std() or 1.0)
        config = FNNConfig(data.x_train.shape[1], 1, activation=spec.activation)
        net = FNN(config, mean, std)
        y = torch.from_numpy((data.y_train - y_mean) / y_std).float()

        def val_loss(z: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
            return _mse(z, (yv - y_mean) / y_std)

        return _Plan(
            Predictor(net, data.task, y_mean, y_std),
            net,
            _mse,
            val_loss,
            x,
            y,
            weight_decay=TABLE_WEIGHT_DECAY,
        )
    loss, n_out = _classifier_losses(data.task)
    config = FNNConfig(data.x_train.shape[1], n_out or data.n_classes, activation=spec.activation)
    net = FNN(config, mean, std)
    y = torch.from_numpy(data.y_train)
    return _Plan(Predictor(net, data.task), net, loss, loss, x, y, weight_decay=TABLE_WEIGHT_DECAY)


def _plan_image(data: DataSplit) -> _Plan:
    """CNN with per-channel pixel standardisation computed on the training images."""
    pixel_max = data.pixel_max or 255.0
    scaled = data.x_train / pixel_max
    mean, std = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))
    _, c, h, w = data.x_train.shape
    loss, n_out = _classifier_losses(data.task)
    config = CNNConfig(
        in_channels=c,
        height=h,
        width=w,
        n_outputs=n_out or data.n_classes,
        channels=default_channels(h, w),
        hidden=default_hidden(h, w),
        pixel_max=pixel_max,
        shift=default_shift(h, w),
    )
    net = CNN(config, mean, std)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    return _Plan(Predictor(net, data.task), net, loss, loss, x, y)


def _plan_series(spec: TrainSpec, data: DataSplit) -> _Plan:
    """Forecaster on standardised values; the same statistics un-scale its output."""
    values = np.concatenate([data.x_train[0, :, 0], data.y_train])  # the training stretch
    mean, std = float(values.mean()), float(values.std() or 1.0)
    net = SeriesRNN(RNNConfig(cell=spec.kind, hidden=64, layers=1), mean, std)
    y = torch.from_numpy((data.y_train - mean) / std).float()

    def val_loss(z: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        return _mse(z, (yv - mean) / std)

    return _Plan(
        Predictor(net, "forecast", mean, std),
        net,
        _mse,
        val_loss,
        torch.from_numpy(data.x_train),
        y,
        grad_clip=RNN_GRAD_CLIP,
    )


def _plan_text(spec: TrainSpec, data: DataSplit) -> _Plan:
    """Next-word RNN trained on every step of non-overlapping chunks of the training text.

    Each chunk of ``window`` tokens teaches ``window`` next-word predictions, so one epoch
    reads the training text once instead of ``window`` times; the exported graph still
    answers for the last step only, as the contract says.
    """
    assert data.window is not None
    window = data.window
    stream = np.concatenate([data.x_train[0], data.y_train])
    n_chunks = (len(stream) - 1) // window
    usable = stream[: n_chunks * window + 1]
    x = torch.from_numpy(usable[:-1].reshape(n_chunks, window).copy())
    y = torch.from_numpy(usable[1:].reshape(n_chunks, window).copy())
    config = RNNConfig(
        cell=spec.kind,
        hidden=TEXT_HIDDEN,
        layers=1,
        dropout=0.2,
        vocab_size=len(data.vocabulary),
        embed=TEXT_EMBED,
    )
    net = TextRNN(config)
    vocab = len(data.vocabulary)

    def loss(z: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z.reshape(-1, vocab), yb.reshape(-1))

    def val_loss(z: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, yv)

    return _Plan(
        Predictor(net, "next-token"), AllSteps(net), loss, val_loss, x, y, grad_clip=RNN_GRAD_CLIP
    )
