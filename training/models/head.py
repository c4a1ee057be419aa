"""The exported module: a network plus the task's output head, per docs/contracts.md."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Predictor"]


class Predictor(nn.Module):
    """Raw input -> contract output: probabilities for classifiers, target units for values.

    The network is trained on logits / standardised targets (numerically stabler losses); this
    wrapper is what ``TrainResult.model`` holds and what ``export_onnx`` writes.
    """

    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, net: nn.Module, task: str, y_mean: float = 0.0, y_std: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Turn the network's raw output into the contract's ``[batch, k]`` float32 output."""
        if self.task in ("regression", "forecast"):
            return z * self.y_std + self.y_mean
        if self.task == "binary":
            p = torch.sigmoid(z)
            return torch.cat([1.0 - p, p], dim=1)
        return torch.softmax(z, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw input -> contract output."""
        return self.head(self.net(x))
