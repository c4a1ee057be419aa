"""Tiny ONNX models built with onnx.helper (no torch) covering what the server must handle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 would write 14 by default

CLASS_LABELS = ["setosa", "versicolor", "virginica"]
VOCAB = ["<pad>", "<unk>", "the", "cat", "sat", "on", "mat", "dog", "ran", "."]
TOKEN_PATTERN = r"[a-z]+|[^\sa-z]"

RNG = np.random.default_rng(0)
CLASSIFIER_W = RNG.normal(size=(4, 3)).astype(np.float32)
CLASSIFIER_B = RNG.normal(size=(3,)).astype(np.float32)
REGRESSOR_W = RNG.normal(size=(3, 1)).astype(np.float32)
#: The ``lookup`` model's table: row ``i`` is what index ``i`` answers.
LOOKUP_TABLE = np.arange(8, dtype=np.float32).reshape(4, 2)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
    metadata: dict[str, str] | None = None,
    name: str = "g",
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers or [])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def classifier(scale: float = 1.0) -> onnx.ModelProto:
    """[batch, 4] FP32 -> softmax [batch, 3]; ``scale`` changes the weights (a 'new version')."""
    w = numpy_helper.from_array(CLASSIFIER_W * scale, "W")
    b = numpy_helper.from_array(CLASSIFIER_B, "B")
    return _model(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        [w, b],
        {"task": "multiclass", "input_kind": "table", "labels": json.dumps(CLASS_LABELS)},
    )


def classifier_reference(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    logits = x.astype(np.float32) @ (CLASSIFIER_W * scale) + CLASSIFIER_B
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def regressor() -> onnx.ModelProto:
    """[batch, 3] FP32 -> [batch, 1]."""
    return _model(
        [helper.make_node("MatMul", ["input", "W"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(REGRESSOR_W, "W")],
        {"task": "regression", "input_kind": "table"},
    )


def next_token() -> onnx.ModelProto:
    """[batch, time] INT64 token ids -> softmax over the vocabulary [batch, V].

    The logits favour token (last id + 1) mod V, so 'the cat' predicts 'sat'.
    """
    v = len(VOCAB)
    emb = np.eye(v, dtype=np.float32)
    proj = np.roll(np.eye(v, dtype=np.float32), 1, axis=1) * 8.0
    return _model(
        [
            helper.make_node("Gather", ["E", "input"], ["emb"]),  # [b, t, v]
            helper.make_node("Shape", ["input"], ["shape"]),
            helper.make_node("Gather", ["emb", "last_idx"], ["last"], axis=1),  # [b, v]
            helper.make_node("MatMul", ["last", "P"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
        ],
        [helper.make_tensor_value_info("input", TensorProto.INT64, ["batch", "time"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", v])],
        [
            numpy_helper.from_array(emb, "E"),
            numpy_helper.from_array(proj, "P"),
            numpy_helper.from_array(np.array(-1, dtype=np.int64), "last_idx"),
        ],
        {
            "task": "next-token",
            "input_kind": "text",
            "vocabulary": json.dumps(VOCAB),
            "tokenizer_pattern": TOKEN_PATTERN,
            "unk_token": "<unk>",
            "window": "8",
        },
    )


def two_in_two_out() -> onnx.ModelProto:
    """a, b [batch, 2] FP32 -> sum = a + b, product = a * b."""
    return _model(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
        ],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("product", TensorProto.FLOAT, ["batch", 2]),
        ],
    )


def image() -> onnx.ModelProto:
    """[batch, 1, 8, 8] FP32 pixels -> [batch, 2] probabilities (dark vs bright)."""
    return _model(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "axis1"], ["mean2"]),
            helper.make_node("Mul", ["mean2", "W"], ["scaled"]),
            helper.make_node("Add", ["scaled", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(np.array([-0.05, 0.05], dtype=np.float32), "W"),
            numpy_helper.from_array(np.array([6.4, -6.4], dtype=np.float32), "B"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
        {"task": "binary", "input_kind": "image", "labels": json.dumps(["dark", "bright"])},
    )


DTYPES = {
    "fp32": TensorProto.FLOAT,
    "fp64": TensorProto.DOUBLE,
    "fp16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "uint8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
    "bytes": TensorProto.STRING,
}


def dtypes(fp16: bool = True) -> onnx.ModelProto:
    """One identity per datatype: ``x_<t>`` [batch, 2] -> ``y_<t>`` (FP16 has no typed form)."""
    kinds = {k: t for k, t in DTYPES.items() if fp16 or k != "fp16"}
    return _model(
        [helper.make_node("Identity", [f"x_{k}"], [f"y_{k}"]) for k in kinds],
        [helper.make_tensor_value_info(f"x_{k}", t, ["batch", 2]) for k, t in kinds.items()],
        [helper.make_tensor_value_info(f"y_{k}", t, ["batch", 2]) for k, t in kinds.items()],
        metadata={"accepts_non_finite": "true"},
    )


def fixed_shape() -> onnx.ModelProto:
    """A model without a batch axis: [2, 2] FP32 -> [2, 2]."""
    return _model(
        [helper.make_node("Relu", ["input"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 2])],
    )


def lookup() -> onnx.ModelProto:
    """[batch, 1] INT64 row indices -> [batch, 2] FP32 rows of ``LOOKUP_TABLE``.

    Every INT64 value decodes fine, but ONNX Runtime refuses an index outside -4..3 when the
    Gather runs: a request that only the session can reject, by its values, so a test can put
    it in a batch with good requests (the batcher's failure isolation).
    """
    return _model(
        [
            helper.make_node("Gather", ["T", "index"], ["rows"], axis=0),  # [b, 1, 2]
            helper.make_node("Squeeze", ["rows", "axis1"], ["output"]),
        ],
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(LOOKUP_TABLE, "T"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )


ALL = {
    "classifier": classifier,
    "regressor": regressor,
    "next-token": next_token,
    "two-io": two_in_two_out,
    "image": image,
    "dtypes": dtypes,
    "dtypes-typed": lambda: dtypes(fp16=False),
    "fixed": fixed_shape,
    "lookup": lookup,
}


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def write_repository(root: Path) -> Path:
    """Write every model as version 1 under ``root``."""
    for name, build in ALL.items():
        save(build(), root / name / "1" / "model.onnx")
    return root
