"""Convolutional network for images of any size with 1 or 3 channels; pixel scaling inside.

Every architectural choice is a ``CNNConfig`` field. The defaults that depend on the image size
(how many conv blocks, how wide the dense head) are decided in ``size_defaults`` and nowhere
else; ``CNNConfig.for_images`` fills them in for whatever the spec left unset and checks that the
rest fits the image, raising ``SpecError`` that names the command-line flag at fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.errors import SpecError
from training.spec import POOLS

__all__ = ["CNN", "CNNConfig", "random_affine", "size_defaults"]


@dataclass
class CNNConfig:
    """Conv blocks (conv -> [batch norm] -> ReLU -> [2x2 pool]), then dense layers, then logits.

    ``channels`` holds one width per conv block, ``dense`` one width per hidden dense layer.
    ``augment`` applies a small random affine warp (rotation, scale, translation) to each training
    image; it never runs in eval mode, so validation, test and the exported graph see the
    images as they are.
    """

    in_channels: int
    height: int
    width: int
    n_outputs: int
    channels: tuple[int, ...]  # no default here: it depends on the image (``size_defaults``)
    dense: tuple[int, ...]
    kernel: int
    pool: str = "max"
    dropout: float = 0.25
    batch_norm: bool = True
    augment: bool = True
    pixel_max: float = 255.0
    # Augmentation strength: max rotation (degrees), scale change and shift (fraction of size).
    # Chosen on validation loss (mnist seed 42, digits seeds 42/1/2): +-5 deg / 5 % / 5 % beat
    # +-10 deg / 10 % / 10 % on every run (mnist 0.577 vs 0.597; digits 0.54 vs 0.59-0.60).
    max_rotation: float = 5.0
    max_scale: float = 0.05
    max_shift: float = 0.05

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.dense = tuple(self.dense)
        self.check()

    @classmethod
    def for_images(
        cls, in_channels: int, height: int, width: int, n_outputs: int, **arch: Any
    ) -> CNNConfig:
        """A config for ``[in_channels, height, width]`` images: ``arch`` over size defaults."""
        return cls(
            in_channels=in_channels,
            height=height,
            width=width,
            n_outputs=n_outputs,
            **{**size_defaults(height, width), **arch},
        )

    def check(self) -> None:
        """Raise ``SpecError`` naming the flag when a choice cannot work on these images.

        Sizes that are zero or negative never get here (``TrainSpec.validate`` rejects them);
        what is left are limits only the image size sets.
        """
        side = min(self.height, self.width)
        size = f"{self.height}x{self.width}"
        if self.pool not in POOLS:
            raise SpecError(f"--pool {self.pool!r} is unknown; expected one of: {', '.join(POOLS)}")
        if self.kernel > side:
            raise SpecError(
                f"--kernel {self.kernel} is larger than the {size} images; "
                f"use a kernel of at most {side} (3 is usual)"
            )
        if self.pool != "none" and side >> len(self.channels) < 1:
            most = int(math.log2(side))
            raise SpecError(
                f"--conv {','.join(map(str, self.channels))} has {len(self.channels)} pooling "
                f"blocks, which halve the {size} images to nothing; use at most {most} "
                f"conv sizes for these images, or --pool none"
            )
        if not 0 <= self.dropout < 1:
            raise SpecError(f"--dropout must be in [0, 1), e.g. 0.2; got {self.dropout!r}")

    def feature_size(self) -> tuple[int, int]:
        """Height and width of the last conv block's map (each pool halves, rounding down)."""
        blocks = 0 if self.pool == "none" else len(self.channels)
        return self.height >> blocks, self.width >> blocks


def size_defaults(height: int, width: int) -> dict[str, Any]:
    """The architecture defaults that depend on the image size; the only place they are decided.

    Blocks: enough 2x2 pools to bring the map to about 7x7 (28x28 -> 2, 64x64 -> 3, 8x8 -> 2),
    widths doubling from 32 and capped at 128; the dense head is 128 wide; 3x3 kernels. On
    mnist (seed 42, a 15-epoch cosine run, batch norm, augmented) 32/64 reached 0.984
    validation accuracy where 16/32 reached 0.976, at about 2.5x the time per epoch, which the
    time budget allows.
    """
    shortest = min(height, width)
    kernel = min(3, shortest)  # 3x3 unless the image is thinner than that
    if shortest < 2:  # a pool would leave nothing of a 1-pixel side
        return {"channels": (32,), "dense": (128,), "kernel": kernel, "pool": "none"}
    blocks = min(max(2, round(math.log2(max(height, width) / 7))), 5, int(math.log2(shortest)))
    channels = tuple(min(32 * 2**i, 128) for i in range(blocks))
    return {"channels": channels, "dense": (128,), "kernel": kernel}


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
        for out in config.channels:
            # A bias before batch norm is cancelled by its mean subtraction, so it is left out.
            conv = nn.Conv2d(c, out, config.kernel, padding="same", bias=not config.batch_norm)
            blocks.append(conv)
            if config.batch_norm:
                blocks.append(nn.BatchNorm2d(out))
            blocks.append(nn.ReLU())
            if config.pool == "max":
                blocks.append(nn.MaxPool2d(2))
            elif config.pool == "avg":
                blocks.append(nn.AvgPool2d(2))
            c = out
        self.features = nn.Sequential(*blocks)
        h, w = config.feature_size()
        head: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for size in config.dense:
            head += [nn.Dropout(config.dropout), nn.Linear(width, size), nn.ReLU()]
            width = size
        head += [nn.Dropout(config.dropout), nn.Linear(width, config.n_outputs)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, c, h, w]`` raw pixels -> ``[batch, n_outputs]`` logits."""
        if self.training and self.config.augment:
            cfg = self.config
            x = random_affine(x, cfg.max_rotation, cfg.max_scale, cfg.max_shift)
        x = (x * self.scale - self.mean) / self.std
        return self.head(self.features(x))


def random_affine(
    x: torch.Tensor, max_rotation: float, max_scale: float, max_shift: float
) -> torch.Tensor:
    """Warp each image by its own small random rotation, scale and shift (bilinear sampling).

    Fractions of the image size, so the same setting suits 8x8 and 64x64 images; pixels from
    outside the frame repeat the border (black for digits, the edge colour for photos, never a
    made-up frame). Uses the global (CPU) torch RNG wherever ``x`` is, so a seeded run draws the
    same warps on a GPU as on the CPU; only the small ``[n, 2, 3]`` matrices move to ``x``'s device.
    """
    n = x.shape[0]
    angle = (torch.rand(n) * 2 - 1) * math.radians(max_rotation)
    scale = 1 + (torch.rand(n) * 2 - 1) * max_scale
    shift = (torch.rand(n, 2) * 2 - 1) * (2 * max_shift)  # grid coordinates span 2 per side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
