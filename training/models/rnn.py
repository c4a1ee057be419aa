"""Recurrent networks (LSTM or GRU): stacked layers and the forecaster for series."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.autoregression import least_squares, to_work

__all__ = [
    "LINEAR_PATHS",
    "TRANSFORMS",
    "RNNConfig",
    "SeriesRNN",
    "SeriesScales",
    "SeriesStep",
    "Stacked",
]

# The linear autoregression beside the recurrent layers: on one-step changes, on levels, or
# none; "auto" picks one (and its order) on validation, as the classical baseline does.
LINEAR_PATHS: tuple[str, ...] = ("auto", "differences", "levels", "none")
# The scale the network works in; "auto" picks one on validation.
TRANSFORMS: tuple[str, ...] = ("auto", "none", "sqrt")
# The linear path learns at this fraction of the learning rate. It starts at its least-squares
# optimum, and full-rate Adam steps on its correlated lags only add noise (co2: training loss
# rose from the fit's 0.584 to 0.598); the recurrent layers meanwhile learn the residual.
LINEAR_RATE = 0.1


@dataclass
class RNNConfig:
    """A forecaster: cell type, hidden size per stacked layer, dropout between layers, and the
    linear path and value transform it works with.

    ``linear`` adds a linear autoregression of ``order`` lags beside the recurrent path
    (LSTNet): the network starts as the least-squares linear forecast and its recurrent layers
    learn what a linear model cannot. ``transform`` is the scale the network works in; ``sqrt``
    suits non-negative counts whose noise grows with the level. ``levels`` feeds standardised
    levels to the recurrent layers beside the changes (level-dependent behaviour, such as
    thresholds), which only helps while levels stay in the training range. ``"auto"`` and
    ``None`` are resolved on the training and validation splits by ``training.plans.series``.
    """

    cell: str  # "lstm" | "gru"
    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0
    linear: str = "auto"
    order: int | None = None
    transform: str = "auto"
    levels: bool | None = None


@dataclass(frozen=True)
class SeriesScales:
    """Statistics of the training stretch that the graph needs to scale raw values.

    ``mean``/``std`` standardise the output (what ``Predictor`` un-scales); ``step`` is the
    spread of one-step changes in the working (transformed) scale, which scales the inputs the
    recurrent layers see: changes keep their size when a trending series (co2) moves past every
    level seen in training, where standardised levels would lie far outside the training range.
    ``change`` is the spread of one-step changes in the target's own units, the unit of the
    training loss. ``level_mean``/``level_std`` standardise levels (working scale) for a linear
    path on levels and for the recurrent layers' level input.
    """

    mean: float
    std: float
    step: float
    change: float
    level_mean: float
    level_std: float

    @staticmethod
    def of(values: np.ndarray, transform: str) -> SeriesScales:
        """Scales of a training stretch of raw values under ``transform`` ("none" | "sqrt")."""
        raw = np.asarray(values, dtype=np.float64)
        work = to_work(raw, transform)
        return SeriesScales(
            mean=float(raw.mean()),
            std=_spread(raw),
            step=_spread(np.diff(work)),
            change=_spread(np.diff(raw)),
            level_mean=float(work.mean()),
            level_std=_spread(work),
        )


def _spread(values: np.ndarray) -> float:
    """Standard deviation, or 1 where it is zero (a constant stretch must not divide by 0)."""
    s = float(np.std(values)) if len(values) else 0.0
    return s if s > 1e-12 else 1.0


class Stacked(nn.Module):
    """LSTM or GRU layers of possibly different widths, batch-first, dropout between them.

    One torch RNN per layer (rather than ``num_layers``) so each layer can have its own size,
    as in the common ``LSTM(64) -> LSTM(32)`` stacks; the ONNX graph gets one RNN node per layer.
    """

    def __init__(self, cell: str, input_size: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        cls = nn.LSTM if cell == "lstm" else nn.GRU
        sizes = (input_size, *hidden)
        self.layers = nn.ModuleList(
            cls(a, b, batch_first=True) for a, b in itertools.pairwise(sizes)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time, input]`` -> ``[batch, time, hidden[-1]]``."""
        for i, layer in enumerate(self.layers):
            if i:
                x = self.drop(x)
            x, _ = layer(x)
        return x


class SeriesRNN(nn.Module):
    """Raw look-back ``[batch, time, 1]`` -> next value, standardised (``Predictor`` un-scales).

    Inside: the window is brought to ``window`` steps (shorter inputs are padded with their
    first value, longer ones keep their most recent steps) and transformed; the recurrent
    layers read its one-step changes scaled by their training spread. The forecast is the last
    value plus a predicted change: the linear path's plus the recurrent layers' correction.
    Predicting a change rather than a level lets a trending series leave the training range;
    a bounded recurrent state cannot extrapolate a level.
    """

    mean: torch.Tensor
    std: torch.Tensor
    step: torch.Tensor
    change: torch.Tensor
    level_mean: torch.Tensor
    level_std: torch.Tensor

    def __init__(self, config: RNNConfig, window: int, scales: SeriesScales) -> None:
        super().__init__()
        if config.transform == "auto" or config.linear == "auto" or config.levels is None:
            raise ValueError("resolve transform, linear path and levels before building")
        self.config = config
        self.window = int(window)
        self._levels_in = bool(config.levels)
        for name in ("mean", "std", "step", "change", "level_mean", "level_std"):
            self.register_buffer(name, torch.tensor(float(getattr(scales, name))))
        self.rnn = Stacked(config.cell, 1 + self._levels_in, config.hidden, config.dropout)
        self.out = nn.Linear(config.hidden[-1], 1)
        self.ar: nn.Linear | None = None
        if config.linear != "none":
            assert config.order is not None and config.order >= 1
            self.order = min(config.order, self.window - (config.linear == "differences"))
            self.ar = nn.Linear(self.order, 1)
            # The correction starts at zero, so the network starts as the fitted linear model.
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def _to_work(self, x: torch.Tensor) -> torch.Tensor:
        """Raw values -> the working scale."""
        if self.config.transform == "sqrt":
            return torch.sqrt(torch.clamp(x, min=0.0))
        return x

    def _from_work(self, v: torch.Tensor) -> torch.Tensor:
        """Working scale -> raw values."""
        if self.config.transform == "sqrt":
            return torch.square(torch.clamp(v, min=0.0))
        return v

    def _fixed(self, x: torch.Tensor) -> torch.Tensor:
        """Exactly ``window`` steps: pad on the left with the first value, keep the latest.

        A padded step has a zero change, so it adds nothing to a linear path on changes.
        """
        pad = x[:, :1, :].repeat(1, self.window, 1)
        return torch.cat([pad, x], dim=1)[:, -self.window :, :]

    def _linear_inputs(self, v: torch.Tensor, changes: torch.Tensor) -> torch.Tensor:
        """The linear path's inputs: the last ``order`` scaled changes or standardised levels."""
        if self.config.linear == "levels":
            return (v[:, -self.order :, 0] - self.level_mean) / self.level_std
        return changes[:, -self.order :, 0]

    def _linear_change(self, v: torch.Tensor, lin: torch.Tensor) -> torch.Tensor:
        """The linear path's forecast as a scaled change from the last value ``[batch, 1]``."""
        assert self.ar is not None
        rate = LINEAR_RATE
        if self.config.linear == "levels":
            level = self.level_mean + self.level_std * (rate * self.ar(lin))
            return (level - v[:, -1, :]) / self.step
        return rate * self.ar(lin)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Raw ``[batch, time, 1]`` -> ``[batch, 1]`` next value in the target's units."""
        v = self._to_work(self._fixed(x))
        changes = (v[:, 1:, :] - v[:, :-1, :]) / self.step
        seq = changes
        if self._levels_in:
            seq = torch.cat([changes, (v[:, 1:, :] - self.level_mean) / self.level_std], dim=2)
        u = self.out(self.rnn(seq)[:, -1, :])
        if self.ar is not None:
            u = u + self._linear_change(v, self._linear_inputs(v, changes))
        return self._from_work(v[:, -1, :] + self.step * u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time, 1]`` -> ``[batch, 1]`` next value, standardised."""
        return (self.predict(x) - self.mean) / self.std

    @torch.no_grad()
    def init_linear(self, x: np.ndarray, y: np.ndarray) -> None:
        """Fit the linear path by least squares on training windows ``[n, window, 1]``.

        The fit is in the path's own units (scaled changes or standardised levels, working
        scale); with an intercept the solution is the same linear forecast as a fit on raw
        values, so the network starts where the classical autoregression of that order is.
        """
        if self.ar is None:
            return
        v = self._to_work(self._fixed(torch.from_numpy(np.ascontiguousarray(x, np.float32))))
        changes = (v[:, 1:, :] - v[:, :-1, :]) / self.step
        lin = self._linear_inputs(v, changes).double()
        target = self._to_work(torch.from_numpy(np.asarray(y, np.float32))).double()
        if self.config.linear == "levels":
            b = (target - self.level_mean) / self.level_std
        else:
            b = (target - v[:, -1, 0].double()) / self.step
        coef = least_squares(lin.numpy(), b.numpy())
        rate = LINEAR_RATE
        self.ar.weight.copy_(torch.from_numpy(coef[1:]).float()[None, :] / rate)
        self.ar.bias.copy_(torch.from_numpy(coef[:1]).float() / rate)


class SeriesStep(nn.Module):
    """Training view of a ``SeriesRNN``: the forecast's change from the last value, in units of
    the training spread of one-step changes.

    The loss is then on the target's own scale (what RMSE scores) and of order one for any
    series, whether it trends (co2) or not, and whatever transform the network works in.
    """

    def __init__(self, net: SeriesRNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw ``[batch, time, 1]`` -> ``[batch, 1]`` scaled change."""
        return (self.net.predict(x) - x[:, -1, :]) / self.net.change
