"""ONNX export: the real file in ONNX Runtime matches torch, axes are dynamic, metadata is set."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training import ExportError, TrainResult, TrainSpec, evaluate, export_onnx
from training.export import CONTRACT_KEYS

FAMILIES = ["fnn", "fnn-regression", "cnn", "lstm", "gru", "lstm-text"]


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(x[np.arange(n) % len(x)])


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_runtime_matches_torch_at_several_batch_sizes(
    family: str, trained: Callable[[str], TrainResult], tmp_path: Path
) -> None:
    result = trained(family)
    path = tmp_path / "model.onnx"
    report = export_onnx(result, path, {"model_name": f"{family}-test", "mlflow_run_id": "abc"})
    assert report.path == path and path.stat().st_size == report.size_bytes
    assert report.max_diff <= 1e-4 and report.opset >= 17
    assert list(path.parent.iterdir()) == [path]  # one self-contained file, no temp left

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    x_test = result.data.x_test
    lengths = [None]
    if result.data.input_kind in ("series", "text"):
        lengths = [x_test.shape[1], 3]
    for length in lengths:
        for batch in (1, 2, 7, 64):
            x = _rows(x_test, batch)
            if length is not None:
                x = np.ascontiguousarray(x[:, -length:])
            (got,) = session.run(None, {"input": x})
            with torch.no_grad():
                expected = result.model(torch.from_numpy(x)).numpy()
            assert got.shape == expected.shape == (batch, expected.shape[1])
            assert got.dtype == np.float32
            assert np.max(np.abs(got - expected)) <= 1e-4
    expected_keys = {"batch=1", "batch=2", "batch=7", "batch=64"}
    if lengths != [None]:
        assert len(report.per_batch) == 8
    else:
        assert set(report.per_batch) == expected_keys


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_axes_are_dynamic_and_metadata_complete(
    family: str, trained: Callable[[str], TrainResult], tmp_path: Path
) -> None:
    result = trained(family)
    path = tmp_path / "m.onnx"
    export_onnx(result, path, {"mlflow_run_id": "run-1", "model_name": "m"})
    proto = onnx.load(str(path))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch"
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    sequence = result.data.input_kind in ("series", "text")
    if sequence:
        assert in_dims[1].dim_param == "time"
    else:
        assert all(d.dim_value > 0 for d in in_dims[1:])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(CONTRACT_KEYS) <= set(meta)
    assert meta["mlflow_run_id"] == "run-1" and meta["model_name"] == "m"
    assert meta["task"] == result.data.task
    assert meta["input_kind"] == result.data.input_kind
    assert meta["data_sha256"] == result.data.sha256
    assert TrainSpec.from_dict(json.loads(meta["config"])) == result.spec
    assert json.loads(meta["labels"]) == result.data.labels
    if result.data.input_kind == "table":
        assert json.loads(meta["feature_names"]) == result.data.feature_names
    if sequence:
        assert meta["window"] == str(result.data.window)
    if result.data.task == "next-token":
        vocab = json.loads(meta["vocabulary"])
        assert vocab == result.data.vocabulary and vocab[0] == meta["unk_token"] == "<unk>"
        assert meta["tokenizer_pattern"]
    elem = inp.type.tensor_type.elem_type
    assert elem == (
        onnx.TensorProto.INT64 if result.data.input_kind == "text" else onnx.TensorProto.FLOAT
    )
    # A self-contained file: no tensor lives outside it.
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_onnx_output_rescores_to_the_same_metrics(
    trained: Callable[[str], TrainResult], tmp_path: Path
) -> None:
    """What pipelines do with a champion: run the file on a test split and call evaluate."""
    result = trained("cnn")
    path = tmp_path / "m.onnx"
    export_onnx(result, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": result.data.x_test})
    rescored = evaluate(result.data.task, result.data.y_test, out)
    assert rescored["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_outputs_follow_contract_shapes(trained: Callable[[str], TrainResult]) -> None:
    binary = trained("fnn")
    assert binary.test_output.shape == (len(binary.data.y_test), 2)
    np.testing.assert_allclose(binary.test_output.sum(axis=1), 1.0, atol=1e-6)
    reg = trained("fnn-regression")
    assert reg.test_output.shape == (len(reg.data.y_test), 1)
    # values come back in target units, not standardised
    assert abs(float(reg.test_output.mean()) - float(reg.data.y_train.mean())) < 3 * float(
        reg.data.y_train.std()
    )
    text = trained("lstm-text")
    assert text.test_output.shape == (len(text.data.y_test), len(text.data.vocabulary))


def test_parity_failure_raises_and_leaves_no_file(
    trained: Callable[[str], TrainResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.export as export

    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="parity check failed at batch size 1: max"):
        export_onnx(trained("fnn"), path)
    assert list(tmp_path.iterdir()) == []


def test_extra_metadata_cannot_overwrite_contract_keys(
    trained: Callable[[str], TrainResult], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="extra metadata key 'task' would overwrite"):
        export_onnx(trained("fnn"), tmp_path / "m.onnx", {"task": "other"})
    assert list(tmp_path.iterdir()) == []
