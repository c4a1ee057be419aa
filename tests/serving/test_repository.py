"""Hot reload under load, failed loads keeping the old version, and repository safety."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.client import decode_outputs
from serving.errors import InvalidNameError
from serving.sources import DirectorySource, validate_model_name, validate_version
from tests.serving import onnx_models
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import infer_request

X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


def _drop(root: Path, version: int, payload: bytes) -> None:
    """Publish a version atomically (write aside, then rename into place)."""
    target = root / "classifier" / str(version)
    target.mkdir(parents=True)
    tmp = target / "model.onnx.partial"
    tmp.write_bytes(payload)
    tmp.replace(target / "model.onnx")


def _wait_for(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def reload_server(tmp_path):
    onnx_models.save(onnx_models.classifier(), tmp_path / "classifier" / "1" / "model.onnx")
    thread = ServerThread(make_settings(tmp_path, poll_interval_s=0.2)).start()
    channel = grpc.insecure_channel(thread.address)
    yield tmp_path, pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
    thread.stop()


def test_hot_reload_under_load_then_corrupt_version_keeps_serving(reload_server):
    root, stub = reload_server
    failures: list[str] = []
    seen: dict[str, int] = {}
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                response = stub.ModelInfer(infer_request("classifier", {"input": X}))
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
                continue
            version = response.model_version
            scale = float(version)
            want = onnx_models.classifier_reference(X, scale)
            if not np.allclose(decode_outputs(response)["output"], want, rtol=1e-5, atol=1e-6):
                failures.append(f"version {version} answered with another version's weights")
            seen[version] = seen.get(version, 0) + 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        _wait_for(lambda: seen.get("1", 0) > 20)
        _drop(root, 2, onnx_models.classifier(scale=2.0).SerializeToString())
        _wait_for(lambda: seen.get("2", 0) > 20)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert seen["1"] > 0 and seen["2"] > 0

    _drop(root, 3, b"this is not an onnx protobuf")

    def v3_failed() -> bool:
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        return any(m.version == "3" and m.state == "UNAVAILABLE" and m.reason for m in index)

    _wait_for(v3_failed)
    index = {m.version: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index["2"].state == "READY"
    assert index["3"].state == "UNAVAILABLE"
    assert "INVALID_PROTOBUF" in index["3"].reason
    assert index["1"].state == "UNAVAILABLE"
    assert "replaced by version 2" in index["1"].reason
    response = stub.ModelInfer(infer_request("classifier", {"input": X}))
    assert response.model_version == "2"
    assert stub.ModelReady(pb.ModelReadyRequest(name="classifier")).ready

    # An explicit load retries and reports the failure with its reason.
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="classifier"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "version 3" in info.value.details()
    assert stub.ModelInfer(infer_request("classifier", {"input": X})).model_version == "2"


def test_first_version_corrupt_falls_back_to_older(tmp_path):
    onnx_models.save(onnx_models.classifier(), tmp_path / "classifier" / "1" / "model.onnx")
    (tmp_path / "classifier" / "2").mkdir()
    (tmp_path / "classifier" / "2" / "model.onnx").write_bytes(b"\x00garbage")
    thread = ServerThread(make_settings(tmp_path)).start()
    try:
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            response = stub.ModelInfer(infer_request("classifier", {"input": X}))
            assert response.model_version == "1"
    finally:
        thread.stop()


def test_directory_source_ignores_unsafe_entries(tmp_path):
    root = tmp_path / "repo"
    onnx_models.save(onnx_models.regressor(), root / "good" / "1" / "model.onnx")
    onnx_models.save(onnx_models.regressor(), tmp_path / "outside" / "1" / "model.onnx")
    (root / "escape").symlink_to(tmp_path / "outside")
    onnx_models.save(onnx_models.regressor(), root / ".hidden" / "1" / "model.onnx")
    onnx_models.save(onnx_models.regressor(), root / "good" / "latest" / "model.onnx")
    onnx_models.save(onnx_models.regressor(), root / "good" / "0" / "model.onnx")
    (root / "good" / "2").mkdir()
    (root / "good" / "2" / "model.pkl").write_bytes(b"never loaded")
    found = DirectorySource(root).scan()
    assert list(found) == ["good"]
    assert [c.version for c in found["good"]] == ["1"]


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", ".x", "a\\b", "a b"])
def test_model_name_validation(name):
    with pytest.raises(InvalidNameError):
        validate_model_name(name)


@pytest.mark.parametrize("version", ["0", "-1", "1/..", "01", "v1", ""])
def test_version_validation(version):
    with pytest.raises(InvalidNameError):
        validate_version(version)


def test_version_with_different_inputs_needs_an_explicit_load(reload_server):
    root, stub = reload_server
    changed = onnx_models.regressor()  # input [batch, 3] instead of the classifier's [batch, 4]
    _drop(root, 2, changed.SerializeToString())

    def refused() -> bool:
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        return any(m.version == "2" and "inputs differ" in m.reason for m in index)

    _wait_for(refused)
    assert stub.ModelInfer(infer_request("classifier", {"input": X})).model_version == "1"
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="classifier"))
    response = stub.ModelInfer(infer_request("classifier", {"input": np.ones((1, 3), np.float32)}))
    assert response.model_version == "2"
