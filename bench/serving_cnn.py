"""The benchmark CNN: the MNIST CNN `neuroserve train cnn --data mnist` exports, layer for layer.

1x28x28 raw pixels -> scale, standardise -> conv(16)->relu->pool -> conv(32)->relu->pool ->
dense(64)->relu -> dense(10)->softmax: the operators and shapes of the trained model's ONNX graph
(training/models/cnn.py with its MNIST defaults), built with onnx.helper (no torch) and random
weights, which cost the same to run. The trained ``.neuroserve-bench/mnist-cnn.onnx`` is used
instead when present.
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
        helper.make_node("Sub", ["x0", "mean"], ["x1"]),
        helper.make_node("Div", ["x1", "std"], ["x2"]),
        helper.make_node("Conv", ["x2", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w4", "b4"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
        numpy_helper.from_array(np.full((1, 1, 1, 1), 0.1307, np.float32), "mean"),
        numpy_helper.from_array(np.full((1, 1, 1, 1), 0.3081, np.float32), "std"),
        init("w1", 16, 1, 3, 3),
        numpy_helper.from_array(np.zeros(16, np.float32), "b1"),
        init("w2", 32, 16, 3, 3),
        numpy_helper.from_array(np.zeros(32, np.float32), "b2"),
        init("w3", 64, 32 * 7 * 7),
        numpy_helper.from_array(np.zeros(64, np.float32), "b3"),
        init("w4", 10, 64),
        numpy_helper.from_array(np.zeros(10, np.float32), "b4"),
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
