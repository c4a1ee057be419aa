"""The next-word model for text: embedding -> stacked LSTM/GRU -> logits over the vocabulary."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["AllSteps", "TextRNN", "TextRNNConfig"]

State = list[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TextRNNConfig:
    """A next-word model sized for a few hundred thousand words on a 2-core CPU.

    Small corpora overfit long before they underfit, so the defaults lean on regularisation:
    the output layer shares the embedding's weights (``tied``, which also halves the
    parameters), and ``dropout`` masks that stay fixed along the sequence are applied to the
    embeddings, between layers and before the output (one rate: ``--dropout 0`` means none).
    ``embed=None`` means the last hidden size, which is what tying needs without a projection.
    ``pointer`` adds a cache over the window's own words (see ``_Pointer``).
    """

    cell: str
    vocab_size: int
    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.4
    embed: int | None = None
    tied: bool = True
    pointer: bool = True

    @property
    def embed_size(self) -> int:
        """The embedding width actually built."""
        return self.embed if self.embed is not None else self.hidden[-1]


def _locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence, shared by every step (variational dropout).

    A fresh mask per step lets the recurrence average the noise away and regularises less; one
    mask per sequence is what keeps a small-corpus LSTM from memorising (Gal & Ghahramani).
    """
    if not training or p <= 0.0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - p) / (1.0 - p)
    return x * mask


class TextRNN(nn.Module):
    """Token ids ``[batch, time]`` -> embedding -> RNN -> logits over the vocabulary.

    ``forward`` starts from a zero state and returns the last step's logits (what the contract
    exports); ``all_steps`` takes and returns the recurrent state and every step's logits, which
    training uses so each chunk teaches ``time`` predictions and context flows across chunks.
    """

    def __init__(self, config: TextRNNConfig) -> None:
        super().__init__()
        self.config = config
        embed = config.embed_size
        self.embed = nn.Embedding(config.vocab_size, embed)
        cls = nn.LSTM if config.cell == "lstm" else nn.GRU
        sizes = (embed, *config.hidden)
        self.layers = nn.ModuleList(
            cls(a, b, batch_first=True) for a, b in itertools.pairwise(sizes)
        )
        top = config.hidden[-1]
        # Tying needs the output layer's input to be as wide as the embedding.
        self.proj = nn.Linear(top, embed, bias=False) if config.tied and top != embed else None
        self.out = nn.Linear(embed if config.tied else top, config.vocab_size)
        # Small uniform embeddings: with tied weights they are also the output layer, and the
        # default N(0, 1) start gives logits so large that the first epochs only undo them.
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.zeros_(self.out.bias)
        if config.tied:
            self.out.weight = self.embed.weight
        self.pointer = _Pointer(embed if config.tied else top) if config.pointer else None

    def _features(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """``[batch, time]`` -> top-layer features ``[batch, time, out_in]`` and the new state."""
        c, train = self.config, self.training
        h = _locked_dropout(self.embed(x), c.dropout, train)
        new: State = []
        for i, layer in enumerate(self.layers):
            if i:
                h = _locked_dropout(h, c.dropout, train)
            h, s = layer(h, None if state is None else state[i])
            new.append(s)
        h = _locked_dropout(h, c.dropout, train)
        if self.proj is not None:
            h = self.proj(h)
        return h, new

    def all_steps(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``[batch, time]`` -> ``[batch, time, vocab]`` logits and the state after the chunk."""
        h, new = self._features(x, state)
        logits = self.out(h)
        if self.pointer is not None:
            logits = self.pointer(h, h, x, logits)
        return logits, new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, vocab]`` logits of the next token, from a zero state."""
        h, _ = self._features(x, None)
        last = h[:, -1:, :]
        logits = self.out(last)
        if self.pointer is not None:
            logits = self.pointer(last, h, x, logits)
        return logits[:, -1, :]


class _Pointer(nn.Module):
    """A pointer-sentinel cache over the window (Merity et al. 2016; Grave et al. 2016).

    Each earlier position ``i`` of the window offers the word that followed it, ``x[i+1]``,
    keyed by its context ``h[i]``; a query from the current context attends over those keys and
    a learned sentinel, whose weight goes to the ordinary softmax. Repeated phrases (an
    argument name, a term being defined) are then copied from the window rather than learned
    as weights. Returns log-probabilities, which the softmax head turns back into the same
    probabilities, so the exported contract is unchanged.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size, bias=False)
        self.sentinel = nn.Linear(size, 1)
        self.scale = size**-0.5

    def forward(
        self, hq: torch.Tensor, hk: torch.Tensor, x: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        """``hq`` ``[b, q, d]`` queries for the LAST ``q`` steps of ``hk`` ``[b, t, d]``."""
        q_len, t = hq.shape[1], hk.shape[1]
        scores = self.query(hq) @ self.key(hk).transpose(1, 2) * self.scale  # [b, q, t]
        # Query j sits at step t - q + j; key i is usable when i < that step (x[i+1] known).
        steps = torch.arange(t - q_len, t, device=x.device)[:, None]
        usable = torch.arange(t, device=x.device)[None, :] < steps  # [q, t]
        scores = scores.masked_fill(~usable, float("-inf"))
        weights = torch.softmax(torch.cat([scores, self.sentinel(hq)], dim=-1), dim=-1)
        # The word that followed each key position (the last one is never usable).
        follow = torch.cat([x[:, 1:], x[:, -1:]], dim=1)  # [b, t]
        # Each key's weight added onto its word's probability: [b, q, vocab]. A scatter costs
        # b*q*t adds; a one-hot matmul would build [b, t, vocab] (260 MB for a validation batch).
        index = follow[:, None, :].expand(-1, q_len, -1)
        copied = torch.zeros_like(logits).scatter_add(2, index, weights[..., :t])
        mixed = weights[..., t:] * torch.softmax(logits, dim=-1) + copied
        return torch.log(mixed + 1e-8)


def _detach(state: State) -> State:
    return [(s[0].detach(), s[1].detach()) if isinstance(s, tuple) else s.detach() for s in state]


class AllSteps(nn.Module):
    """Training view of a ``TextRNN``: every step's logits, sharing the same parameters.

    With ``stateful`` the state left by one batch starts the next (truncated backpropagation
    through time: gradients stop at the batch boundary), so batch ``k+1`` must hold the chunks
    that follow batch ``k``'s, row for row; the training loop calls ``reset_state`` at each
    epoch start and before validation.
    """

    def __init__(self, net: TextRNN, stateful: bool = False) -> None:
        super().__init__()
        self.net = net
        self.stateful = stateful
        self._state: State | None = None

    def reset_state(self) -> None:
        """Forget the carried state (the next batch starts from zeros)."""
        self._state = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time]`` -> ``[batch, time, vocab]``."""
        state = self._state if self.stateful else None
        if state is not None and _batch_of(state) != x.shape[0]:
            state = None
        logits, new = self.net.all_steps(x, state)
        if self.stateful:
            self._state = _detach(new)
        return logits


def _batch_of(state: State) -> int:
    first = state[0]
    return int((first[0] if isinstance(first, tuple) else first).shape[1])
