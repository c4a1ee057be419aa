"""Recurrent networks (LSTM or GRU): a forecaster for series, a next-word model for text."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["RNNConfig", "SeriesRNN", "TextRNN"]


@dataclass
class RNNConfig:
    """Cell type and sizes; ``vocab_size``/``embed`` only matter for text."""

    cell: str  # "lstm" | "gru"
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0  # between stacked layers (torch ignores it for one layer)
    vocab_size: int = 0
    embed: int = 64


def _rnn(config: RNNConfig, input_size: int) -> nn.Module:
    """A batch-first LSTM or GRU from the config."""
    cls = nn.LSTM if config.cell == "lstm" else nn.GRU
    return cls(
        input_size,
        config.hidden,
        num_layers=config.layers,
        batch_first=True,
        dropout=config.dropout if config.layers > 1 else 0.0,
    )


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
        self.rnn = _rnn(config, 1)
        self.out = nn.Linear(config.hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time, 1]`` -> ``[batch, 1]`` next value in standardised units.

        The network predicts the change from the last value, which is added back: a trending
        series (co2) leaves the training range on the test split, and a bounded recurrent state
        cannot extrapolate a level, but it can predict a step.
        """
        z = (x - self.mean) / self.std
        h, _ = self.rnn(z)
        return z[:, -1, :] + self.out(h[:, -1, :])


class TextRNN(nn.Module):
    """Token ids ``[batch, time]`` -> embedding -> RNN -> logits over the vocabulary.

    ``forward`` returns the last step's logits (what the contract exports); ``all_steps``
    returns every step's, which training uses so each window teaches ``time`` predictions.
    """

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed)
        self.rnn = _rnn(config, config.embed)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden, config.vocab_size)

    def all_steps(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, time, vocab]`` logits."""
        h, _ = self.rnn(self.drop(self.embed(x)))
        return self.out(self.drop(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, vocab]`` logits of the next token."""
        h, _ = self.rnn(self.drop(self.embed(x)))
        return self.out(self.drop(h[:, -1, :]))


class AllSteps(nn.Module):
    """Training view of a ``TextRNN``: every step's logits, sharing the same parameters."""

    def __init__(self, net: TextRNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, time, vocab]``."""
        return self.net.all_steps(x)
