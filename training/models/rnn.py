"""Recurrent networks (LSTM or GRU): a forecaster for series, a next-word model for text."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["RNNConfig", "SeriesRNN", "Stacked", "TextRNN", "TextRNNConfig"]


@dataclass
class RNNConfig:
    """A forecaster: cell type, hidden size per stacked layer, dropout between layers."""

    cell: str  # "lstm" | "gru"
    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0


@dataclass
class TextRNNConfig:
    """A next-word model: the vocabulary-sized output layer dominates the cost, so hidden
    sizes stay moderate; dropout applies to embeddings, between layers and before the output."""

    cell: str
    vocab_size: int
    hidden: tuple[int, ...] = (128,)
    dropout: float = 0.2
    embed: int = 64
    tied: bool = False


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


class TextRNN(nn.Module):
    """Token ids ``[batch, time]`` -> embedding -> RNN -> logits over the vocabulary.

    ``forward`` returns the last step's logits (what the contract exports); ``all_steps``
    returns every step's, which training uses so each window teaches ``time`` predictions.
    """

    def __init__(self, config: TextRNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed)
        self.rnn = Stacked(config.cell, config.embed, config.hidden, config.dropout)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden[-1], config.vocab_size)

    def all_steps(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, time, vocab]`` logits."""
        h = self.rnn(self.drop(self.embed(x)))
        return self.out(self.drop(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, vocab]`` logits of the next token."""
        h = self.rnn(self.drop(self.embed(x)))
        return self.out(self.drop(h[:, -1, :]))


class AllSteps(nn.Module):
    """Training view of a ``TextRNN``: every step's logits, sharing the same parameters."""

    def __init__(self, net: TextRNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, time, vocab]``."""
        return self.net.all_steps(x)
