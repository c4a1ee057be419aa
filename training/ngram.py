"""Interpolated Kneser-Ney n-gram language model, vectorised with numpy.

The text baseline must be the strongest classical model a careful person would fit, yet cheap
enough to run beside every training run: counting is done once with ``np.unique`` over n-grams
encoded as int64 (``sum id * V**j``), and every later lookup is a ``np.searchsorted``. Scoring the
probability of the true next token (what perplexity needs, so what order and discount are tuned
on) is a few vector operations per order; full probability rows over the vocabulary (what top-k
accuracy needs) are built in chunks from the same tables.

The model (Chen & Goodman 1998, interpolated KN with one absolute discount ``D``):

* highest order ``n``: ``P(w|h) = max(c(hw) - D, 0) / c(h) + D * N1+(h .) / c(h) * P_lower(w|h')``
  with raw counts; a context never seen in training falls through to ``P_lower``;
* each lower order uses the same formula with continuation counts ``N1+(. hw)`` (how many
  distinct words precede ``hw``) in place of ``c(hw)``;
* unigrams: continuation counts interpolated with the uniform distribution over the whole
  vocabulary, so every token id has a positive probability and every row sums to 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["KneserNey", "max_order_for"]

_CODE_LIMIT = 2**62  # encoded n-grams must stay below this to fit int64 with room to spare


def max_order_for(vocab_size: int) -> int:
    """The longest n-gram whose int64 code cannot overflow for this vocabulary size."""
    order, span = 1, vocab_size
    while span * vocab_size < _CODE_LIMIT:
        span *= vocab_size
        order += 1
    return order


@dataclass
class _Table:
    """Counts of the n-grams of one length, grouped by context (sorted by code).

    ``codes`` are the sorted n-gram codes, ``counts`` their (raw or continuation) counts;
    ``contexts`` the sorted distinct context codes (the n-gram minus its last word) with, per
    context, the total count, the number of distinct followers and the slice ``[start, end)``
    of its n-grams in ``codes``.
    """

    codes: np.ndarray
    counts: np.ndarray
    contexts: np.ndarray
    totals: np.ndarray
    types: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def build(cls, codes: np.ndarray, counts: np.ndarray, vocab_size: int) -> _Table:
        """Group sorted unique ``codes`` (with their counts) by context."""
        ctx = codes // vocab_size
        contexts, starts, types = np.unique(ctx, return_index=True, return_counts=True)
        totals = np.add.reduceat(counts, starts) if len(codes) else np.zeros(0, np.int64)
        return cls(codes, counts, contexts, totals, types, starts, starts + types)

    def lookup(self, gram: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per query: count of the n-gram, and index/total/types of its context (-1 if unseen)."""
        count = _find(self.codes, gram, self.counts)
        pos = np.searchsorted(self.contexts, context)
        pos = np.minimum(pos, max(len(self.contexts) - 1, 0))
        seen = self.contexts[pos] == context if len(self.contexts) else np.zeros(len(context), bool)
        index = np.where(seen, pos, -1)
        total = np.where(seen, self.totals[pos] if len(self.totals) else 0, 0)
        types = np.where(seen, self.types[pos] if len(self.types) else 0, 0)
        return count, index, total, types


def _find(sorted_codes: np.ndarray, query: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` at the positions of ``query`` in ``sorted_codes``; 0 where absent."""
    if len(sorted_codes) == 0:
        return np.zeros(len(query), dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_codes, query), len(sorted_codes) - 1)
    return np.where(sorted_codes[pos] == query, values[pos], 0)


def _encode(windows: np.ndarray, vocab_size: int) -> np.ndarray:
    """int64 code of each row of token ids (first id most significant)."""
    code = np.zeros(len(windows), dtype=np.int64)
    for j in range(windows.shape[1]):
        code = code * vocab_size + windows[:, j].astype(np.int64)
    return code


class KneserNey:
    """Counts of a training token stream, from which any order ``<= max_order`` is scored.

    Counting does not depend on the discount or the order used, so one instance serves the
    whole validation grid.
    """

    def __init__(self, stream: np.ndarray, vocab_size: int, max_order: int) -> None:
        if max_order < 1:
            raise ValueError(f"max_order must be at least 1, got {max_order}")
        self.vocab_size = int(vocab_size)
        self.max_order = min(int(max_order), max_order_for(self.vocab_size), len(stream))
        stream = np.asarray(stream, dtype=np.int64)
        v = self.vocab_size
        # Raw counts per length 1..max_order.
        raw_codes: list[np.ndarray] = []
        raw_counts: list[np.ndarray] = []
        for k in range(1, self.max_order + 1):
            grams = np.lib.stride_tricks.sliding_window_view(stream, k)
            codes, counts = np.unique(_encode(grams, v), return_counts=True)
            raw_codes.append(codes)
            raw_counts.append(counts)
        # raw[k] / cont[k]: tables of k-grams (index 0 unused).
        self._raw: list[_Table | None] = [None]
        self._cont: list[_Table | None] = [None]
        for k in range(1, self.max_order + 1):
            self._raw.append(_Table.build(raw_codes[k - 1], raw_counts[k - 1], v))
            if k < self.max_order or k == 1:
                # Continuation count of a k-gram: distinct (k+1)-grams that end in it.
                if k < len(raw_codes):
                    suffix = raw_codes[k] % (v**k)
                    codes, counts = np.unique(suffix, return_counts=True)
                else:  # a one-token stream: no bigrams, fall back to raw counts
                    codes, counts = raw_codes[0], raw_counts[0]
                self._cont.append(_Table.build(codes, counts, v))
            else:
                self._cont.append(None)
        uni = self._cont[1]
        assert uni is not None
        self._uni_counts = np.zeros(v, dtype=np.float64)
        self._uni_counts[uni.codes] = uni.counts
        self._uni_total = float(uni.counts.sum())
        self._uni_types = float(len(uni.codes))

    # ------------------------------------------------------------------ scalar scoring

    def _unigram(self, discount: float) -> np.ndarray:
        """Unigram continuation distribution interpolated with uniform: a full row over V."""
        v = self.vocab_size
        if self._uni_total == 0:
            return np.full(v, 1.0 / v)
        p = np.maximum(self._uni_counts - discount, 0.0) / self._uni_total
        return p + discount * self._uni_types / self._uni_total / v

    def _table(self, k: int, order: int) -> _Table:
        """Raw counts at the top order, continuation counts below it."""
        table = self._raw[k] if k == order else self._cont[k]
        assert table is not None
        return table

    def prepare(self, history: np.ndarray, target: np.ndarray, order: int) -> list[tuple]:
        """Count lookups for (history, target) pairs, reusable for every discount.

        ``history`` is ``[n, >= order-1]`` token ids (its last columns are the context).
        """
        order = self._check_order(order, history)
        target = np.asarray(target, dtype=np.int64)
        v = self.vocab_size
        stats: list[tuple] = []
        for k in range(2, order + 1):
            ctx = _encode(history[:, history.shape[1] - (k - 1) :], v)
            gram = ctx * v + target
            count, _, total, types = self._table(k, order).lookup(gram, ctx)
            stats.append((count.astype(np.float64), total.astype(np.float64), types))
        return stats

    def target_probability(
        self, stats: list[tuple], target: np.ndarray, discount: float
    ) -> np.ndarray:
        """P(target | history) for prepared lookups (see ``prepare``)."""
        p = self._unigram(discount)[np.asarray(target, dtype=np.int64)]
        for count, total, types in stats:
            seen = total > 0
            safe = np.where(seen, total, 1.0)
            mixed = np.maximum(count - discount, 0.0) / safe + discount * types / safe * p
            p = np.where(seen, mixed, p)
        return p

    # ------------------------------------------------------------------ full rows

    def probability_rows(
        self, history: np.ndarray, order: int, discount: float, chunk: int = 2048
    ) -> Iterator[np.ndarray]:
        """Full next-token distributions ``[rows, V]``, ``chunk`` histories at a time."""
        order = self._check_order(order, history)
        v = self.vocab_size
        base = self._unigram(discount)
        for lo in range(0, len(history), chunk):
            h = history[lo : lo + chunk]
            n = len(h)
            p = np.repeat(base[None, :], n, axis=0)
            for k in range(2, order + 1):
                table = self._table(k, order)
                ctx = _encode(h[:, h.shape[1] - (k - 1) :], v)
                _, index, total, types = table.lookup(ctx * v, ctx)
                seen = index >= 0
                safe = np.where(seen, total, 1).astype(np.float64)
                gamma = np.where(seen, discount * types / safe, 1.0)
                p *= gamma[:, None]
                rows = np.flatnonzero(seen)
                lengths = table.types[index[rows]]
                row_of = np.repeat(rows, lengths)
                offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
                gram_idx = np.arange(int(lengths.sum())) - offsets
                gram_idx += np.repeat(table.starts[index[rows]], lengths)
                cols = table.codes[gram_idx] % v
                vals = np.maximum(table.counts[gram_idx] - discount, 0.0) / safe[row_of]
                p[row_of, cols] += vals
            yield p

    def _check_order(self, order: int, history: np.ndarray) -> int:
        """An order the counts and the history length support."""
        if not 1 <= order <= self.max_order:
            raise ValueError(f"order must be in 1..{self.max_order}, got {order}")
        if history.ndim != 2 or history.shape[1] < order - 1:
            raise ValueError(f"order {order} needs histories of at least {order - 1} tokens")
        return order
