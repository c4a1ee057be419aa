"""Every RPC of inference.GRPCInferenceService against the in-process server."""

from __future__ import annotations

import numpy as np
import pytest

from serving._proto import grpc_service_pb2 as pb
from serving._proto import model_config_pb2 as mc
from serving.client import decode_outputs
from tests.serving import onnx_models
from tests.serving.helpers import infer_request

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [0.0, 0.0, 0.0, 0.0]], np.float32)


def test_live_and_ready(stub):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="classifier")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="classifier", version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="classifier", version="7")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready


def test_server_metadata_advertises_extensions(stub):
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "neuroserve"
    assert meta.version
    for ext in ("classification", "model_configuration", "model_repository", "statistics"):
        assert ext in meta.extensions


def test_model_metadata_shapes_have_dynamic_batch(stub):
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="classifier"))
    assert meta.name == "classifier"
    assert list(meta.versions) == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 4])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("output", "FP32", [-1, 3])
    ]
    text = stub.ModelMetadata(pb.ModelMetadataRequest(name="next-token"))
    assert list(text.inputs[0].shape) == [-1, -1]
    assert text.inputs[0].datatype == "INT64"


def test_model_config_excludes_batch_dim(stub):
    config = stub.ModelConfig(pb.ModelConfigRequest(name="image")).config
    assert config.name == "image"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert list(config.input[0].dims) == [1, 8, 8]
    assert config.input[0].data_type == mc.TYPE_FP32
    assert list(config.output[0].dims) == [2]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.parameters["task"].string_value == "binary"
    fixed = stub.ModelConfig(pb.ModelConfigRequest(name="fixed")).config
    assert fixed.max_batch_size == 0
    assert list(fixed.input[0].dims) == [2, 2]
    assert not fixed.HasField("dynamic_batching")


@pytest.mark.parametrize("raw", [True, False])
def test_infer_raw_and_typed(stub, raw):
    request = infer_request("classifier", {"input": X}, raw=raw, request_id="req-42")
    response = stub.ModelInfer(request)
    assert response.id == "req-42"
    assert response.model_name == "classifier"
    assert response.model_version == "1"
    assert bool(response.raw_output_contents) is raw
    out = decode_outputs(response)["output"]
    np.testing.assert_allclose(out, onnx_models.classifier_reference(X), rtol=1e-5, atol=1e-6)


def test_infer_specific_version_and_requested_outputs(stub):
    request = infer_request(
        "two-io",
        {"a": np.ones((2, 2), np.float32), "b": np.full((2, 2), 3, np.float32)},
        outputs=["product"],
        version="1",
    )
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["product"]
    np.testing.assert_array_equal(decode_outputs(response)["product"], np.full((2, 2), 3))
    both = decode_outputs(
        stub.ModelInfer(
            infer_request(
                "two-io", {"b": np.ones((1, 2), np.float32), "a": np.ones((1, 2), np.float32)}
            )
        )
    )
    np.testing.assert_array_equal(both["sum"], [[2, 2]])
    np.testing.assert_array_equal(both["product"], [[1, 1]])


@pytest.mark.parametrize("raw", [True, False])
def test_every_datatype_round_trips(stub, raw):
    inputs = {
        "x_fp32": np.array([[1.5, -2]], np.float32),
        "x_fp64": np.array([[1e300, -0.25]], np.float64),
        "x_fp16": np.array([[0.5, 2]], np.float16),
        "x_int64": np.array([[2**40, -3]], np.int64),
        "x_int32": np.array([[2**30, -7]], np.int32),
        "x_uint8": np.array([[0, 255]], np.uint8),
        "x_bool": np.array([[True, False]]),
        "x_bytes": np.array([[b"hello", "wörld".encode()]], dtype=object),
    }
    if not raw:  # FP16 has no typed contents field: typed requests use a model without it
        del inputs["x_fp16"]
    model = "dtypes" if raw else "dtypes-typed"
    response = stub.ModelInfer(infer_request(model, inputs, raw=raw))
    assert bool(response.raw_output_contents) is raw
    out = decode_outputs(response)
    for key, value in inputs.items():
        got = out["y_" + key[2:]]
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)


def test_classification_topk_with_labels(stub):
    request = infer_request("classifier", {"input": X}, outputs=["output"], classification=2)
    response = stub.ModelInfer(request)
    tensor = response.outputs[0]
    assert tensor.datatype == "BYTES"
    assert list(tensor.shape) == [3, 2]
    out = decode_outputs(response)["output"]
    probs = onnx_models.classifier_reference(X)
    for row, p in zip(out, probs, strict=True):
        score, index, label = row[0].decode().split(":")
        assert int(index) == int(p.argmax())
        assert label == onnx_models.CLASS_LABELS[int(index)]
        assert float(score) == pytest.approx(float(p.max()), abs=1e-5)
        assert float(row[1].decode().split(":")[0]) <= float(score)


def test_next_token_accepts_text(stub):
    texts = np.array([b"The cat", b"the dog ran"], dtype=object)
    request = infer_request("next-token", {"input": texts}, outputs=["output"], classification=3)
    out = decode_outputs(stub.ModelInfer(request))["output"]
    assert out[0][0].decode().split(":")[2] == "sat"
    assert out[1][0].decode().split(":")[2] == "."
    ids = np.array([[2, 3]], np.int64)  # token ids still work
    probs = decode_outputs(stub.ModelInfer(infer_request("next-token", {"input": ids})))["output"]
    assert int(probs.argmax()) == onnx_models.VOCAB.index("sat")


def test_stream_infer_reports_errors_in_band(stub):
    good = infer_request("regressor", {"input": np.ones((1, 3), np.float32)}, request_id="a")
    bad = infer_request("regressor", {"input": np.ones((1, 5), np.float32)}, request_id="b")
    responses = list(stub.ModelStreamInfer(iter([good, bad, good])))
    assert len(responses) == 3
    assert responses[0].error_message == ""
    assert responses[0].infer_response.id == "a"
    expected = onnx_models.REGRESSOR_W.sum()
    np.testing.assert_allclose(decode_outputs(responses[0].infer_response)["output"], [[expected]])
    assert "INVALID_ARGUMENT" in responses[1].error_message
    assert "shape" in responses[1].error_message
    assert responses[1].infer_response.id == "b"
    assert responses[2].error_message == ""


def test_statistics_are_triton_shaped(stub):
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="image")).model_stats[0]
    for _ in range(3):
        stub.ModelInfer(infer_request("image", {"input": np.zeros((2, 1, 8, 8), np.float32)}))
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="image", version="1")).model_stats
    assert len(stats) == 1
    s = stats[0]
    assert (s.name, s.version) == ("image", "1")
    assert s.inference_count - before.inference_count == 6
    assert s.execution_count - before.execution_count == 3
    assert s.inference_stats.success.count - before.inference_stats.success.count == 3
    assert s.inference_stats.success.ns > 0
    assert s.inference_stats.compute_infer.count >= 3
    assert s.last_inference > 0
    assert any(b.batch_size in (2, 4, 6) and b.compute_infer.count >= 1 for b in s.batch_stats)
    everything = stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
    assert {m.name for m in everything} >= {"image", "classifier"}


def test_repository_index_lists_versions(stub):
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    names = {(m.name, m.version, m.state) for m in index}
    assert ("classifier", "1", "READY") in names
    ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
    assert all(m.state == "READY" for m in ready)


def test_repository_unload_then_load(stub):
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="regressor"))
    assert not stub.ModelReady(pb.ModelReadyRequest(name="regressor")).ready
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index["regressor"].state == "UNAVAILABLE"
    assert "unloaded" in index["regressor"].reason
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="regressor"))
    assert stub.ModelReady(pb.ModelReadyRequest(name="regressor")).ready
    stub.ModelInfer(infer_request("regressor", {"input": np.ones((1, 3), np.float32)}))


def test_fixed_shape_model_without_batch_axis(stub):
    x = np.array([[-1, 2], [3, -4]], np.float32)
    out = decode_outputs(stub.ModelInfer(infer_request("fixed", {"input": x})))["output"]
    np.testing.assert_array_equal(out, np.maximum(x, 0))
