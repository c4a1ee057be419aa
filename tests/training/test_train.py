"""train(): results per family, reproducibility, callbacks, early stopping, baselines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from training import Callback, TrainResult, TrainSpec, primary_metric, train
from training.loop import LoopConfig, fit
from training.models import Predictor
from training.spec import ACTIVATIONS, OPTIMIZERS


class Recorder(Callback):
    """Remembers every hook call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_train_start(self, info: dict[str, Any]) -> None:
        self.calls.append(("start", info))

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.calls.append(("epoch", (epoch, logs)))

    def on_train_end(self, logs: dict[str, Any]) -> None:
        self.calls.append(("end", logs))


@pytest.mark.parametrize(
    ("family", "candidates", "metric"),
    [
        ("fnn", ["logistic-regression", "rbf-svm", "gradient-boosting"], "accuracy"),
        ("fnn-regression", ["ridge", "rbf-svm", "gradient-boosting"], "r2"),
        ("cnn", ["logistic-regression", "rbf-svm"], "accuracy"),
        ("lstm", ["naive-last-value", "seasonal-naive", "ar-levels", "ar-differences"], "rmse"),
        ("gru", ["naive-last-value", "ar-levels", "ar-differences"], "rmse"),  # period 11 > 10
        ("lstm-text", ["kneser-ney"], "perplexity"),
    ],
)
def test_result_shape_per_family(
    family: str, candidates: list[str], metric: str, trained: Callable[[str], TrainResult]
) -> None:
    r = trained(family)
    assert list(r.baselines) == candidates and r.primary_metric == metric
    # The gate's baseline is one of the candidates, with that candidate's own test metrics.
    assert r.baseline_name in candidates
    assert r.baseline_metrics == r.baselines[r.baseline_name]
    assert r.higher_is_better == primary_metric(r.data.task)[1]
    assert r.higher_is_better == (metric in ("accuracy", "r2"))
    assert set(r.baseline_metrics) == set(r.test_metrics)  # same dict shape
    assert r.spec.epochs is not None and r.spec.lr is not None  # resolved
    assert 1 <= r.best_epoch <= len(r.history) <= r.spec.epochs
    for i, logs in enumerate(r.history, start=1):
        assert logs["epoch"] == i
        assert {"train_loss", "val_loss", f"val_{metric}"} <= set(logs)
    assert isinstance(r.model, Predictor) and not r.model.training
    assert r.train_seconds > 0
    assert np.isfinite(r.test_metrics[metric])


def test_series_baselines_include_seasonal_naive(trained: Callable[[str], TrainResult]) -> None:
    r = trained("lstm")
    assert set(r.baselines) == {"naive-last-value", "seasonal-naive", "ar-levels", "ar-differences"}
    naive = r.data.x_test[:, -1, 0]
    expected = float(np.sqrt(np.mean((naive - r.data.y_test) ** 2)))
    assert r.baselines["naive-last-value"]["rmse"] == pytest.approx(expected, rel=1e-5)
    seasonal = r.data.x_test[:, -11, 0]  # sunspots' period is 11 years, inside the window of 12
    expected = float(np.sqrt(np.mean((seasonal - r.data.y_test) ** 2)))
    assert r.baselines["seasonal-naive"]["rmse"] == pytest.approx(expected, rel=1e-5)
    # On sunspots an autoregression beats both rules of thumb, so the gate judges against it.
    assert r.baseline_name in ("ar-levels", "ar-differences")
    assert r.baseline_metrics["rmse"] < min(r.baselines["naive-last-value"]["rmse"], expected)


def test_same_seed_same_metrics_and_different_seed_differs() -> None:
    spec = TrainSpec("fnn", "wine", epochs=4, seed=5)
    a, b = train(spec), train(spec)
    assert a.test_metrics == b.test_metrics
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    np.testing.assert_array_equal(a.test_output, b.test_output)
    c = train(TrainSpec("fnn", "wine", epochs=4, seed=6))
    assert [h["train_loss"] for h in c.history] != [h["train_loss"] for h in a.history]


def test_rnn_reproducible() -> None:
    spec = TrainSpec("gru", "sunspots", epochs=2, window=8, limit=80)
    a, b = train(spec), train(spec)
    np.testing.assert_array_equal(a.test_output, b.test_output)


def test_callbacks_see_every_epoch_in_order() -> None:
    rec = Recorder()
    r = train(TrainSpec("fnn", "breast-cancer", epochs=3, limit=120, patience=10), [rec])
    names = [c[0] for c in rec.calls]
    assert names == ["start", "epoch", "epoch", "epoch", "end"]
    start = rec.calls[0][1]
    assert start["epochs"] == 3 and start["n_train"] == len(r.data.y_train)
    epochs = [c[1][0] for c in rec.calls if c[0] == "epoch"]
    assert epochs == [1, 2, 3]
    assert rec.calls[1][1][1] == r.history[0]
    end = rec.calls[-1][1]
    assert end["best_epoch"] == r.best_epoch and "best_val_accuracy" in end


def test_a_callback_can_stop_training() -> None:
    class StopAfterTwo(Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            self.stop_training = epoch >= 2

    r = train(TrainSpec("fnn", "wine", epochs=50), [StopAfterTwo()])
    assert len(r.history) == 2 and r.stopped_early


def test_early_stopping_and_best_checkpoint_restore() -> None:
    """A loop whose validation metric peaks at epoch 2 stops after `patience` more epochs and
    hands back the epoch-2 weights."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    x, y = torch.randn(32, 2), torch.randn(32)
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.95])
    snapshots: list[torch.Tensor] = []

    def validate(m: torch.nn.Module) -> dict[str, float]:
        snapshots.append(m.weight.detach().clone())
        return {"val_loss": 1.0, "val_accuracy": next(scores)}

    from training.callbacks import EarlyStopping

    stopper = EarlyStopping("val_accuracy", higher_is_better=True, patience=3)
    config = LoopConfig(
        epochs=6, batch_size=8, lr=0.1, monitor="val_accuracy", higher_is_better=True
    )
    result = fit(
        model,
        lambda z, t: torch.nn.functional.mse_loss(z[:, 0], t),
        x,
        y,
        validate=validate,
        config=config,
        callbacks=[stopper],
    )
    assert len(result.history) == 5 and result.stopped_early
    assert result.best_epoch == 2
    torch.testing.assert_close(model.weight, snapshots[1])


@pytest.fixture(scope="module")
def ring_csv(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Points inside vs outside a circle: no linear model separates them (it scores about the
    majority class), so a network beats that only if its hidden layers really learn."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1.0, 1.0, size=(400, 2))
    inside = (x**2).sum(axis=1) < 0.5  # area pi/2 of 4: about 39 % inside
    path = tmp_path_factory.mktemp("ring") / "ring.csv"
    rows = [f"{a:.5f},{b:.5f},{int(c)}" for (a, b), c in zip(x, inside, strict=True)]
    path.write_text("\n".join(["a,b,inside", *rows]))
    return str(path)


def _learns_the_ring(r: TrainResult) -> None:
    majority = float(np.bincount(r.data.y_test).max()) / len(r.data.y_test)
    assert r.test_metrics["accuracy"] >= 0.85 > majority + 0.2
    assert r.history[-1]["train_loss"] < 0.7 * r.history[0]["train_loss"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains(optimizer: str, ring_csv: str) -> None:
    r = train(TrainSpec("fnn", ring_csv, target="inside", epochs=30, lr=0.02, optimizer=optimizer))
    assert r.spec.optimizer == optimizer
    _learns_the_ring(r)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_trains(activation: str, ring_csv: str) -> None:
    r = train(
        TrainSpec("fnn", ring_csv, target="inside", epochs=30, lr=0.02, activation=activation)
    )
    assert r.architecture["activation"] == activation
    _learns_the_ring(r)


def test_loss_decreases_on_real_data() -> None:
    r = train(TrainSpec("cnn", "digits", epochs=3, limit=400, patience=10))
    losses = [h["train_loss"] for h in r.history]
    assert losses[-1] < losses[0]


def test_rich_progress_shows_epochs_and_metric() -> None:
    import io

    from rich.console import Console

    from training import RichProgress

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=120)
    train(
        TrainSpec("fnn", "wine", epochs=3, patience=10),
        [RichProgress("val_accuracy", "wine-fnn", console=console)],
    )
    text = buffer.getvalue()
    assert "wine-fnn" in text and "3/3" in text and "val_accuracy" in text
