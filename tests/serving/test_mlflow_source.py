"""The MLflow registry source: a real SQLite store, alias `champion`, and the offline cache."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.client import decode_outputs
from tests.serving import onnx_models
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import infer_request

X = np.array([[0.5, 1.0, -1.0, 2.0]], np.float32)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A SQLite MLflow store with model 'iris' v1 (alias champion) and v2 (no alias)."""
    import mlflow
    import mlflow.onnx
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("RETRIES", "BACKOFF_FACTOR", "TIMEOUT"):  # MlflowSource sets defaults: undo
        key = (
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
            if name == "RETRIES"
            else f"MLFLOW_HTTP_REQUEST_{name}"
        )
        monkeypatch.delenv(key, raising=False)
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("serving", artifact_location=str(tmp_path / "art"))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        for scale in (1.0, 2.0):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.onnx.log_model(
                    onnx_models.classifier(scale), name="model", registered_model_name="iris"
                )
    finally:
        mlflow.set_tracking_uri(previous)
    client.set_registered_model_alias("iris", "champion", "1")
    return uri, client


def _infer(address: str) -> pb.ModelInferResponse:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelInfer(infer_request("iris", {"input": X}))


def _load(address: str, name: str) -> None:
    with grpc.insecure_channel(address) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name=name)
        )


def test_serves_champion_follows_alias_and_survives_registry_outage(
    registry, tmp_path, monkeypatch
):
    uri, client = registry
    cache = tmp_path / "cache"
    settings = make_settings(None, model_repository=None, mlflow_tracking_uri=uri, cache_dir=cache)
    thread = ServerThread(settings).start()
    try:
        response = _infer(thread.address)
        assert response.model_version == "1"
        np.testing.assert_allclose(
            decode_outputs(response)["output"], onnx_models.classifier_reference(X), rtol=1e-5
        )
        client.set_registered_model_alias("iris", "champion", "2")  # the gate promotes v2
        _load(thread.address, "iris")
        response = _infer(thread.address)
        assert response.model_version == "2"
        np.testing.assert_allclose(
            decode_outputs(response)["output"],
            onnx_models.classifier_reference(X, 2.0),
            rtol=1e-5,
        )
    finally:
        thread.stop()
    assert (cache / "iris" / "2" / "model.onnx").is_file()
    assert (cache / "iris" / "champion.json").is_file()

    # MLflow goes down; a restarted server serves the last known champion from the cache.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = make_settings(
        None, model_repository=None, mlflow_tracking_uri="http://127.0.0.1:9", cache_dir=cache
    )
    thread = ServerThread(down).start()
    try:
        response = _infer(thread.address)
        assert response.model_version == "2"
    finally:
        thread.stop()
