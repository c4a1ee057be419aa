"""The next-word model for text: embedding -> stacked LSTM/GRU -> logits over the vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.rnn import Stacked

__all__ = ["AllSteps", "TextRNN", "TextRNNConfig"]


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
