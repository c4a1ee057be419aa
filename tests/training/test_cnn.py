"""The CNN as configuration: spec fields shape the network, bad shapes fail by flag, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from training import SpecError, TrainSpec, export_onnx, train
from training.models.cnn import CNN, CNNConfig, random_affine, size_defaults


def _rgb_folder(root: Path, n_per_class: int = 24, side: int = 64) -> Path:
    """Two classes of 64x64 RGB PNGs a CNN can tell apart: red discs vs. blue squares on noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    for cls in ("disc", "square"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            img = rng.integers(0, 80, (side, side, 3)).astype(np.uint8)
            cy, cx = rng.integers(side // 4, 3 * side // 4, 2)
            r = int(rng.integers(side // 8, side // 5))
            if cls == "disc":
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                img[mask] = (220, 40, 40)
            else:
                mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
                img[mask] = (40, 40, 220)
            Image.fromarray(img, mode="RGB").save(root / cls / f"{i}.png")
    return root


def _config(h: int = 28, w: int = 28, **arch: object) -> CNNConfig:
    return CNNConfig.for_images(1, h, w, 10, **arch)


def test_beginners_example_trains_and_exports_with_parity(tmp_path: Path) -> None:
    """Conv2D 32 -> pool -> Conv2D 64 -> pool -> Dense 128 -> sigmoid on 64x64 RGB, as written."""
    folder = _rgb_folder(tmp_path / "shapes")
    result = train(
        TrainSpec("cnn", str(folder), conv=(32, 64), dense=(128,), epochs=2, batch_size=16)
    )
    net = result.model.net
    assert isinstance(net, CNN)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    pools = [m for m in net.features if isinstance(m, nn.MaxPool2d)]
    dense = [m for m in net.head if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64] and len(pools) == 2
    assert [(d.in_features, d.out_features) for d in dense] == [(64 * 16 * 16, 128), (128, 1)]
    assert result.data.task == "binary" and result.test_output.shape[1] == 2
    assert result.architecture["channels"] == (32, 64)
    report = export_onnx(result, tmp_path / "shapes.onnx")
    assert report.max_diff <= 1e-4
    graph = onnx.load(str(tmp_path / "shapes.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("Conv") == 2 and "Sigmoid" in ops
    assert "GridSample" not in ops  # augmentation is training-only


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TrainSpec("cnn", "digits", kernel=9), r"--kernel 9 is larger than the 8x8 images"),
        (TrainSpec("cnn", "digits", conv=(8, 8, 8, 8)), r"--conv 8,8,8,8 has 4 pooling blocks"),
    ],
)
def test_settings_that_do_not_fit_the_image_name_their_flag(spec: TrainSpec, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        train(spec)
    assert "\n" not in str(err.value)


def test_too_many_blocks_are_fine_without_pooling() -> None:
    config = _config(8, 8, channels=(4, 4, 4, 4), pool="none")
    assert config.feature_size() == (8, 8)
    assert CNN(config, np.zeros(1), np.ones(1))(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_spec_fields_shape_the_network() -> None:
    spec = TrainSpec(
        "cnn",
        "digits",
        conv=(8, 16),
        kernel=5,
        pool="avg",
        dense=(32, 16),
        dropout=0.1,
        batch_norm=False,
        augment=False,
        epochs=1,
        limit=200,
    )
    net = train(spec).model.net
    assert isinstance(net, CNN)
    layers = list(net.features)
    assert [type(m) for m in layers] == [nn.Conv2d, nn.ReLU, nn.AvgPool2d] * 2
    assert all(m.kernel_size == (5, 5) for m in layers if isinstance(m, nn.Conv2d))
    widths = [m.out_features for m in net.head if isinstance(m, nn.Linear)]
    assert widths == [32, 16, 10]
    assert all(m.p == 0.1 for m in net.head if isinstance(m, nn.Dropout))
    assert not net.config.augment


@pytest.mark.parametrize("side", [2, 3, 5, 8, 9, 16, 28, 32, 64, 100, 224])
def test_size_defaults_never_shrink_the_map_to_nothing(side: int) -> None:
    config = _config(side, side + 3)
    h, w = config.feature_size()
    assert h >= 1 and w >= 1
    assert CNN(config, np.zeros(1), np.ones(1))(torch.zeros(2, 1, side, side + 3)).shape == (2, 10)


def test_size_defaults_bring_the_map_to_about_7x7() -> None:
    assert size_defaults(28, 28)["channels"] == (32, 64)
    assert size_defaults(8, 8)["channels"] == (32, 64)
    assert size_defaults(64, 64)["channels"] == (32, 64, 128)
    assert size_defaults(1, 30)["pool"] == "none"


def test_augmentation_only_in_training() -> None:
    torch.manual_seed(0)
    net = CNN(_config(), np.zeros(1), np.ones(1))
    x = torch.rand(4, 1, 28, 28) * 255
    net.eval()
    assert torch.equal(net(x), net(x))
    warped = random_affine(x, 10.0, 0.1, 0.1)
    assert warped.shape == x.shape and not torch.allclose(warped, x)
    assert torch.allclose(random_affine(x, 0.0, 0.0, 0.0), x, atol=1e-3)
