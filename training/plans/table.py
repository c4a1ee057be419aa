"""Tables: an FNN on standardised features; regression learns standardised targets."""

from __future__ import annotations

import torch

from training.data import DataSplit
from training.models import FNN, FNNConfig, Predictor
from training.plans import Plan, classifier_loss, mse, overrides
from training.spec import TrainSpec


def plan(spec: TrainSpec, data: DataSplit) -> Plan:
    """FNN with the training split's feature statistics inside the graph."""
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    x = torch.from_numpy(data.x_train)
    arch = overrides(spec, hidden="hidden", dropout="dropout")
    if data.task == "regression":
        y_mean, y_std = float(data.y_train.mean()), float(data.y_train.std() or 1.0)
        net = FNN(
            FNNConfig(data.x_train.shape[1], 1, activation=spec.activation, **arch), mean, std
        )
        y = torch.from_numpy((data.y_train - y_mean) / y_std).float()

        def val_loss(z: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
            return mse(z, (yv - y_mean) / y_std)

        return Plan(Predictor(net, data.task, y_mean, y_std), net, mse, val_loss, x, y)
    loss, n_out = classifier_loss(data.task)
    config = FNNConfig(
        data.x_train.shape[1], n_out or data.n_classes, activation=spec.activation, **arch
    )
    net = FNN(config, mean, std)
    return Plan(Predictor(net, data.task), net, loss, loss, x, torch.from_numpy(data.y_train))
