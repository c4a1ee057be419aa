"""KServe v2 REST (serving/http.py) against real servers on loopback.

Triton's own ``tritonclient.http`` proves wire compatibility; plain ``http.client`` requests and
raw sockets check every bad input: the gRPC error matrix (tests/serving/test_errors.py) sent over
REST gets the same message as over gRPC with its mapped HTTP status, and the HTTP framing's own
mistakes (JSON, sizes, content types, paths, methods, headers) get clear JSON errors. The shared
``server`` fixture runs all of it with the request path's shortcuts on and off.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from serving import errors
from serving._proto import grpc_service_pb2 as pb
from serving.codecs import CONTENTS_FIELD
from serving.status import status_of
from tests.serving import onnx_models
from tests.serving.certs import write_certs
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.test_errors import CASES

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
ROOT = Path(__file__).resolve().parents[2]

#: Triton's HTTP status for each gRPC code (written out here, not imported: the test checks it).
HTTP_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.INTERNAL: 500,
}


class Reply:
    """One HTTP response: status, headers (lower-case names) and body."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = {k.lower(): v for k, v in response.getheaders()}
        self.body = response.read()

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)

    @property
    def error(self) -> str:
        body = self.json()
        assert set(body) == {"error"}, body
        return body["error"]


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One request on a fresh connection."""
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        return Reply(conn.getresponse())
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, half_close: bool = False) -> bytes:
    """Send bytes as they are and read until the server closes (bounded by a timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # The server may refuse before reading everything; its answer is still there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def infer_body(
    inputs: dict[str, np.ndarray],
    binary: bool = True,
    outputs: list[dict[str, Any]] | None = None,
    **params: Any,
) -> tuple[bytes, dict[str, str]]:
    """A v2 infer body (JSON, plus binary tensors when ``binary``) and its headers."""
    tensors, tail = [], []
    for name, array in inputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": {"float32": "FP32", "int64": "INT64"}[array.dtype.name],
            "shape": list(array.shape),
        }
        if binary:
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
        else:
            entry["data"] = array.tolist()
        tensors.append(entry)
    header: dict[str, Any] = {"inputs": tensors}
    if outputs is not None:
        header["outputs"] = outputs
    if params:
        header["parameters"] = params
    head = json.dumps(header).encode()
    if not tail:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(tail), {"Inference-Header-Content-Length": str(len(head))}


def good(port: int, **kw: Any) -> Reply:
    """A valid JSON infer on the classifier, checked."""
    body, headers = infer_body({"input": X}, binary=False)
    reply = call(port, "POST", "/v2/models/classifier/infer", body, {**headers, **kw})
    assert reply.status == 200, reply.body
    got = np.array(reply.json()["outputs"][0]["data"], np.float32).reshape(2, 3)
    np.testing.assert_allclose(got, onnx_models.classifier_reference(X), rtol=1e-5, atol=1e-6)
    return reply


@pytest.fixture(scope="module")
def port(server: ServerThread) -> int:
    assert server.server is not None and server.server.http_port is not None
    return server.server.http_port


@pytest.fixture(scope="module")
def client(port: int):
    c = th.InferenceServerClient(url=f"127.0.0.1:{port}")
    yield c
    c.close()


# ------------------------------------------------------------------------ tritonclient.http
def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("classifier")
    assert client.is_model_ready("classifier", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "neuroserve"
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    model = client.get_model_metadata("classifier")
    assert model == client.get_model_metadata("classifier", "1")
    assert model["versions"] == ["1"]
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]


def test_config_has_numbers_as_triton_gives_them(client):
    config = client.get_model_config("classifier")
    assert config["name"] == "classifier"
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [4]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["output"][0]["dims"] == [3]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert json.loads(config["parameters"]["labels"]["string_value"]) == onnx_models.CLASS_LABELS


def test_infer_binary(client):
    inp = th.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    result = client.infer("classifier", [inp], request_id="r-1")
    out = result.get_output("output")
    assert out["parameters"] == {"binary_data_size": 2 * 3 * 4}
    np.testing.assert_allclose(
        result.as_numpy("output"), onnx_models.classifier_reference(X), rtol=1e-5, atol=1e-6
    )
    assert result.get_response()["id"] == "r-1"
    assert result.get_response()["model_version"] == "1"


def test_infer_json(client):
    inp = th.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=False)
    out = th.InferRequestedOutput("output", binary_data=False)
    result = client.infer("classifier", [inp], outputs=[out], model_version="1")
    assert "data" in result.get_output("output")
    np.testing.assert_allclose(
        result.as_numpy("output"), onnx_models.classifier_reference(X), rtol=1e-5, atol=1e-6
    )


def test_each_output_chooses_binary_or_json(client):
    a, b = np.array([[1, 2]], np.float32), np.array([[3, 4]], np.float32)
    inputs = [th.InferInput("a", [1, 2], "FP32"), th.InferInput("b", [1, 2], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    outputs = [
        th.InferRequestedOutput("product", binary_data=False),
        th.InferRequestedOutput("sum", binary_data=True),
    ]
    result = client.infer("two-io", inputs, outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["product", "sum"]
    assert result.get_output("product")["data"] == [3.0, 8.0]
    assert "data" not in result.get_output("sum")
    np.testing.assert_array_equal(result.as_numpy("sum"), a + b)


@pytest.mark.parametrize("binary", [True, False])
def test_top_k_classification(client, binary):
    inp = th.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    out = th.InferRequestedOutput("output", binary_data=binary, class_count=2)
    result = client.infer("classifier", [inp], outputs=[out])
    top = result.as_numpy("output")
    assert top.shape == (2, 2)
    reference = onnx_models.classifier_reference(X)
    for row, probs in zip(top, reference, strict=True):
        order = np.argsort(-probs)[:2]
        for cell, index in zip(row, order, strict=True):
            text = cell.decode() if isinstance(cell, bytes) else cell
            score, got, label = text.split(":")
            assert int(got) == index
            assert label == onnx_models.CLASS_LABELS[index]
            assert float(score) == pytest.approx(probs[index], abs=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_text_input_as_bytes(client, binary):
    inp = th.InferInput("input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"the cat"], dtype=object), binary_data=binary)
    out = th.InferRequestedOutput("output", binary_data=binary, class_count=1)
    top = client.infer("next-token", [inp], outputs=[out]).as_numpy("output")
    cell = top[0][0]
    assert (cell.decode() if isinstance(cell, bytes) else cell).endswith(":sat")


def _dtype_inputs(kinds: list[str]) -> dict[str, np.ndarray]:
    values = {
        "fp32": np.array([[1.5, -2.0]], np.float32),
        "fp64": np.array([[1e300, -0.25]], np.float64),
        "fp16": np.array([[0.5, -1.0]], np.float16),
        "int64": np.array([[2**40, -3]], np.int64),
        "int32": np.array([[7, -(2**31)]], np.int32),
        "uint8": np.array([[0, 255]], np.uint8),
        "bool": np.array([[True, False]]),
        "bytes": np.array([[b"hi", "é".encode()]], dtype=object),
    }
    return {f"x_{k}": values[k] for k in kinds}


@pytest.mark.parametrize(
    ("model", "binary"),
    [("dtypes", True), ("dtypes-typed", False)],
    ids=["binary-every-type", "json-every-typed-type"],
)
def test_every_datatype_round_trips(client, model, binary):
    kinds = [k for k in onnx_models.DTYPES if binary or k != "fp16"]
    inputs = []
    arrays = _dtype_inputs(kinds)
    for name, array in arrays.items():
        datatype = th.np_to_triton_dtype(array.dtype) if array.dtype != object else "BYTES"
        inp = th.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array, binary_data=binary)
        inputs.append(inp)
    outputs = [th.InferRequestedOutput(f"y_{k}", binary_data=binary) for k in kinds]
    result = client.infer(model, inputs, outputs=outputs)
    for k in kinds:
        got, sent = result.as_numpy(f"y_{k}"), arrays[f"x_{k}"]
        if k == "bytes":
            got = np.array([x.encode() if isinstance(x, str) else x for x in got.flat], object)
            assert got.tolist() == sent.reshape(-1).tolist()
        else:
            assert got.dtype == sent.dtype, k
            np.testing.assert_array_equal(got, sent)


def test_statistics(client, port):
    before = client.get_inference_statistics("classifier")["model_stats"][0]
    good(port)
    stats = client.get_inference_statistics("classifier", "1")["model_stats"][0]
    assert stats["name"] == "classifier" and stats["version"] == "1"
    assert isinstance(stats["inference_count"], int)  # a number, as Triton's REST gives it
    assert stats["inference_count"] == before["inference_count"] + 2  # a batch of two
    success = stats["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 1
    every = client.get_inference_statistics()["model_stats"]
    assert {"classifier", "two-io", "next-token"} <= {s["name"] for s in every}
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("nope")
    assert info.value.status() == "404"


def test_repository_index(client, port):
    index = client.get_model_repository_index()
    assert {"name": "classifier", "version": "1", "state": "READY", "reason": ""} in index
    ready = call(port, "POST", "/v2/repository/index", json.dumps({"ready": True}).encode())
    assert ready.json() and all(m["state"] == "READY" for m in ready.json())


def test_gzip_and_deflate_requests(client):
    inp = th.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("classifier", [inp], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(
            result.as_numpy("output"), onnx_models.classifier_reference(X), rtol=1e-5, atol=1e-6
        )


def test_protocol_label_on_request_metrics(server, port):
    registry = server.server.metrics.registry

    def count(status: str, protocol: str) -> float:
        labels = {"model": "classifier", "status": status, "protocol": protocol}
        return registry.get_sample_value("neuroserve_requests_total", labels) or 0.0

    ok, bad = count("OK", "http"), count("INVALID_ARGUMENT", "http")
    grpc_ok = count("OK", "grpc")
    good(port)
    body, headers = infer_body({"input": np.ones((2, 5), np.float32)})
    assert call(port, "POST", "/v2/models/classifier/infer", body, headers).status == 400
    assert count("OK", "http") == ok + 1
    assert count("INVALID_ARGUMENT", "http") == bad + 1
    assert count("OK", "grpc") == grpc_ok


# ----------------------------------------------------------------- plain HTTP, good requests
def test_curl_style_json_with_nested_data_and_no_content_type(port):
    body = json.dumps(
        {
            "id": "curl",
            "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": X.tolist()}],
        }
    ).encode()
    reply = call(
        port,
        "POST",
        "/v2/models/classifier/infer",
        body,
        {"Content-Type": "application/x-www-form-urlencoded"},  # what curl -d sends
    )
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert answer["id"] == "curl" and answer["model_name"] == "classifier"
    assert answer["outputs"][0]["shape"] == [2, 3]
    assert len(answer["outputs"][0]["data"]) == 6


def test_binary_data_output_answers_with_the_binary_extension(port):
    body, headers = infer_body({"input": X}, binary_data_output=True)
    reply = call(port, "POST", "/v2/models/classifier/infer", body, headers)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/octet-stream"
    split = int(reply.headers["inference-header-content-length"])
    header = json.loads(reply.body[:split])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 24}
    got = np.frombuffer(reply.body[split:], np.float32).reshape(2, 3)
    np.testing.assert_allclose(got, onnx_models.classifier_reference(X), rtol=1e-5, atol=1e-6)


def test_keep_alive_answers_are_not_held_back_by_nagle(port):
    # A response goes out as headers then body; with Nagle's algorithm on, the body waits for
    # the client's delayed ACK (tens of ms) on every request of a keep-alive connection.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        start = time.perf_counter()
        for _ in range(20):
            conn.request("GET", "/v2")
            assert Reply(conn.getresponse()).json()["name"] == "neuroserve"
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    assert elapsed < 0.4, f"20 keep-alive requests took {elapsed:.3f} s"


def test_health_live_and_ready_answer_200_with_no_body(port):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/classifier/ready"):
        reply = call(port, "GET", path)
        assert (reply.status, reply.body) == (200, b"")


# -------------------------------------------------------------- the gRPC error matrix, REST
def as_http(request: pb.ModelInferRequest) -> tuple[str, bytes, dict[str, str]]:
    """The REST request carrying what a ModelInferRequest carries: typed contents as JSON
    ``data``, raw contents as binary tensors, output parameters as JSON parameters."""
    path = f"/v2/models/{request.model_name}"
    if request.model_version:
        path += f"/versions/{request.model_version}"
    raw = list(request.raw_input_contents)
    tensors, tail = [], []
    for tensor in request.inputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if tensor.HasField("contents"):
            values = list(getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype]))
            entry["data"] = [v.decode() for v in values] if tensor.datatype == "BYTES" else values
        else:
            data = raw.pop(0)
            entry["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
        tensors.append(entry)
    outputs = []
    for out in request.outputs:
        params = {
            k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in out.parameters.items()
        }
        outputs.append({"name": out.name, "parameters": params} if params else {"name": out.name})
    header: dict[str, Any] = {"inputs": tensors}
    if outputs:
        header["outputs"] = outputs
    head = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))} if tail else {}
    return path + "/infer", head + b"".join(tail), headers


#: Cases REST cannot express: its binary tensors have no list of entries apart from the inputs
#: (an empty extra entry is no bytes at all); test_trailing_binary_bytes covers its own form.
NOT_EXPRESSIBLE = {"raw entries do not match inputs"}


@pytest.mark.parametrize("case", sorted(set(CASES) - NOT_EXPRESSIBLE))
def test_grpc_error_matrix_over_rest(stub, port, case):
    build, code, fragments = CASES[case]
    request = build()
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    path, body, headers = as_http(request)
    reply = call(port, "POST", path, body, headers)
    assert reply.status == HTTP_OF[code], reply.body
    assert reply.error == info.value.details()  # the same message as over gRPC
    for fragment in fragments:
        assert fragment in reply.error
    good(port)


# ------------------------------------------------------------------ HTTP framing mistakes
def _infer(port: int, body: bytes, headers: dict[str, str] | None = None) -> Reply:
    return call(port, "POST", "/v2/models/classifier/infer", body, headers)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"{not json", ["not valid JSON"]),
        (b"[1, 2]", ["must be a JSON object", "list"]),
        (b"\xff\xfe\x00", ["not valid JSON"]),
        (b"[" * 100_000 + b"]" * 100_000, ["not valid JSON"]),
        (b'{"inputs": {"name": "input"}}', ["'inputs' must be a JSON array"]),
        (b'{"inputs": [7]}', ["input 0 must be a JSON object"]),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": "2,4"}]}', ["'shape'"]),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4]}]}',
            ["neither 'data' nor a 'binary_data_size'"],
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], '
            b'"data": ["a", "b", "c", "d"]}]}',
            ["'input'", "not FP32 values"],
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], '
            b'"data": [1, 2, 3, 4]}], "id": 5}',
            ["'id' must be a JSON string"],
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], '
            b'"data": [1, 2, 3, 4]}], "outputs": [{"name": "output", '
            b'"parameters": {"binary_data": "yes"}}]}',
            ["'binary_data' must be true/false"],
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], '
            b'"parameters": {"shared_memory_region": "r"}}]}',
            ["shared memory is not supported"],
        ),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "not-text",
        "nested-too-deep",
        "inputs-not-a-list",
        "input-not-an-object",
        "shape-not-a-list",
        "no-data",
        "strings-for-fp32",
        "id-not-a-string",
        "binary-data-not-bool",
        "shared-memory",
    ],
)
def test_malformed_json_is_400_naming_the_problem(port, body, fragments):
    reply = _infer(port, body, {"Content-Type": "application/json"})
    assert reply.status == 400, reply.body
    for fragment in fragments:
        assert fragment in reply.error
    good(port)


def test_json_header_length_that_does_not_fit_the_body(port):
    body, _ = infer_body({"input": X})
    for value, fragment in (
        ("abc", "not a byte count"),
        (str(len(body) + 1), f"the body holds {len(body)} bytes"),
        ("0", "the body holds"),
    ):
        reply = _infer(port, body, {"Inference-Header-Content-Length": value})
        assert reply.status == 400
        assert fragment in reply.error
    good(port)


def test_body_shorter_than_its_binary_tensors_declare(port):
    body, headers = infer_body({"input": X})
    reply = _infer(port, body[:-5], headers)
    assert reply.status == 400
    assert "declares 32 bytes of binary data at byte 0" in reply.error
    assert "only 27 bytes follow" in reply.error
    good(port)


def test_trailing_binary_bytes(port):
    body, headers = infer_body({"input": X})
    reply = _infer(port, body + b"\x00" * 8, headers)
    assert reply.status == 400
    assert "8 bytes follow the JSON header that no input's 'binary_data_size'" in reply.error


def test_body_shorter_than_content_length_then_the_client_gives_up(port):
    body, _ = infer_body({"input": X}, binary=False)
    head = (
        f"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    answer = raw_exchange(port, head + body, half_close=True)
    assert b"200 OK" not in answer  # nothing was run on a partial body
    good(port)  # and the server is fine


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"Content-Type": "text/xml"}, "Content-Type 'text/xml'"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, "multipart/form-data"),
        ({"Content-Encoding": "br"}, "Content-Encoding 'br'"),
    ],
)
def test_unreadable_content_type_or_encoding_is_415(port, headers, fragment):
    body, _ = infer_body({"input": X}, binary=False)
    reply = _infer(port, body, headers)
    assert reply.status == 415
    assert fragment in reply.error
    good(port)


def test_corrupt_gzip_is_400(port):
    reply = _infer(port, b"not gzip at all", {"Content-Encoding": "gzip"})
    assert reply.status == 400
    assert "not valid gzip data" in reply.error


def test_body_over_the_size_limit_is_413(server, port):
    limit = server.settings.max_message_bytes
    # Declared too large: refused from the Content-Length alone, before the body is read.
    head = (
        f"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {limit + 1}\r\n\r\n"
    ).encode()
    answer = raw_exchange(port, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert f"over the limit of {limit} bytes".encode() in answer
    # Chunked, so no length up front: refused once the bytes read pass the limit.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    chunks = (b"\x00" * (1024 * 1024) for _ in range(limit // (1024 * 1024) + 2))
    try:
        conn.request("POST", "/v2/models/classifier/infer", body=chunks, encode_chunked=True)
        reply = Reply(conn.getresponse())
    except (BrokenPipeError, ConnectionResetError):
        reply = None  # the server may close before the client finished writing
    finally:
        conn.close()
    if reply is not None:
        assert reply.status == 413
    # A gzip body that inflates past the limit is refused too, without inflating it all.
    bomb = gzip.compress(b"\x00" * (limit + 1024))
    reply = _infer(port, bomb, {"Content-Encoding": "gzip"})
    assert reply.status == 413
    assert "inflates to over the limit" in reply.error
    good(port)


def test_huge_headers_are_refused_and_the_server_carries_on(port):
    huge = "x" * (200 * 1024)
    answer = raw_exchange(port, f"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"error":"request line and headers are over 65536 bytes"' in answer
    many = "".join(f"X-H{i}: {'v' * 60}\r\n" for i in range(2000))
    answer = raw_exchange(port, f"GET /v2 HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 431 ")
    # Headers under the bound pass, and a large body after them is not counted as head.
    reply = call(port, "GET", "/v2", headers={"X-Big": "y" * 30_000})
    assert reply.status == 200
    good(port)


def test_bytes_that_are_not_http_get_a_json_400(port):
    answer = raw_exchange(port, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'{"error":"the request is not valid HTTP/1.1"}' in answer
    good(port)


@pytest.mark.parametrize(
    "path",
    ["/", "/v1/models/classifier", "/v2/models", "/v2/models/classifier/predict",
     "/v2/models/classifier/versions", "/v2/health", "/v2/repository/models/classifier"],
)  # fmt: skip
def test_unknown_path_is_404_json(port, path):
    reply = call(port, "GET", path)
    assert reply.status == 404
    assert f"no endpoint at {path}" in reply.error


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v2/models/classifier/infer", "POST"),
        ("POST", "/v2/models/classifier", "GET"),
        ("DELETE", "/v2/health/ready", "GET"),
        ("GET", "/v2/repository/index", "POST"),
        ("PUT", "/v2/repository/models/classifier/load", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(port, method, path, allowed):
    reply = call(port, method, path)
    assert reply.status == 405
    assert reply.headers["allow"] == allowed
    assert reply.error == f"{path} takes {allowed}, not {method}"


def test_unknown_model_and_version_on_every_model_endpoint(port):
    for suffix in ("", "/ready", "/config", "/stats"):
        reply = call(port, "GET", f"/v2/models/nope{suffix}")
        assert reply.status == 404
        assert "model 'nope' not found" in reply.error
        reply = call(port, "GET", f"/v2/models/classifier/versions/7{suffix}")
        assert reply.status == 404
        assert "no loaded version '7'" in reply.error


def test_load_with_override_config_is_refused(port):
    body = json.dumps({"parameters": {"config": "{}"}}).encode()
    reply = call(port, "POST", "/v2/repository/models/classifier/load", body)
    assert reply.status == 400
    assert "['config'] are not supported" in reply.error


# ----------------------------------------------------------------- dedicated servers
def test_load_and_unload(model_repo):
    thread = ServerThread(make_settings(model_repo, model_names=["classifier", "regressor"]))
    thread.start()
    try:
        assert thread.server is not None
        c = th.InferenceServerClient(url=f"127.0.0.1:{thread.server.http_port}")
        assert c.is_model_ready("regressor")
        c.unload_model("regressor")
        assert not c.is_model_ready("regressor")
        reply = call(thread.server.http_port, "GET", "/v2/models/regressor/ready")
        assert reply.status == 503
        assert "model 'regressor' is not ready" in reply.error
        index = {m["name"]: m["state"] for m in c.get_model_repository_index()}
        assert index["regressor"] == "UNAVAILABLE"
        c.load_model("regressor")
        assert c.is_model_ready("regressor")
        inp = th.InferInput("input", [1, 3], "FP32")
        inp.set_data_from_numpy(np.ones((1, 3), np.float32))
        assert c.infer("regressor", [inp]).as_numpy("output").shape == (1, 1)
        with pytest.raises(InferenceServerException) as info:
            c.load_model("nope")
        assert info.value.status() in {"400", "404"}
        c.close()
    finally:
        thread.stop()


def test_bearer_token(model_repo):
    thread = ServerThread(make_settings(model_repo, auth_token="s3cret")).start()
    try:
        assert thread.server is not None
        port = thread.server.http_port
        for headers, fragment in (({}, "missing"), ({"Authorization": "Bearer wrong"}, "invalid")):
            for method, path in (("GET", "/v2"), ("GET", "/v2/models/classifier")):
                reply = call(port, method, path, headers=headers)
                assert reply.status == 401
                assert reply.error.startswith(f"{fragment} bearer token")
            body, h = infer_body({"input": X})
            assert _infer(port, body, {**h, **headers}).status == 401
        # Probes stay open, as grpc.health.v1 and ServerLive are over gRPC.
        assert call(port, "GET", "/v2/health/live").status == 200
        assert call(port, "GET", "/v2/health/ready").status == 200
        good(port, Authorization="Bearer s3cret")
        c = th.InferenceServerClient(url=f"127.0.0.1:{port}")
        assert c.get_model_metadata("classifier", headers={"Authorization": "Bearer s3cret"})
        c.close()
    finally:
        thread.stop()


def test_tls_and_mutual_tls(model_repo, tmp_path):
    certs = write_certs(tmp_path)
    tls = {"tls_cert_file": certs["server_cert"], "tls_key_file": certs["server_key"]}
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    thread = ServerThread(make_settings(model_repo, **tls)).start()
    try:
        assert thread.server is not None
        port = thread.server.http_port
        body, headers = infer_body({"input": X})
        assert (
            call(port, "POST", "/v2/models/classifier/infer", body, headers, context).status == 200
        )
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            call(port, "GET", "/v2")  # plain HTTP to a TLS port gets no answer
    finally:
        thread.stop()
    thread = ServerThread(make_settings(model_repo, tls_ca_file=certs["ca"], **tls)).start()
    try:
        assert thread.server is not None
        port = thread.server.http_port
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            call(port, "GET", "/v2", context=context)  # no client certificate
        context.load_cert_chain(certs["client_cert"], certs["client_key"])
        assert call(port, "GET", "/v2", context=context).json()["name"] == "neuroserve"
    finally:
        thread.stop()


def test_http_off(model_repo):
    thread = ServerThread(make_settings(model_repo, http_port=-1)).start()
    try:
        assert thread.server is not None and thread.server.http_port is None
    finally:
        thread.stop()


def test_in_flight_request_finishes_during_shutdown_and_deadline_param(model_repo):
    # A 1 s queue delay holds each request in the batch queue: in flight when stop() begins.
    thread = ServerThread(
        make_settings(model_repo, model_names=["classifier"], max_queue_delay_us=1_000_000)
    ).start()
    assert thread.server is not None
    port = thread.server.http_port
    body, headers = infer_body({"input": X}, binary=False, timeout=50_000)  # 50 ms
    reply = _infer(port, body, headers)
    assert reply.status == 504
    assert "deadline exceeded" in reply.error
    result: dict[str, Any] = {}

    def in_flight() -> None:
        try:
            result["reply"] = good(port)
        except BaseException as exc:  # reported below
            result["error"] = exc

    worker = threading.Thread(target=in_flight)
    worker.start()
    time.sleep(0.3)
    thread.stop(grace=10)
    worker.join(20)
    assert "error" not in result, result
    assert result["reply"].status == 200
    with pytest.raises(ConnectionRefusedError):
        call(port, "GET", "/v2/health/live")


def test_request_still_queued_when_the_grace_period_ends_gets_a_json_status(model_repo):
    thread = ServerThread(
        make_settings(model_repo, model_names=["classifier"], max_queue_delay_us=3_000_000)
    ).start()
    assert thread.server is not None
    port = thread.server.http_port
    result: dict[str, Any] = {}

    def in_flight() -> None:
        body, headers = infer_body({"input": X})
        result["reply"] = _infer(port, body, headers)

    worker = threading.Thread(target=in_flight)
    worker.start()
    time.sleep(0.3)
    thread.stop(grace=0.3)
    worker.join(20)
    reply = result["reply"]
    assert reply.status == 499  # CANCELLED, as gRPC's in-flight calls end at the deadline
    assert reply.error == "request cancelled"


def test_workers_share_the_http_port(model_repo):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        http_port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "serving", "--model-repository", str(model_repo),
            "--model", "classifier", "--grpc-port", "0", "--http-port", str(http_port),
            "--metrics-port", "-1", "--workers", "2", "--intra-op-threads", "1",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        ready: list[str] = []
        deadline = time.monotonic() + 90
        lines = []
        while len(ready) < 2:
            assert time.monotonic() < deadline, "".join(lines)
            line = proc.stderr.readline()
            assert line, "server exited early:\n" + "".join(lines)
            lines.append(line)
            if "event=server_ready" in line:
                ready.append(line)
        # Both workers bound the same HTTP port (only SO_REUSEPORT lets the second one).
        assert all(f"http_port={http_port}" in line for line in ready), ready
        assert len({re.search(r"pid=(\d+)", line).group(1) for line in ready}) == 2  # type: ignore[union-attr]
        for _ in range(4):
            good(http_port)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


@pytest.mark.parametrize(
    ("exc", "code", "http_status"),
    [
        (errors.RouteNotFoundError("no endpoint"), "NOT_FOUND", 404),
        (errors.MethodNotAllowedError("GET", "/v2/x", "POST"), "UNIMPLEMENTED", 405),
        (errors.RequestTooLargeError("too big"), "RESOURCE_EXHAUSTED", 413),
        (errors.UnsupportedMediaTypeError("text/xml"), "INVALID_ARGUMENT", 415),
        (errors.HeadersTooLargeError("too many"), "RESOURCE_EXHAUSTED", 431),
        (errors.QueueFullError("m", 1), "RESOURCE_EXHAUSTED", 429),  # no override leaks
    ],
)
def test_http_framing_errors_have_their_own_http_status(exc, code, http_status):
    status = status_of(exc)
    assert (status.code.name, status.http) == (code, http_status)
