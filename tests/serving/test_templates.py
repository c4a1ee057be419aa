"""Request templates: repeated request layouts skip parsing, and never change an answer.

Every test goes through the real server on loopback, sending the exact bytes a client sends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from serving._proto import grpc_service_pb2 as pb
from serving.client import decode_outputs
from serving.templates import RequestTemplates
from tests.serving import onnx_models
from tests.serving.conftest import ServerThread
from tests.serving.helpers import infer_request

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: Templates are a fast_paths shortcut: these tests use the shared server with shortcuts on.
pytestmark = pytest.mark.parametrize("server", [True], indirect=True, ids=["fast-paths"])
Send = Callable[[bytes], pb.ModelInferResponse]


@pytest.fixture
def send(channel: grpc.Channel) -> Send:
    """ModelInfer with the request's bytes exactly as given."""
    call = channel.unary_unary(
        MODEL_INFER,
        request_serializer=lambda b: b,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    return call  # type: ignore[no-any-return]


@pytest.fixture
def templates(server: ServerThread) -> RequestTemplates:
    assert server.server is not None
    return server.server.dataplane.templates


def _bytes(x: np.ndarray, **kwargs: object) -> bytes:
    return infer_request("classifier", {"input": x}, **kwargs).SerializeToString()  # type: ignore[arg-type]


def _probs(response: pb.ModelInferResponse) -> np.ndarray:
    return decode_outputs(response)["output"]


def test_repeated_layout_is_learned_once_and_answers_each_requests_own_values(
    send: Send, templates: RequestTemplates
) -> None:
    rng = np.random.default_rng(7)
    first = rng.normal(size=(3, 4)).astype(np.float32)
    send(_bytes(first))
    learned = len(templates)
    for _ in range(5):
        x = rng.normal(size=(3, 4)).astype(np.float32)
        assert templates.match(_bytes(x)) is not None  # would skip parsing
        response = send(_bytes(x))
        np.testing.assert_allclose(
            _probs(response), onnx_models.classifier_reference(x), rtol=1e-5, atol=1e-6
        )
        assert response.model_name == "classifier" and response.model_version == "1"
    assert len(templates) == learned  # the same layout: nothing new to learn


def test_templated_answer_is_byte_identical_to_the_parsed_one(send: Send) -> None:
    x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    send(_bytes(x))  # learn
    templated = send(_bytes(x))
    # A request id keeps a request off templates (ids differ per request): parsed in full.
    parsed = send(_bytes(x, request_id="check"))
    assert parsed.id == "check" and templated.id == ""
    parsed.id = ""
    assert templated.SerializeToString() == parsed.SerializeToString()


def test_requests_with_ids_are_not_learned(send: Send, templates: RequestTemplates) -> None:
    x = np.ones((4, 4), np.float32)
    before = len(templates)
    for i in range(3):
        assert send(_bytes(x, request_id=f"req-{i}")).id == f"req-{i}"
    assert len(templates) == before


def test_nan_in_a_learned_layout_is_refused_by_name_and_the_next_request_succeeds(
    send: Send, templates: RequestTemplates
) -> None:
    good = np.ones((1, 4), np.float32)
    send(_bytes(good))
    bad = good.copy()
    bad[0, 2] = np.inf
    assert templates.match(_bytes(good)) is not None
    assert templates.match(_bytes(bad)) is None  # the values are checked on every request
    with pytest.raises(grpc.RpcError) as info:
        send(_bytes(bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'input'" in info.value.details() and "NaN or Inf" in info.value.details()
    np.testing.assert_allclose(
        _probs(send(_bytes(good))), onnx_models.classifier_reference(good), rtol=1e-5
    )


def test_same_length_but_another_header_takes_the_full_path(send: Send) -> None:
    x = np.ones((1, 4), np.float32)
    send(_bytes(x))
    # Same length, one header byte changed: the model name no longer names a model.
    wrong = _bytes(x).replace(b"classifier", b"classifiex", 1)
    with pytest.raises(grpc.RpcError) as info:
        send(wrong)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "classifiex" in info.value.details()


def test_fields_out_of_order_are_answered_but_not_learned(
    send: Send, templates: RequestTemplates
) -> None:
    x = np.full((5, 4), 0.5, np.float32)
    request = infer_request("classifier", {"input": x})
    data = request.raw_input_contents[0]
    request.ClearField("raw_input_contents")
    tail = pb.ModelInferRequest(raw_input_contents=[data]).SerializeToString()
    before = len(templates)
    # Protobuf parses fields in any order; the tensor first is the same message.
    raw = tail + request.SerializeToString()
    response = send(raw)
    assert templates.match(raw) is None
    np.testing.assert_allclose(_probs(response), onnx_models.classifier_reference(x), rtol=1e-5)
    assert len(templates) == before


def test_truncated_bytes_of_a_learned_layout_are_refused(send: Send) -> None:
    x = np.ones((1, 4), np.float32)
    raw = _bytes(x)
    send(raw)
    with pytest.raises(grpc.RpcError) as info:
        send(raw[:-3])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert send(raw).model_name == "classifier"


def test_a_full_store_learns_no_new_layout_but_still_replaces_a_reloaded_one(
    monkeypatch: pytest.MonkeyPatch, send: Send, templates: RequestTemplates
) -> None:
    raw = _bytes(np.ones((6, 4), np.float32))
    send(raw)
    hit = templates.match(raw)
    assert hit is not None
    served = hit[0].served
    monkeypatch.setattr("serving.templates.MAX_TEMPLATES", len(templates))
    other = _bytes(np.ones((7, 4), np.float32))
    send(other)
    assert templates.match(other) is None  # full: parsed every time, still answered
    # As after a hot reload: the stored template belongs to a version no longer serving.
    stale = dataclasses.replace(hit[0], served=SimpleNamespace(name="classifier"))
    templates._by_size[len(raw)] = [
        stale if t is hit[0] else t for t in templates._by_size[len(raw)]
    ]
    count = len(templates)
    send(raw)  # matched but stale: parsed, and learned again in place of the stale template
    hit = templates.match(raw)
    assert hit is not None and hit[0].served is served
    assert len(templates) == count
