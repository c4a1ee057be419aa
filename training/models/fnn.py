"""Feed-forward network for tables, with feature standardisation inside the graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["FNN", "FNNConfig", "make_activation"]


@dataclass
class FNNConfig:
    """Shape of the network; ``n_outputs`` is 1 for regression and binary, k for k classes."""

    n_features: int
    n_outputs: int
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    dropout: float = 0.2


def make_activation(name: str) -> nn.Module:
    """The activation layer for a name from ``training.spec.ACTIVATIONS``."""
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    return table[name]()


class FNN(nn.Module):
    """Standardise raw features with training statistics, then an MLP to logits / values."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: FNNConfig, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.config = config
        # A constant feature has std 0; dividing by 1 keeps it at 0 instead of NaN.
        safe_std = np.where(std > 1e-12, std, 1.0)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("std", torch.as_tensor(safe_std, dtype=torch.float32).reshape(1, -1))
        layers: list[nn.Module] = []
        width = config.n_features
        for h in config.hidden:
            layers += [nn.Linear(width, h), make_activation(config.activation)]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = h
        layers.append(nn.Linear(width, config.n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, n_features]`` raw -> ``[batch, n_outputs]`` logits or scaled values."""
        return self.net((x - self.mean) / self.std)
