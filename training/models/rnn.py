"""Recurrent networks (LSTM or GRU): stacked layers and the forecaster for series."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["RNNConfig", "SeriesRNN", "Stacked"]


@dataclass
class RNNConfig:
    """A forecaster: cell type, hidden size per stacked layer, dropout between layers."""

    cell: str  # "lstm" | "gru"
    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0


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
    """Raw look-back ``[batch, time, 1]`` -> standardise -> RNN -> last state -> scaled forecast.

    The same ``mean``/``std`` scale inputs here and un-scale the output in ``Predictor``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: RNNConfig, mean: float, std: float) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std) if std > 1e-12 else 1.0))
        self.rnn = Stacked(config.cell, 1, config.hidden, config.dropout)
        self.out = nn.Linear(config.hidden[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time, 1]`` -> ``[batch, 1]`` next value in standardised units.

        The network predicts the change from the last value, which is added back: a trending
        series (co2) leaves the training range on the test split, and a bounded recurrent state
        cannot extrapolate a level, but it can predict a step.
        """
        z = (x - self.mean) / self.std
        h = self.rnn(z)
        return z[:, -1, :] + self.out(h[:, -1, :])
