"""Images: a CNN with per-channel pixel standardisation computed on the training images."""

from __future__ import annotations

import torch

from training.data import DataSplit
from training.models import CNN, CNNConfig, Predictor
from training.models.cnn import default_channels, default_hidden, default_shift
from training.plans import Plan, classifier_loss, overrides
from training.spec import TrainSpec


def plan(spec: TrainSpec, data: DataSplit) -> Plan:
    """CNN sized for the images unless the spec says otherwise."""
    pixel_max = data.pixel_max or 255.0
    scaled = data.x_train / pixel_max
    mean, std = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))
    _, c, h, w = data.x_train.shape
    loss, n_out = classifier_loss(data.task)
    arch = {
        "channels": default_channels(h, w),
        "hidden": default_hidden(h, w),
        "shift": default_shift(h, w),
        **overrides(spec, channels="conv", dropout="dropout"),
    }
    config = CNNConfig(
        in_channels=c,
        height=h,
        width=w,
        n_outputs=n_out or data.n_classes,
        pixel_max=pixel_max,
        **arch,
    )
    net = CNN(config, mean, std)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    return Plan(Predictor(net, data.task), net, loss, loss, x, y)
