"""Every bad request gets its status code and a message naming model, tensor, expected and got;
the next good request succeeds."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from serving._proto import grpc_service_pb2 as pb
from tests.serving.helpers import good_request, infer_request

OK = np.ones((2, 4), np.float32)


def _mixed() -> pb.ModelInferRequest:
    request = infer_request("two-io", {"a": np.ones((1, 2), np.float32)}, raw=True)
    typed = infer_request("two-io", {"b": np.ones((1, 2), np.float32)}, raw=False)
    request.inputs.extend(typed.inputs)
    return request


def _short_raw() -> pb.ModelInferRequest:
    request = infer_request("classifier", {"input": OK})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request


def _bad_bytes() -> pb.ModelInferRequest:
    request = infer_request("next-token", {"input": np.array([b"the cat"], dtype=object)})
    request.raw_input_contents[0] = b"\xff\x00\x00\x00abc"
    return request


def _bad_classification() -> pb.ModelInferRequest:
    request = infer_request("classifier", {"input": OK}, outputs=["output"])
    request.outputs[0].parameters["classification"].string_param = "many"
    return request


def _raw_count_mismatch() -> pb.ModelInferRequest:
    request = infer_request("classifier", {"input": OK})
    request.raw_input_contents.append(b"")
    return request


def _nan() -> pb.ModelInferRequest:
    x = OK.copy()
    x[0, 1] = np.nan
    x[1, 2] = np.inf
    return infer_request("classifier", {"input": x})


def _unicode_digit_classification() -> pb.ModelInferRequest:
    request = infer_request("classifier", {"input": OK}, outputs=["output"])
    request.outputs[0].parameters["classification"].string_param = "²"
    return request


def _too_many_dims() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="input", datatype="FP32", shape=[1] * 65)
    request.raw_input_contents.append(b"\x00" * 4)
    return request


def _typed_overflow() -> pb.ModelInferRequest:
    inputs = {
        "x_fp32": np.zeros((1, 2), np.float32),
        "x_fp64": np.zeros((1, 2)),
        "x_int64": np.zeros((1, 2), np.int64),
        "x_int32": np.zeros((1, 2), np.int32),
        "x_uint8": np.zeros((1, 2), np.uint8),
        "x_bool": np.zeros((1, 2), bool),
        "x_bytes": np.array([[b"a", b"b"]], dtype=object),
    }
    request = infer_request("dtypes-typed", inputs, raw=False)
    uint8 = next(t for t in request.inputs if t.name == "x_uint8")
    uint8.contents.uint_contents[0] = 300
    return request


def _classify_bytes() -> pb.ModelInferRequest:
    request = _typed_overflow()
    next(t for t in request.inputs if t.name == "x_uint8").contents.uint_contents[0] = 3
    out = request.outputs.add(name="y_bytes")
    out.parameters["classification"].int64_param = 1
    return request


INVALID = grpc.StatusCode.INVALID_ARGUMENT
CASES = {
    "unknown model": (
        lambda: infer_request("nope", {"input": OK}),
        grpc.StatusCode.NOT_FOUND,
        ["'nope'", "classifier"],
    ),
    "unknown version": (
        lambda: infer_request("classifier", {"input": OK}, version="7"),
        grpc.StatusCode.NOT_FOUND,
        ["'classifier'", "'7'", "loaded versions: 1"],
    ),
    "missing input": (
        lambda: infer_request("two-io", {"a": np.ones((1, 2), np.float32)}),
        INVALID,
        ["'two-io'", "'b'", "missing"],
    ),
    "extra input": (
        lambda: infer_request("classifier", {"input": OK, "extra": OK}),
        INVALID,
        ["'classifier'", "'extra'", "unknown input"],
    ),
    "misnamed input": (
        lambda: infer_request("classifier", {"inputs": OK}),
        INVALID,
        ["'inputs'", "expected inputs ['input']"],
    ),
    "wrong datatype": (
        lambda: infer_request("classifier", {"input": OK.astype(np.float64)}),
        INVALID,
        ["'input'", "expected FP32, got FP64"],
    ),
    "wrong shape": (
        lambda: infer_request("classifier", {"input": np.ones((2, 5), np.float32)}),
        INVALID,
        ["'input'", "expected [-1, 4], got [2, 5]"],
    ),
    "wrong rank": (
        lambda: infer_request("classifier", {"input": np.ones((4,), np.float32)}),
        INVALID,
        ["expected [-1, 4], got [4]"],
    ),
    "raw byte length mismatch": (
        _short_raw,
        INVALID,
        ["'input'", "expected 32 bytes", "got 28 bytes"],
    ),
    "raw entries do not match inputs": (_raw_count_mismatch, INVALID, ["one entry per input"]),
    "typed and raw mixed": (_mixed, INVALID, ["mixed"]),
    "empty batch": (
        lambda: infer_request("classifier", {"input": np.ones((0, 4), np.float32)}),
        INVALID,
        ["empty batch"],
    ),
    "batch over max_batch_size": (
        lambda: infer_request("classifier", {"input": np.ones((9, 4), np.float32)}),
        INVALID,
        ["max_batch_size", "expected <= 8, got 9"],
    ),
    "NaN and Inf": (_nan, INVALID, ["'input'", "NaN or Inf", "2 non-finite"]),
    "unknown output": (
        lambda: infer_request("classifier", {"input": OK}, outputs=["probs"]),
        INVALID,
        ["'probs'", "expected outputs ['output']"],
    ),
    "bad classification parameter": (_bad_classification, INVALID, ["classification"]),
    "malformed BYTES": (_bad_bytes, INVALID, ["BYTES"]),
    "classification digit that is not ASCII": (
        _unicode_digit_classification,
        INVALID,
        ["classification"],
    ),
    "more than 64 dimensions": (_too_many_dims, INVALID, ["too many dimensions"]),
    "typed value out of range": (_typed_overflow, INVALID, ["out of range", "x_uint8"]),
    "classification of a BYTES output": (_classify_bytes, INVALID, ["numeric output"]),
    "token id outside the vocabulary": (
        lambda: infer_request("next-token", {"input": np.array([[2, 99]], np.int64)}),
        INVALID,
        ["'input'", "outside the vocabulary", "ids in 0..9", "ids in 2..99"],
    ),
    "typed FP16": (
        lambda: infer_request("dtypes", {"x_fp16": np.ones((1, 2), np.float16)}, raw=False),
        INVALID,
        ["x_fp16"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_then_good_request(stub, case):
    build, code, fragments = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(build())
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details()
    assert stub.ModelInfer(good_request()).outputs[0].name == "output"


def test_message_over_size_limit_is_resource_exhausted(stub):
    big = np.ones((8, 4 * 1024 * 80), np.float32)  # ~10 MiB > the fixture's 8 MiB limit
    request = pb.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="input", datatype="FP32", shape=big.shape)
    request.raw_input_contents.append(big.tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ModelInfer(good_request()).outputs


def test_expired_deadline(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(good_request(), timeout=1e-6)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.ModelInfer(good_request(), timeout=10).outputs


@pytest.mark.parametrize("name", ["../classifier", "a/b", "..", ".hidden", "x" * 200])
def test_path_traversal_names_are_rejected(stub, name):
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name))
    assert info.value.code() == INVALID
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(infer_request(name, {"input": OK}))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.ModelInfer(good_request()).outputs


def test_unknown_model_in_metadata_config_statistics(stub):
    for call, request in [
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
        (stub.ModelConfig, pb.ModelConfigRequest(name="nope")),
        (stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope")),
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="nope")),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="nope")),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            call(request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, call


def test_unloaded_model_is_unavailable(stub):
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="image"))
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(infer_request("image", {"input": np.zeros((1, 1, 8, 8), np.float32)}))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "unloaded" in info.value.details()
    finally:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="image"))
    assert stub.ModelInfer(good_request()).outputs


def test_huge_name_gets_a_truncated_message_not_a_transport_error(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(infer_request("m" * 20000, {"input": OK}))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "truncated" in info.value.details()
    assert stub.ModelInfer(good_request()).outputs


def test_undecodable_request_bytes_are_invalid_argument(channel, stub):
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf" in info.value.details()
    assert stub.ModelInfer(good_request()).outputs


def test_stream_answers_every_bad_request_in_band_as_unary_does(stub):
    """One stream carries the whole matrix, each case followed by a good request: every error
    comes back in-band with the unary status and message, and the stream goes on."""
    cases = sorted(CASES)
    requests = []
    for case in cases:
        bad = CASES[case][0]()
        bad.id = f"bad-{case}"
        requests += [bad, good_request()]
    responses = list(stub.ModelStreamInfer(iter(requests)))
    assert len(responses) == 2 * len(cases)
    unary_ok = stub.ModelInfer(good_request())
    for i, case in enumerate(cases):
        _, code, fragments = CASES[case]
        bad, good = responses[2 * i], responses[2 * i + 1]
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(CASES[case][0]())
        assert bad.error_message == f"[{code.name}] {info.value.details()}", case
        for fragment in fragments:
            assert fragment in bad.error_message
        assert bad.infer_response.id == f"bad-{case}"
        assert good.error_message == ""
        assert good.infer_response.outputs == unary_ok.outputs
        assert len(good.infer_response.raw_output_contents) == 1


def test_undecodable_bytes_on_a_stream_are_answered_in_band(channel, stub):
    call = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda b: b,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    responses = list(call(iter([b"\xff\xff\xff\xff", good_request().SerializeToString()])))
    assert responses[0].error_message.startswith("[INVALID_ARGUMENT] request bytes are not")
    assert responses[1].error_message == ""
    assert responses[1].infer_response.outputs[0].name == "output"
