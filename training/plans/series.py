"""Series: a recurrent forecaster beside a linear autoregression, on scaled one-step changes.

The network (``SeriesRNN``) holds every scale in buffers, so the exported graph takes raw
values; training sees the forecast's change from the last value in units of the training
spread of changes (``SeriesStep``), so the loss is of order one whatever the series' level.

What the configuration leaves to the data (``linear="auto"``, ``order=None``,
``transform="auto"``) is chosen here the way the classical baseline chooses its own: least
squares on the training windows, the lowest RMSE on the validation windows. The network then
starts as that linear forecast and its recurrent layers learn a correction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from training.autoregression import Autoregression
from training.data import DataSplit
from training.models import Predictor, RNNConfig, SeriesRNN
from training.models.rnn import SeriesScales, SeriesStep
from training.plans import Plan, mse, overrides
from training.spec import TrainSpec

GRAD_CLIP = 1.0
# Every order up to this many lags is tried; beyond it, a geometric ladder up to the window.
ALL_ORDERS_UP_TO = 64
# Share of validation values allowed outside the training range for levels to be fed.
LEVELS_OUTSIDE_SHARE = 0.05


def plan(spec: TrainSpec, data: DataSplit) -> Plan:
    """Forecaster trained on every look-back window of the training stretch."""
    net = network(spec, data)
    last = data.x_train[:, -1, 0]
    y = torch.from_numpy((data.y_train - last) / float(net.change)).float()
    mean, std = float(net.mean), float(net.std)

    def val_loss(z: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        return mse(z, (yv - mean) / std)

    return Plan(
        Predictor(net, "forecast", mean, std),
        SeriesStep(net),
        mse,
        val_loss,
        torch.from_numpy(data.x_train),
        y,
        grad_clip=GRAD_CLIP,
    )


def network(spec: TrainSpec, data: DataSplit) -> SeriesRNN:
    """The forecaster for ``spec`` on ``data``: configuration resolved, scales from the training
    stretch, linear path fitted (also what benchmarks build outside a full run)."""
    assert data.window is not None
    values = np.concatenate([data.x_train[0, :, 0], data.y_train])  # the training stretch
    config = RNNConfig(cell=spec.kind, **overrides(spec, hidden="hidden", dropout="dropout"))
    config = resolve(config, data)
    net = SeriesRNN(config, data.window, SeriesScales.of(values, config.transform))
    net.init_linear(data.x_train, data.y_train)
    return net


def resolve(config: RNNConfig, data: DataSplit) -> RNNConfig:
    """``config`` with ``transform``, ``linear`` and ``order`` fixed: what the user set stays,
    the rest is the linear autoregression best on validation.

    ``sqrt`` is a candidate only for a series never negative in training (counts, amounts).
    """
    values = np.concatenate([data.x_train[0, :, 0], data.y_train])
    transforms = [config.transform] if config.transform != "auto" else ["none"]
    if config.transform == "auto" and float(values.min()) >= 0:
        transforms.append("sqrt")
    if config.linear == "none":
        paths = ["differences"]  # still the yardstick for the transform
    else:
        paths = [config.linear] if config.linear != "auto" else ["differences", "levels"]
    best: tuple[float, str, str, int] | None = None
    for transform in transforms:
        for path in paths:
            for order, error in _linear_errors(data, transform, path, config.order):
                if best is None or error < best[0]:
                    best = (error, transform, path, order)
    assert best is not None
    _, transform, path, order = best
    levels = config.levels if config.levels is not None else levels_in_range(data, values)
    if config.linear == "none":
        return dataclasses.replace(config, transform=transform, order=None, levels=levels)
    return dataclasses.replace(config, transform=transform, linear=path, order=order, levels=levels)


def levels_in_range(data: DataSplit, values: np.ndarray) -> bool:
    """Whether the validation values stay within the training range (a few may stray).

    Then levels are worth feeding to the recurrent layers beside the changes: many series
    behave differently high and low (sunspot cycles, thresholds). A drifting series (co2)
    leaves the range, and a network fed its levels would meet inputs it never saw.
    """
    low, high = float(values.min()), float(values.max())
    outside = (data.y_val < low) | (data.y_val > high)
    return float(outside.mean()) <= LEVELS_OUTSIDE_SHARE


def _linear_errors(
    data: DataSplit, transform: str, path: str, order: int | None
) -> Iterator[tuple[int, float]]:
    """(order, validation MSE in the target's units) of least-squares autoregressions."""
    window = data.x_train.shape[1]
    max_order = window - 1 if path == "differences" else window
    orders = [min(order, max_order)] if order is not None else _orders(max_order)

    y_val = data.y_val.astype(np.float64)
    for p in orders:
        model = Autoregression.fit(data.x_train, data.y_train, path, p, transform)
        yield p, float(np.mean((model.predict(data.x_val) - y_val) ** 2))


def _orders(max_order: int) -> list[int]:
    """Every order up to ``ALL_ORDERS_UP_TO``, then steps of a quarter up to ``max_order``.

    Bounds the cost for long windows (daily data with a year's look-back) while keeping every
    short order, where the choice matters most.
    """
    orders = list(range(1, min(max_order, ALL_ORDERS_UP_TO) + 1))
    p = float(ALL_ORDERS_UP_TO)
    while orders and orders[-1] < max_order:
        p *= 1.25
        orders.append(min(max_order, round(p)))
    return orders
