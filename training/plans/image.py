"""Images: a CNN with per-channel pixel standardisation computed on the training images."""

from __future__ import annotations

import torch

from training.data import DataSplit
from training.models import CNN, CNNConfig, Predictor
from training.plans import Plan, classifier_loss, overrides
from training.spec import TrainSpec


def plan(spec: TrainSpec, data: DataSplit) -> Plan:
    """CNN sized for the images; every architecture field the spec sets overrides the default.

    ``CNNConfig.for_images`` raises ``SpecError`` naming the flag when a setting cannot fit
    these images (a kernel larger than the image, more pooling blocks than its size allows).
    """
    pixel_max = data.pixel_max or 255.0
    scaled = data.x_train / pixel_max
    mean, std = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))
    _, c, h, w = data.x_train.shape
    loss, n_out = classifier_loss(data.task)
    config = CNNConfig.for_images(
        c,
        h,
        w,
        n_out or data.n_classes,
        pixel_max=pixel_max,
        **overrides(
            spec,
            channels="conv",
            kernel="kernel",
            pool="pool",
            dense="dense",
            dropout="dropout",
            batch_norm="batch_norm",
            augment="augment",
        ),
    )
    net = CNN(config, mean, std)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    return Plan(Predictor(net, data.task), net, loss, loss, x, y)
