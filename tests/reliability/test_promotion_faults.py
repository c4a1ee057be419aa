"""Faults on promotion: a bad version file appears in a directory repository while serving.

The repository's promise (serving/repository.py): a version that fails to load leaves the old one
serving, RepositoryIndex shows the failed version with its reason, one log line says why, and the
same bytes are not retried until they change. Each case below drops ``2/model.onnx`` (or 3, 4)
next to a serving version 1 and polls until the repository has looked at it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.client import decode_outputs
from tests.reliability.conftest import LogCollector, wait_until
from tests.serving import onnx_models
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import infer_request

X = np.array([[0.5, 1.0, -1.0, 2.0]], np.float32)
POLL_S = 0.2


@pytest.fixture
def live_repo(tmp_path: Path, server_log: LogCollector) -> Iterator[tuple[Path, ServerThread]]:
    """A repository serving classifier v1, polled every 0.2 s."""
    root = tmp_path / "repo"
    onnx_models.save(onnx_models.classifier(), root / "classifier" / "1" / "model.onnx")
    thread = ServerThread(make_settings(root, poll_interval_s=POLL_S)).start()
    try:
        yield root, thread
    finally:
        thread.stop()


def _stub(thread: ServerThread) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(thread.address)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _index(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, tuple[str, str]]:
    response = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    return {m.version: (m.state, m.reason) for m in response.models if m.name == "classifier"}


def _wait_failed(stub: pb_grpc.GRPCInferenceServiceStub, version: str) -> str:
    """Wait until ``version`` was tried and failed; return its reason."""

    def failed() -> str:
        state, reason = _index(stub).get(version, ("", ""))
        return reason if state == "UNAVAILABLE" and reason not in ("", "not loaded") else ""

    return str(wait_until(failed, 15, f"version {version} to fail"))


def _assert_v1_serves(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(infer_request("classifier", {"input": X}), timeout=10)
    assert response.model_version == "1"
    np.testing.assert_allclose(
        decode_outputs(response)["output"], onnx_models.classifier_reference(X), rtol=1e-5
    )


def _future_ir_model() -> bytes:
    """Valid protobuf, valid graph, but an IR version this ONNX Runtime cannot read."""
    model = onnx_models.classifier()
    model.ir_version = 99
    return model.SerializeToString()


def _unknown_op_model() -> bytes:
    """A well-formed file using an operator no runtime implements."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["input"], ["output"], domain="com.example")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        ir_version=onnx_models.IR_VERSION,
    )
    return model.SerializeToString()


BAD_FILES = {
    "garbage-bytes": lambda: bytes(range(256)) * 64,
    "empty-file": lambda: b"",
    "truncated-onnx": lambda: onnx_models.classifier().SerializeToString()[:37],
    "future-ir-version": _future_ir_model,
    "unknown-operator": _unknown_op_model,
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_version_file_keeps_old_version_serving(
    live_repo: tuple[Path, ServerThread], server_log: LogCollector, kind: str
) -> None:
    root, thread = live_repo
    channel, stub = _stub(thread)
    with channel:
        _assert_v1_serves(stub)
        target = root / "classifier" / "2" / "model.onnx"
        target.parent.mkdir()
        target.write_bytes(BAD_FILES[kind]())
        reason = _wait_failed(stub, "2")
        assert len(reason) > 10, reason
        assert _index(stub)["1"] == ("READY", "")
        for _ in range(5):  # and it keeps serving, under several more polls
            _assert_v1_serves(stub)
            time.sleep(POLL_S)
        failures = server_log.matching("event=model_load_failed", "version=2")
        assert len(failures) == 1, failures  # said once, not once per poll
        assert "still_serving=1" in failures[0] and "reason=" in failures[0]
        assert "model_loaded" not in " ".join(server_log.matching("version=2"))


def test_fixed_bytes_are_retried_and_promoted(
    live_repo: tuple[Path, ServerThread], server_log: LogCollector
) -> None:
    """A half-copied file fails; when the copy completes (new bytes) the version loads."""
    root, thread = live_repo
    channel, stub = _stub(thread)
    with channel:
        good = onnx_models.classifier(2.0).SerializeToString()
        target = root / "classifier" / "2" / "model.onnx"
        target.parent.mkdir()
        target.write_bytes(good[: len(good) // 2])
        _wait_failed(stub, "2")
        _assert_v1_serves(stub)
        target.write_bytes(good)
        wait_until(lambda: _index(stub).get("2", ("",))[0] == "READY", 15, "v2 to load")
        response = stub.ModelInfer(infer_request("classifier", {"input": X}), timeout=10)
        assert response.model_version == "2"
        np.testing.assert_allclose(
            decode_outputs(response)["output"],
            onnx_models.classifier_reference(X, 2.0),
            rtol=1e-5,
        )


def _wider_input_model() -> onnx.ModelProto:
    """A valid classifier whose input is [batch, 5] where version 1 takes [batch, 4]."""
    w = np.vstack([onnx_models.CLASSIFIER_W, np.zeros((1, 3), np.float32)])
    from onnx import numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", onnx_models.OPSET)],
        ir_version=onnx_models.IR_VERSION,
    )


def test_incompatible_input_shape_is_not_promoted_by_polling(
    live_repo: tuple[Path, ServerThread], server_log: LogCollector
) -> None:
    root, thread = live_repo
    channel, stub = _stub(thread)
    with channel:
        _assert_v1_serves(stub)
        onnx_models.save(_wider_input_model(), root / "classifier" / "2" / "model.onnx")
        # Give the poller time to look at it (it loads cleanly, so this is a fixed wait).
        wait_until(lambda: server_log.matching("version=2", "event=model_lo"), 15, "v2 to be tried")
        time.sleep(3 * POLL_S)
        _assert_v1_serves(stub)  # clients sending [1, 4] must keep working
        state, reason = _index(stub)["2"]
        assert state == "UNAVAILABLE" and "input" in reason, (state, reason)
        # Switching on purpose still works: an explicit load takes the new signature.
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="classifier"))
        wide = infer_request("classifier", {"input": np.ones((1, 5), np.float32)})
        assert stub.ModelInfer(wide, timeout=10).model_version == "2"
