"""The series forecaster: linear path chosen like the baseline, scales in the graph, stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training import TrainSpec, export_onnx, train
from training.autoregression import least_squares
from training.data import DataSplit, load_dataset
from training.models import RNNConfig, SeriesRNN
from training.models.rnn import SeriesScales
from training.plans.series import resolve


def _csv(path: Path, values: np.ndarray) -> str:
    path.write_text("value\n" + "\n".join(f"{v:.6f}" for v in values) + "\n")
    return str(path)


def _ar2(n: int, seed: int = 0) -> np.ndarray:
    """A stationary AR(2) around 10 with unit noise: the best forecast is linear, order 2."""
    rng = np.random.default_rng(seed)
    v = np.zeros(n)
    for t in range(2, n):
        v[t] = 0.6 * v[t - 1] - 0.3 * v[t - 2] + rng.normal()
    return v + 10.0


def _net(data: DataSplit, **config: object) -> SeriesRNN:
    resolved = resolve(RNNConfig("gru", hidden=(8,), **config), data)  # type: ignore[arg-type]
    values = np.concatenate([data.x_train[0, :, 0], data.y_train])
    assert data.window is not None
    net = SeriesRNN(resolved, data.window, SeriesScales.of(values, resolved.transform))
    net.init_linear(data.x_train, data.y_train)
    return net.eval()


def test_resolve_picks_the_order_and_path_on_validation(tmp_path: Path) -> None:
    data = load_dataset(_csv(tmp_path / "ar2.csv", _ar2(1500)), kind="gru", window=12)
    config = resolve(RNNConfig("gru"), data)
    assert config.linear == "levels" and config.order is not None and config.order >= 2
    # What the user sets stays; only the open choices are made.
    fixed = resolve(RNNConfig("gru", linear="differences", order=5, transform="none"), data)
    assert (fixed.linear, fixed.order, fixed.transform) == ("differences", 5, "none")


def test_sqrt_is_only_a_candidate_for_non_negative_series(tmp_path: Path) -> None:
    trend = np.linspace(-50.0, 50.0, 400) + np.sin(np.arange(400))
    data = load_dataset(_csv(tmp_path / "neg.csv", trend), kind="lstm", window=8)
    config = resolve(RNNConfig("lstm"), data)
    assert config.transform == "none" and config.linear == "differences"


@pytest.mark.parametrize("transform", ["none", "sqrt"])
@pytest.mark.parametrize("path", ["differences", "levels"])
def test_network_starts_as_the_least_squares_autoregression(
    tmp_path: Path, transform: str, path: str
) -> None:
    data = load_dataset(_csv(tmp_path / "s.csv", _ar2(600, seed=1) + 5), kind="gru", window=10)
    net = _net(data, linear=path, order=4, transform=transform)
    with torch.no_grad():
        got = net.predict(torch.from_numpy(data.x_test))[:, 0].double().numpy()

    # The same autoregression fitted on raw (transformed) values in numpy.
    def work(v: np.ndarray) -> np.ndarray:
        return np.sqrt(v) if transform == "sqrt" else v

    v = work(data.x_train[:, :, 0].astype(np.float64))
    lags = np.diff(v, axis=1)[:, -4:] if path == "differences" else v[:, -4:]
    target = work(data.y_train.astype(np.float64)) - (v[:, -1] if path == "differences" else 0)
    coef = least_squares(lags, target)
    vt = work(data.x_test[:, :, 0].astype(np.float64))
    lt = np.diff(vt, axis=1)[:, -4:] if path == "differences" else vt[:, -4:]
    expected = coef[0] + lt @ coef[1:] + (vt[:, -1] if path == "differences" else 0)
    expected = expected**2 if transform == "sqrt" else expected
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_inputs_shorter_or_longer_than_the_window_still_forecast(tmp_path: Path) -> None:
    data = load_dataset(_csv(tmp_path / "s.csv", _ar2(300)), kind="lstm", window=10)
    net = _net(data)
    x = torch.from_numpy(data.x_test[:5])
    with torch.no_grad():
        full = net(x)
        longer = net(torch.cat([x, x], dim=1)[:, -10:])
        assert torch.equal(net(torch.cat([x[:, :3], x], dim=1)), full)  # latest 10 steps
        assert torch.equal(longer, full)
        for steps in (1, 3):
            out = net(x[:, -steps:])
            assert out.shape == (5, 1) and torch.isfinite(out).all()


def test_trending_series_extrapolates_past_the_training_range(tmp_path: Path) -> None:
    """co2's problem in miniature: test levels far above every training level."""
    t = np.arange(800, dtype=np.float64)
    noise = np.random.default_rng(0).normal(0, 0.3, 800)
    values = 0.5 * t + 3.0 * np.sin(2 * np.pi * t / 25) + noise
    r = train(TrainSpec("gru", _csv(tmp_path / "trend.csv", values), epochs=3, window=30))
    assert r.data.y_test.min() > r.data.y_train.max() + 50
    assert r.test_value < 0.6  # the noise is 0.3; a level-bound network misses by tens


def test_network_beats_the_linear_baseline_on_a_nonlinear_series(tmp_path: Path) -> None:
    """A threshold autoregression: the recurrent correction must learn what AR cannot."""
    rng = np.random.default_rng(3)
    v = np.zeros(2000)
    for i in range(1, len(v)):
        v[i] = (0.9 * v[i - 1] if v[i - 1] < 0 else -0.6 * v[i - 1] + 1.0) + rng.normal(0, 0.3)
    r = train(TrainSpec("gru", _csv(tmp_path / "tar.csv", v), epochs=15, window=6, hidden=(16,)))
    assert r.baseline_name.startswith("ar-") or r.baseline_name == "naive-last-value"
    linear = min(m["rmse"] for n, m in r.baselines.items() if n.startswith("ar-") or "naive" in n)
    assert r.test_value < 0.95 * linear


def test_stacked_lstm_example_trains_and_exports(tmp_path: Path) -> None:
    """The issue's example: LSTM(64) -> LSTM(64) -> Dense(1) on 30 steps of a user CSV."""
    t = np.arange(400, dtype=np.float64)
    csv = _csv(tmp_path / "series.csv", 20 + np.sin(2 * np.pi * t / 12) + 0.01 * t)
    r = train(TrainSpec("lstm", csv, hidden=(64, 64), window=30, epochs=2))
    net = r.model.net
    assert isinstance(net, SeriesRNN)
    layers = [m for m in net.rnn.layers if isinstance(m, torch.nn.LSTM)]
    assert [m.hidden_size for m in layers] == [64, 64] and layers[1].input_size == 64
    assert r.architecture["hidden"] == (64, 64) and r.data.window == 30
    report = export_onnx(r, tmp_path / "m.onnx", {"model_name": "stacked"})
    assert report.max_diff <= 1e-4
