"""The request decoder's fast path agrees with the full one, and leaves every mistake to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from serving._proto import grpc_service_pb2 as pb
from serving.client import encode_inputs
from serving.codecs import (
    CLASSIFICATION,
    Answer,
    ResponseWriter,
    _decode_fast,
    _decode_full,
    decode_request,
    response_message,
)
from serving.errors import InvalidInputError
from serving.runtime import OnnxModel
from serving.signature import ModelSignature, RequestedOutput
from tests.serving import onnx_models

MAX_BATCH = 8


def _signature(tmp_path: Path, build: Callable[[], object], name: str) -> ModelSignature:
    model = OnnxModel(onnx_models.save(build(), tmp_path / f"{name}.onnx"))  # type: ignore[arg-type]
    return ModelSignature(
        name=name,
        inputs=model.inputs,
        outputs=model.outputs,
        metadata=model.metadata,
        max_batch_size=MAX_BATCH,
        batchable=model.batchable,
    )


@pytest.fixture
def image_sig(tmp_path: Path) -> ModelSignature:
    return _signature(tmp_path, onnx_models.image, "image")


def _request(x: np.ndarray, outputs: list[str] | None = None) -> pb.ModelInferRequest:
    request = encode_inputs(pb.ModelInferRequest(model_name="image"), {"input": x})
    for name in outputs or []:
        request.outputs.add(name=name)
    return request


@pytest.mark.parametrize("batch", [1, 3, MAX_BATCH])
@pytest.mark.parametrize("outputs", [None, ["output"]])
def test_fast_path_decodes_what_the_full_path_does(
    image_sig: ModelSignature, batch: int, outputs: list[str] | None
) -> None:
    x = np.random.default_rng(batch).uniform(0, 255, (batch, 1, 8, 8)).astype(np.float32)
    request = _request(x, outputs)
    fast, full = _decode_fast(request, image_sig), _decode_full(request, image_sig)
    assert fast is not None
    assert fast.batch_size == full.batch_size == batch
    assert fast.requested == full.requested and fast.raw == full.raw
    assert fast.signature == full.signature  # so fast and full requests share batches
    np.testing.assert_array_equal(fast.feeds["input"], full.feeds["input"])
    np.testing.assert_array_equal(fast.feeds["input"], x)


def _nan(r: pb.ModelInferRequest) -> None:
    r.raw_input_contents[0] = np.full((1, 1, 8, 8), np.nan, np.float32).tobytes()


def _mixed(r: pb.ModelInferRequest) -> None:
    r.inputs[0].contents.fp32_contents.extend([0.0] * 64)


def _top2(r: pb.ModelInferRequest) -> None:
    r.outputs.add(name="output").parameters[CLASSIFICATION].int64_param = 2


MISTAKES: dict[str, tuple[Callable[[pb.ModelInferRequest], object], str]] = {
    "NaN": (_nan, "NaN or Inf"),
    "wrong shape": (
        lambda r: (
            r.inputs[0].shape.__setitem__(2, 7),
            r.raw_input_contents.__setitem__(0, b"\0" * 4 * 56),
        ),
        "shape does not match",
    ),
    "short bytes": (
        lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 10),
        "byte size does not match",
    ),
    "wrong datatype": (lambda r: setattr(r.inputs[0], "datatype", "FP64"), "wrong datatype"),
    "wrong name": (lambda r: setattr(r.inputs[0], "name", "pixels"), "unknown input"),
    "typed and raw": (_mixed, "mixed in one request"),
    "unknown output": (lambda r: r.outputs.add(name="logits"), "unknown output"),
    "too big a batch": (
        lambda r: (
            r.inputs[0].shape.__setitem__(0, MAX_BATCH + 1),
            r.raw_input_contents.__setitem__(0, b"\0" * 4 * 64 * (MAX_BATCH + 1)),
        ),
        "larger than max_batch_size",
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_fast_path_leaves_every_mistake_to_the_full_path(
    image_sig: ModelSignature, mistake: str
) -> None:
    change, message = MISTAKES[mistake]
    request = _request(np.zeros((1, 1, 8, 8), np.float32))
    change(request)
    assert _decode_fast(request, image_sig) is None
    with pytest.raises(InvalidInputError, match=message):
        decode_request(request, image_sig)


def test_classification_request_takes_the_full_path(image_sig: ModelSignature) -> None:
    request = _request(np.zeros((2, 1, 8, 8), np.float32))
    _top2(request)
    assert _decode_fast(request, image_sig) is None
    assert decode_request(request, image_sig).requested[0].classification == 2


@pytest.mark.filterwarnings("ignore:overflow encountered in dot")  # pytest resets our filter
def test_huge_but_finite_values_pass(image_sig: ModelSignature) -> None:
    x = np.full((1, 1, 8, 8), 3e38, np.float32)  # a float32 sum would overflow; the values do not
    decoded = decode_request(_request(x), image_sig)
    np.testing.assert_array_equal(decoded.feeds["input"], x)


@pytest.mark.parametrize("build", ["two-io", "next-token", "dtypes"])
def test_models_outside_the_fast_shape_have_no_fast_path(tmp_path: Path, build: str) -> None:
    assert _signature(tmp_path, onnx_models.ALL[build], build).fast_input is None


@pytest.mark.parametrize("request_id", ["", "req-7"])
@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("top", [0, 2])
def test_response_bytes_parse_to_the_response_message(
    tmp_path: Path, request_id: str, typed: bool, top: int
) -> None:
    sig = _signature(tmp_path, onnx_models.two_in_two_out, "two-io")
    writer = ResponseWriter()
    rng = np.random.default_rng(top)
    for batch in (1, 3, 3):  # a repeated shape would reuse a cached header
        outputs = {s.name: rng.normal(size=(batch, 2)).astype(np.float32) for s in sig.outputs}
        requested = [RequestedOutput(s.name, top) for s in reversed(sig.outputs)]
        answer = Answer(sig, "4", request_id, outputs, requested, typed)
        assert pb.ModelInferResponse.FromString(writer.write(answer)) == response_message(answer)
    assert len(writer) == 0  # two outputs: the ordinary path


@pytest.mark.parametrize("request_id", ["", "req-7"])
@pytest.mark.parametrize("fast", [True, False])
def test_one_output_response_reuses_its_header(tmp_path: Path, request_id: str, fast: bool) -> None:
    sig = _signature(tmp_path, onnx_models.image, "image")
    writer = ResponseWriter(fast=fast)
    for batch in (1, 3, 3, 1):
        outputs = {"output": np.random.default_rng(batch).random((batch, 2), np.float32)}
        answer = Answer(sig, "2", request_id, outputs, sig.all_outputs)
        assert pb.ModelInferResponse.FromString(writer.write(answer)) == response_message(answer)
    assert len(writer) == (2 if fast else 0)  # batch 1 and batch 3, only as a shortcut


def test_bytes_outputs_are_encoded_whole(tmp_path: Path) -> None:
    sig = _signature(tmp_path, onnx_models.dtypes, "dtypes")
    writer = ResponseWriter()
    outputs = {"y_bytes": np.array([[b"a", b"bc"]], dtype=object)}
    answer = Answer(sig, "1", "x", outputs, [RequestedOutput("y_bytes")])
    assert pb.ModelInferResponse.FromString(writer.write(answer)) == response_message(answer)
    assert len(writer) == 0
