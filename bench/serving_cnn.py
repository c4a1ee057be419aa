"""The benchmark's CNN: 1x28x28 -> conv(8)->relu->pool->conv(16)->relu->pool->dense(10)->softmax.

Built with onnx.helper (no torch) when the trained ``.neuroserve-bench/mnist-cnn.onnx`` is absent;
same shapes and operators as the trained MNIST CNN, random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_cnn(seed: int = 0) -> onnx.ModelProto:
    """The conv net with pixel scaling inside the graph (raw 0..255 pixels in)."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        data = rng.normal(0, np.sqrt(2 / fan_in), size=shape).astype(np.float32)
        return numpy_helper.from_array(data, name)

    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["x0"]),
        helper.make_node("Conv", ["x0", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
        init("w1", 8, 1, 3, 3),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        init("w2", 16, 8, 3, 3),
        numpy_helper.from_array(np.zeros(16, np.float32), "b2"),
        init("w3", 16 * 7 * 7, 10),
        numpy_helper.from_array(np.zeros(10, np.float32), "b3"),
    ]
    graph = helper.make_graph(
        nodes,
        "mnist_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    for key, value in {
        "task": "multiclass",
        "input_kind": "image",
        "labels": json.dumps([str(i) for i in range(10)]),
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def cnn_path(root: Path, trained: Path) -> tuple[Path, str]:
    """The trained model if present, else a freshly built equivalent under ``root``."""
    if trained.is_file():
        return trained, f"trained ({trained})"
    path = root / "mnist-cnn.onnx"
    path.write_bytes(build_cnn().SerializeToString())
    return path, "built with onnx.helper (no trained .neuroserve-bench/mnist-cnn.onnx)"
