"""Convolutional network for images of any size with 1 or 3 channels; pixel scaling inside."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["CNN", "CNNConfig", "default_channels"]


@dataclass
class CNNConfig:
    """Conv blocks (3x3 conv + ReLU, then 2x2 max-pool while the map is big enough), dense head."""

    in_channels: int
    height: int
    width: int
    n_outputs: int
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128
    dropout: float = 0.3
    pixel_max: float = 255.0


def default_channels(height: int, width: int) -> tuple[int, ...]:
    """Enough blocks to bring the feature map to about 7x7 (28x28 -> 2 blocks, 8x8 -> 2)."""
    blocks = max(2, min(5, math.ceil(math.log2(max(height, width) / 7))))
    return tuple(min(32 * 2**i, 128) for i in range(blocks))


class CNN(nn.Module):
    """Raw pixels -> scale to 0..1 and standardise per channel -> conv blocks -> dense -> logits."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: CNNConfig, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.config = config
        c = config.in_channels
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, c, 1, 1))
        self.register_buffer(
            "std",
            torch.as_tensor(np.where(std > 1e-12, std, 1.0), dtype=torch.float32).reshape(
                1, c, 1, 1
            ),
        )
        self.scale = 1.0 / config.pixel_max
        blocks: list[nn.Module] = []
        h, w = config.height, config.width
        for out in config.channels:
            blocks += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            if min(h, w) >= 2:  # tiny maps stop shrinking instead of vanishing
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(c * h * w, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.n_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, c, h, w]`` raw pixels -> ``[batch, n_outputs]`` logits."""
        x = (x * self.scale - self.mean) / self.std
        return self.head(self.features(x))
