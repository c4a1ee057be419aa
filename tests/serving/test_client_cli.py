"""Our sync/async clients and the predict/serve command lines."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
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
from tests.blocking import HEAVY, NEUROSERVE, run_blocked
from tests.serving import onnx_models
from tests.serving.conftest import ServerThread

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)


def test_sync_client(server: ServerThread) -> None:
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


def test_async_client(server: ServerThread) -> None:
    async def scenario() -> tuple[list[np.ndarray], list[list[Prediction]]]:
        async with AsyncInferenceClient(server.address) as client:
            assert await client.ready()
            results = await asyncio.gather(*(client.predict("classifier", X) for _ in range(8)))
            top = await client.top_k("image", np.full((1, 8, 8), 250.0), k=1)
            return results, top

    results, top = asyncio.run(scenario())
    for probs in results:
        np.testing.assert_allclose(probs, onnx_models.classifier_reference(X), rtol=1e-5)
    assert top[0][0].label == "bright"


# --------------------------------------------------------------------------- neuroserve predict
# Each test feeds one file kind to ``predict`` and checks every printed value against ONNX
# Runtime run directly on the same model file with the input the file should decode to.
def _reference(model_repo: Path, model: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The model's first output for ``feeds``, from onnxruntime on the served file."""
    session = ort.InferenceSession(
        str(model_repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(None, feeds)[0])


def _printed_rows(out: str) -> list[tuple[int, int, str, int, float]]:
    """The (example, rank, label, index, score) rows of the table ``predict`` prints."""
    rows = []
    for line in out.splitlines():
        if line.startswith("│"):
            example, rank, label, index, score = (c.strip() for c in line.strip("│").split("│"))
            rows.append((int(example), int(rank), label, int(index), float(score)))
    assert rows, f"no table in the output:\n{out}"
    return rows


def _assert_top_k(out: str, probs: np.ndarray, labels: list[str], k: int) -> None:
    """``out`` lists, per example, the ``k`` best classes of ``probs`` in order with their scores
    (ties: the lower index first, the server's stable order), printed to 4 decimals."""
    want = [
        (i, rank, labels[c], int(c), float(row[c]))
        for i, row in enumerate(probs)
        for rank, c in enumerate(np.argsort(-row, kind="stable")[:k], 1)
    ]
    got = _printed_rows(out)
    assert [r[:4] for r in got] == [r[:4] for r in want], out
    np.testing.assert_allclose([r[4] for r in got], [r[4] for r in want], rtol=0, atol=6e-5)


def test_predict_npy_prints_the_top_3_classes(
    server: ServerThread, model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, X)
    assert predict_main(["classifier", "--input", str(npy), "--url", server.address]) == 0
    probs = _reference(model_repo, "classifier", {"input": X})
    _assert_top_k(capsys.readouterr().out, probs, onnx_models.CLASS_LABELS, k=3)


def test_neuroserve_predict_needs_no_torch_training_prefect_or_mlflow(
    server: ServerThread, model_repo: Path, tmp_path: Path
) -> None:
    """The console script, in a process where the heavy packages cannot be imported."""
    npy = tmp_path / "x.npy"
    np.save(npy, X)
    argv = ["neuroserve", "predict", "classifier", "-i", str(npy), "--url", server.address]
    result = run_blocked(NEUROSERVE, argv, blocked=(*HEAVY, "mlflow"))
    assert result.returncode == 0, result.stderr[-3000:]
    probs = _reference(model_repo, "classifier", {"input": X})
    _assert_top_k(result.stdout, probs, onnx_models.CLASS_LABELS, k=3)


def test_predict_csv_skips_the_header_and_honours_top_k(
    server: ServerThread, model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("a,b,c,d\n" + "\n".join(",".join(str(v) for v in row) for row in X))
    assert predict_main(["classifier", "-i", str(csv), "-k", "1", "--url", server.address]) == 0
    probs = _reference(model_repo, "classifier", {"input": X})
    _assert_top_k(capsys.readouterr().out, probs, onnx_models.CLASS_LABELS, k=1)


def test_predict_image_is_resized_to_the_model_input(
    server: ServerThread, model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "grey.png"
    Image.new("L", (16, 16), color=140).save(png)  # uniform: every 8x8 pixel stays 140
    assert predict_main(["image", "--input", str(png), "--url", server.address]) == 0
    probs = _reference(model_repo, "image", {"input": np.full((1, 1, 8, 8), 140, np.float32)})
    _assert_top_k(capsys.readouterr().out, probs, ["dark", "bright"], k=2)


def test_predict_txt_tokenizes_each_line(
    server: ServerThread, model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    txt = tmp_path / "t.txt"
    txt.write_text("the cat\nthe dog ran\n")
    argv = ["next-token", "--input", str(txt), "-k", "2", "--url", server.address]
    assert predict_main(argv) == 0
    padded = [["<pad>", "the", "cat"], ["the", "dog", "ran"]]  # left-padded to one length
    ids = [[onnx_models.VOCAB.index(token) for token in line] for line in padded]
    probs = _reference(model_repo, "next-token", {"input": np.array(ids, np.int64)})
    _assert_top_k(capsys.readouterr().out, probs, onnx_models.VOCAB, k=2)


def test_predict_prints_a_regressors_values(
    server: ServerThread, model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.array([[1, 2, 3], [-0.5, 0, 4]], np.float32)
    reg = tmp_path / "r.npy"
    np.save(reg, x)
    assert predict_main(["regressor", "--input", str(reg), "--url", server.address]) == 0
    out = capsys.readouterr().out
    want = _reference(model_repo, "regressor", {"input": x})
    rows = [re.findall(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?", line) for line in out.splitlines()]
    assert [len(r) for r in rows] == [want.shape[1]] * want.shape[0], out
    np.testing.assert_allclose(np.array(rows, float), want, rtol=0, atol=1e-6)


def test_predict_unknown_model_exits_1_naming_it(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, X)
    assert predict_main(["nope", "--input", str(npy), "--url", server.address]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "NOT_FOUND" in captured.err and "'nope'" in captured.err, captured.err


def test_serve_flags_follow_triton_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
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


def test_home_and_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
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


def test_predict_sends_a_file_larger_than_max_batch_size_in_several_requests(
    server: ServerThread, model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The classifier takes at most 8 per request; a 21-row file is answered row for row."""
    x = np.random.default_rng(3).normal(5, 1.5, (21, 4)).astype(np.float32)
    npy = tmp_path / "many.npy"
    np.save(npy, x)
    assert predict_main(["classifier", "--input", str(npy), "--url", server.address]) == 0
    probs = _reference(model_repo, "classifier", {"input": x})
    _assert_top_k(capsys.readouterr().out, probs, onnx_models.CLASS_LABELS, k=3)


def test_serve_on_a_taken_port_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "serving", "--model-repository", str(tmp_path),
             "--grpc-port", str(port), "--http-port", "-1", "--metrics-port", "0"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"could not bind gRPC port 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
