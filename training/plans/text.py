"""Text: a next-word RNN trained on every step of consecutive chunks of the training text."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.data import DataSplit
from training.models import Predictor, TextRNN, TextRNNConfig
from training.models.text import AllSteps
from training.plans import Plan, overrides
from training.spec import TrainSpec

GRAD_CLIP = 0.5  # max global gradient norm (AWD-LSTM clips at 0.25; not tuned here)
STATEFUL = True  # carry the state across consecutive chunks (truncated BPTT)
UNIGRAM_BIAS = True  # output bias starts at log unigram frequencies


def _streams(stream: np.ndarray, streams: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the token stream into ``streams`` parallel streams read ``window`` tokens at a time.

    Row ``k * streams + b`` holds chunk ``k`` of stream ``b``, so a batch of ``streams`` rows in
    order continues, row for row, the chunks of the batch before it. Targets are the inputs
    shifted by one token.
    """
    length = (len(stream) - 1) // streams
    n_chunks = length // window
    used = n_chunks * window
    starts = np.arange(streams) * length
    idx = starts[:, None] + np.arange(used)[None, :]  # [streams, used]
    x = stream[idx].reshape(streams, n_chunks, window).transpose(1, 0, 2)
    y = stream[idx + 1].reshape(streams, n_chunks, window).transpose(1, 0, 2)
    flat = (n_chunks * streams, window)
    return (
        torch.from_numpy(np.ascontiguousarray(x).reshape(flat)),
        torch.from_numpy(np.ascontiguousarray(y).reshape(flat)),
    )


def plan(spec: TrainSpec, data: DataSplit) -> Plan:
    """Each chunk of ``window`` tokens teaches ``window`` next-word predictions.

    One epoch reads the training text once instead of ``window`` times. Training is stateful
    when the text is long enough for ``batch_size`` parallel streams of at least two chunks:
    each prediction then sees the words before its chunk too, as it would reading on. The
    exported graph still answers from the ``window`` words it is given, for the last step only,
    as the contract says; validation scores exactly that.
    """
    assert data.window is not None and spec.batch_size is not None
    window = data.window
    stream = np.concatenate([data.x_train[0], data.y_train])
    streams = spec.batch_size
    stateful = STATEFUL and (len(stream) - 1) // streams >= 2 * window
    if stateful:
        x, y = _streams(stream, streams, window)
    else:
        x, y = _streams(stream, 1, window)
    vocab = len(data.vocabulary)
    config = TextRNNConfig(
        cell=spec.kind,
        vocab_size=vocab,
        **overrides(
            spec, hidden="hidden", dropout="dropout", embed="embed", tied="tied", pointer="pointer"
        ),
    )
    net = TextRNN(config)
    if UNIGRAM_BIAS:
        # Start from the unigram distribution rather than uniform: the first epochs then learn
        # context instead of word frequencies (add-one counts keep unseen ids finite).
        counts = np.bincount(stream, minlength=vocab).astype(np.float64) + 1.0
        with torch.no_grad():
            net.out.bias.copy_(torch.from_numpy(np.log(counts / counts.sum())))

    def loss(z: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z.reshape(-1, vocab), yb.reshape(-1))

    def val_loss(z: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, yv)

    return Plan(
        Predictor(net, "next-token"),
        AllSteps(net, stateful=stateful),
        loss,
        val_loss,
        x,
        y,
        grad_clip=GRAD_CLIP,
        shuffle=not stateful,
    )
