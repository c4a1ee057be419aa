"""Series: a recurrent forecaster on standardised values; the same statistics un-scale it."""

from __future__ import annotations

import numpy as np
import torch

from training.data import DataSplit
from training.models import Predictor, RNNConfig, SeriesRNN
from training.plans import Plan, mse, overrides
from training.spec import TrainSpec

GRAD_CLIP = 1.0


def plan(spec: TrainSpec, data: DataSplit) -> Plan:
    """Forecaster trained on every look-back window of the training stretch."""
    values = np.concatenate([data.x_train[0, :, 0], data.y_train])  # the training stretch
    mean, std = float(values.mean()), float(values.std() or 1.0)
    config = RNNConfig(cell=spec.kind, **overrides(spec, hidden="hidden", dropout="dropout"))
    net = SeriesRNN(config, mean, std)
    y = torch.from_numpy((data.y_train - mean) / std).float()

    def val_loss(z: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        return mse(z, (yv - mean) / std)

    return Plan(
        Predictor(net, "forecast", mean, std),
        net,
        mse,
        val_loss,
        torch.from_numpy(data.x_train),
        y,
        grad_clip=GRAD_CLIP,
    )
