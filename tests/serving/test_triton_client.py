"""Triton's own client (tritonclient.grpc) against our server: the wire-compatibility proof.

It runs in the same process as our generated code, which also proves the private descriptor pool
(serving/codegen.py) lets both coexist.
"""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.serving import onnx_models

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(url=server.address)
    yield c
    c.close()


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("classifier")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "neuroserve"
    assert "classification" in meta["extensions"]


def test_model_metadata_and_config(client):
    meta = client.get_model_metadata("classifier", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}
    config = client.get_model_config("classifier", as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == ["4"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert "dynamic_batching" in config


def test_infer_raw(client):
    inp = triton.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    result = client.infer("classifier", [inp], request_id="t-1")
    np.testing.assert_allclose(
        result.as_numpy("output"), onnx_models.classifier_reference(X), rtol=1e-5, atol=1e-6
    )
    assert result.get_response().id == "t-1"


def test_top_k_classification(client):
    inp = triton.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    out = triton.InferRequestedOutput("output", class_count=2)
    result = client.infer("classifier", [inp], outputs=[out])
    top = result.as_numpy("output")
    assert top.shape == (2, 2)
    expected = onnx_models.classifier_reference(X).argmax(axis=1)
    for row, index in zip(top, expected, strict=True):
        _score, got, label = row[0].decode().split(":")
        assert int(got) == index
        assert label == onnx_models.CLASS_LABELS[index]


def test_text_input_with_bytes(client):
    inp = triton.InferInput("input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"the cat"], dtype=object))
    out = triton.InferRequestedOutput("output", class_count=1)
    top = client.infer("next-token", [inp], outputs=[out]).as_numpy("output")
    assert top[0][0].decode().endswith(":sat")


def test_statistics(client):
    stats = client.get_inference_statistics("classifier", as_json=True)["model_stats"][0]
    assert stats["name"] == "classifier"
    assert int(stats["inference_count"]) >= 2
    assert int(stats["inference_stats"]["success"]["count"]) >= 1


def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "classifier", "version": "1", "state": "READY"} in index


def test_streaming(client):
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(3):
            inp = triton.InferInput("input", [1, 4], "FP32")
            inp.set_data_from_numpy(X[:1] * (i + 1))
            client.async_stream_infer("classifier", [inp], request_id=str(i))
        bad = triton.InferInput("input", [1, 5], "FP32")
        bad.set_data_from_numpy(np.ones((1, 5), np.float32))
        client.async_stream_infer("classifier", [bad], request_id="bad")
        got = [results.get(timeout=10) for _ in range(4)]
    finally:
        client.stop_stream()
    ok = [r for r, e in got if e is None]
    errors = [e for r, e in got if e is not None]
    assert sorted(r.get_response().id for r in ok) == ["0", "1", "2"]
    for r in ok:
        i = int(r.get_response().id)
        np.testing.assert_allclose(
            r.as_numpy("output"), onnx_models.classifier_reference(X[:1] * (i + 1)), rtol=1e-5
        )
    assert len(errors) == 1
    assert "shape" in str(errors[0])
