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

GRAD_CLIP = 1.0


def plan(spec: TrainSpec, data: DataSplit) -> Plan:
    """Each chunk of ``window`` tokens teaches ``window`` next-word predictions.

    One epoch reads the training text once instead of ``window`` times; the exported graph
    still answers for the last step only, as the contract says.
    """
    assert data.window is not None
    window = data.window
    stream = np.concatenate([data.x_train[0], data.y_train])
    n_chunks = (len(stream) - 1) // window
    usable = stream[: n_chunks * window + 1]
    x = torch.from_numpy(usable[:-1].reshape(n_chunks, window).copy())
    y = torch.from_numpy(usable[1:].reshape(n_chunks, window).copy())
    vocab = len(data.vocabulary)
    config = TextRNNConfig(
        cell=spec.kind,
        vocab_size=vocab,
        **overrides(spec, hidden="hidden", dropout="dropout", embed="embed"),
    )
    net = TextRNN(config)

    def loss(z: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z.reshape(-1, vocab), yb.reshape(-1))

    def val_loss(z: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, yv)

    return Plan(
        Predictor(net, "next-token"), AllSteps(net), loss, val_loss, x, y, grad_clip=GRAD_CLIP
    )
