"""What the loop trains for each input kind: network, head, losses and training tensors.

One module per input kind (``table``, ``image``, ``series``, ``text``) builds a ``Plan`` from the
spec and the data; ``run.py`` only dispatches and scores. Each family's architecture defaults live
in its config dataclass in ``training/models/``; a plan passes on only what the spec overrides
(``overrides``), so no default is written twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.data import DataSplit
from training.models import Predictor
from training.spec import TrainSpec

__all__ = ["LossFn", "Plan", "classifier_loss", "mse", "overrides", "plan"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Plan:
    """What the loop needs for one task: the module to train, its loss, tensors, validation."""

    predictor: Predictor
    train_module: nn.Module
    loss_fn: LossFn
    val_loss_fn: LossFn
    x: torch.Tensor
    y: torch.Tensor
    grad_clip: float | None = None
    shuffle: bool = True


def overrides(spec: TrainSpec, **names: str) -> dict[str, Any]:
    """Config keyword arguments for the spec fields the user set: ``{config_name: value}``.

    ``names`` maps config field -> spec field (e.g. ``channels="conv"``); fields left ``None`` in
    the spec are left out, so the config dataclass's own default applies.
    """
    return {
        key: getattr(spec, field)
        for key, field in names.items()
        if getattr(spec, field) is not None
    }


def classifier_loss(task: str) -> tuple[LossFn, int | None]:
    """Loss on logits for a classification task; ``None`` outputs means one per class."""
    if task == "binary":
        return (lambda z, y: F.binary_cross_entropy_with_logits(z[:, 0], y.to(z.dtype))), 1
    return F.cross_entropy, None


def mse(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE between ``[batch, 1]`` predictions and 1-D targets (both standardised)."""
    return F.mse_loss(z[:, 0], y)


def plan(spec: TrainSpec, data: DataSplit) -> Plan:
    """Build network, head, loss and training tensors for the data's input kind and task."""
    from training.plans import image, series, table, text

    builders: dict[str, Callable[[TrainSpec, DataSplit], Plan]] = {
        "table": table.plan,
        "image": image.plan,
        "series": series.plan,
        "text": text.plan,
    }
    return builders[data.input_kind](spec, data)
