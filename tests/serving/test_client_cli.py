"""Our sync/async clients and the predict/serve command lines."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from serving.cli import predict_main, settings_from_args
from serving.client import (
    AsyncInferenceClient,
    InferenceClient,
    InvalidRequestError,
    NotFoundError,
    Prediction,
)
from tests.serving import onnx_models

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)


def test_sync_client(server):
    with InferenceClient(server.address) as client:
        assert client.live() and client.ready() and client.model_ready("classifier")
        assert client.server_metadata().name == "neuroserve"
        assert client.model_config("classifier").config.max_batch_size == 8
        probs = client.predict("classifier", X)
        np.testing.assert_allclose(probs, onnx_models.classifier_reference(X), rtol=1e-5)
        single = client.predict("classifier", X[0].astype(np.float64))  # no batch axis, float64
        assert single.shape == (3,)
        top = client.top_k("classifier", X, k=2)
        assert len(top) == 2 and len(top[0]) == 2
        assert isinstance(top[0][0], Prediction)
        assert top[0][0].label in onnx_models.CLASS_LABELS
        assert top[0][0].score >= top[0][1].score
        words = client.top_k("next-token", "the cat", k=3)
        assert words[0][0].label == "sat"
        out = client.infer(
            "two-io",
            {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.float32)},
            raw=False,
        )
        np.testing.assert_array_equal(out["sum"], [[2, 2]])
        with pytest.raises(NotFoundError, match="'nope'"):
            client.predict("nope", X)
        with pytest.raises(InvalidRequestError, match="shape"):
            client.infer("classifier", {"input": np.ones((1, 7), np.float32)})


def test_async_client(server):
    async def scenario():
        async with AsyncInferenceClient(server.address) as client:
            assert await client.ready()
            results = await asyncio.gather(*(client.predict("classifier", X) for _ in range(8)))
            top = await client.top_k("image", np.full((1, 8, 8), 250.0), k=1)
            return results, top

    results, top = asyncio.run(scenario())
    for probs in results:
        np.testing.assert_allclose(probs, onnx_models.classifier_reference(X), rtol=1e-5)
    assert top[0][0].label == "bright"


def test_predict_cli_npy_csv_image_txt(server, tmp_path, capsys):
    npy = tmp_path / "x.npy"
    np.save(npy, X)
    assert predict_main(["classifier", "--input", str(npy), "--url", server.address]) == 0
    out = capsys.readouterr().out
    assert "setosa" in out or "versicolor" in out or "virginica" in out

    csv = tmp_path / "x.csv"
    csv.write_text("a,b,c,d\n" + "\n".join(",".join(str(v) for v in row) for row in X))
    assert predict_main(["classifier", "-i", str(csv), "-k", "1", "--url", server.address]) == 0
    assert capsys.readouterr().out.count("1 ") >= 1

    png = tmp_path / "white.png"
    Image.new("L", (16, 16), color=255).save(png)
    assert predict_main(["image", "--input", str(png), "--url", server.address]) == 0
    assert "bright" in capsys.readouterr().out

    txt = tmp_path / "t.txt"
    txt.write_text("the cat\nthe dog ran\n")
    argv = ["next-token", "--input", str(txt), "-k", "2", "--url", server.address]
    assert predict_main(argv) == 0
    out = capsys.readouterr().out
    assert "sat" in out

    reg = tmp_path / "r.npy"
    np.save(reg, np.ones((2, 3), np.float32))
    assert predict_main(["regressor", "--input", str(reg), "--url", server.address]) == 0
    assert "[[" in capsys.readouterr().out

    assert predict_main(["nope", "--input", str(npy), "--url", server.address]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_serve_flags_follow_triton_names(monkeypatch, tmp_path):
    monkeypatch.setenv("NEUROSERVE_METRICS_PORT", "9102")
    settings = settings_from_args(
        [
            "--model-repository", str(tmp_path), "--grpc-port", "9001", "--host", "0.0.0.0",
            "--max-batch-size", "16", "--max-queue-delay-us", "250", "--workers", "2",
            "--auth-token", "t", "--providers", "CPUExecutionProvider", "--model", "a,b",
            "--no-batching", "--poll-interval", "5", "--preferred-batch-sizes", "4,8",
        ]
    )  # fmt: skip
    assert settings.model_repository == tmp_path
    assert (settings.grpc_port, settings.metrics_port, settings.host) == (9001, 9102, "0.0.0.0")
    assert (settings.max_batch_size, settings.max_queue_delay_us, settings.workers) == (16, 250, 2)
    assert settings.auth_token is not None and settings.auth_token.get_secret_value() == "t"
    assert settings.providers == ["CPUExecutionProvider"]
    assert settings.model_names == ["a", "b"]
    assert settings.preferred_batch_sizes == [4, 8]
    assert not settings.dynamic_batching
    assert settings.poll_interval_s == 5
    defaults = settings_from_args([])
    assert (defaults.grpc_port, defaults.host, defaults.model_repository) == (
        8001,
        "127.0.0.1",
        None,
    )
    assert defaults.max_message_bytes == 64 * 1024 * 1024


def test_home_and_tracking_uri(monkeypatch, tmp_path):
    from serving.settings import Settings, default_tracking_uri, home_dir

    monkeypatch.setenv("NEUROSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert home_dir() == tmp_path / "home"
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    settings = Settings()
    assert settings.tracking_uri() == default_tracking_uri()
    assert settings.resolved_cache_dir() == tmp_path / "home" / "cache"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert Settings().tracking_uri() == "http://mlflow:5000"
