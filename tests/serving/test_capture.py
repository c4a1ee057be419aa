"""Inference capture (serving/capture.py) on real servers on loopback, into real Parquet files.

Servers run in this process (tests/serving/conftest.py) unless a test needs a process of its own
(what a server imports, a server killed outright); S3 is a real ``moto`` server process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving import capture as cap
from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.cli import serve_main
from serving.metrics import ServerMetrics
from serving.runtime import TensorSpec
from tests.integration.stack import S3
from tests.ports import free_port
from tests.serving import onnx_models
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import infer_request
from tests.serving.test_http import call, infer_body

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers
class Captured:
    """A server with capture on, a stub on it, and its capture directory."""

    def __init__(self, model_repo: Path, directory: Path | str, **settings: Any) -> None:
        self.directory = directory
        self.thread = ServerThread(
            make_settings(model_repo, capture_dir=str(directory), **settings)
        ).start()
        self.channel = grpc.insecure_channel(self.thread.address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    @property
    def http_port(self) -> int:
        assert self.thread.server is not None and self.thread.server.http_port is not None
        return self.thread.server.http_port

    def infer(self, model: str, inputs: dict[str, np.ndarray], **kw: Any) -> pb.ModelInferResponse:
        return self.stub.ModelInfer(infer_request(model, inputs, **kw), timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        assert self.thread.server is not None
        value = self.thread.server.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def stop(self) -> None:
        self.channel.close()
        self.thread.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def files(directory: Path) -> list[Path]:
    """The visible (complete) capture files below ``directory``."""
    return sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))


def layout_of(table: pa.Table) -> dict[str, Any]:
    return json.loads(table.schema.metadata[cap.SCHEMA_KEY])


# --------------------------------------------------------------------------- off
OFF_PROBE = """
import sys, threading, numpy as np, grpc, asyncio
from serving.server import create_server
from serving.settings import Settings
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from tests.serving.helpers import infer_request

async def main(rate):
    server = create_server(Settings(model_repository=sys.argv[1], grpc_port=0, http_port=0,
        metrics_port=-1, poll_interval_s=0, capture_rate=rate, capture_dir=sys.argv[2]))
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as ch:
        await pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
            infer_request("classifier", {"input": np.ones((2, 4), np.float32)}), timeout=10)
    threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("neuroserve"))
    print("pyarrow" in sys.modules, threads)
    await server.stop(0)

asyncio.run(main(float(sys.argv[3])))
"""


@pytest.mark.parametrize("rate", [0.0, 1.0], ids=["off", "on"])
def test_capture_off_costs_no_import_no_thread_no_file(
    model_repo: Path, tmp_path: Path, rate: float
) -> None:
    """Off (the default): after serving a request the process has not imported pyarrow, runs no
    capture thread and has written nothing; on, the same probe sees all three (so it can tell)."""
    out = subprocess.run(
        [sys.executable, "-c", OFF_PROBE, str(model_repo), str(tmp_path / "cap"), str(rate)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    if rate == 0:
        assert out == "False []"
        assert not (tmp_path / "cap").exists()
    else:
        assert out == "True ['neuroserve-capture']"
        assert len(files(tmp_path / "cap")) == 1


# --------------------------------------------------------------------------- what is captured
@pytest.fixture(scope="module", params=[True, False], ids=["fast-paths", "plain-path"])
def everything(
    model_repo: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Captured, dict[str, Any]]]:
    """One server capturing every request; requests of every kind sent over gRPC (raw with and
    without ids, so templates are learned and hit, and typed) and REST; then stopped, so every
    file is closed. Yields the server and what was sent."""
    server = Captured(
        model_repo, tmp_path_factory.mktemp("cap"), capture_rate=1.0, fast_paths=request.param
    )
    rng = np.random.default_rng(3)
    sent: dict[str, Any] = {"table": {}, "trace": {}}
    for i in range(4):  # with ids
        x = rng.normal(size=(3, 4)).astype(np.float32)
        server.infer("classifier", {"input": x}, request_id=f"grpc-{i}")
        sent["table"][f"grpc-{i}"] = x
    same = rng.normal(size=(2, 4)).astype(np.float32)
    for _ in range(5):  # no id: the same layout, a template hit on the fast path
        server.infer("classifier", {"input": same})
    sent["no_id"] = same
    typed = rng.normal(size=(1, 4)).astype(np.float32)
    server.infer("classifier", {"input": typed}, raw=False, request_id="typed")
    sent["table"]["typed"] = typed
    for binary in (True, False):
        x = rng.normal(size=(2, 4)).astype(np.float32)
        rid = f"rest-{binary}"
        trace_id = f"{rng.integers(1, 2**63):032x}"
        body, headers = infer_body({"input": x}, binary=binary)
        header = json.loads(body[: int(headers.get("Inference-Header-Content-Length", len(body)))])
        header["id"] = rid
        head = json.dumps(header).encode()
        if binary:
            body = head + x.tobytes()
            headers["Inference-Header-Content-Length"] = str(len(head))
        else:
            body = head
        headers["traceparent"] = f"00-{trace_id}-{'ab' * 8}-01"
        reply = call(server.http_port, "POST", "/v2/models/classifier/infer", body, headers)
        assert reply.status == 200, reply.body
        sent["table"][rid] = x
        sent["trace"][rid] = trace_id
    sent["image"] = rng.uniform(0, 255, size=(3, 1, 8, 8)).astype(np.float32)
    server.infer("image", {"input": sent["image"]})
    sent["text"] = "the cat sat on the zebra"
    server.infer("next-token", {"input": np.array([[sent["text"].encode()]], dtype=object)})
    server.infer("next-token", {"input": np.array([[2, 3, 4]], np.int64)}, request_id="ids")
    server.infer("regressor", {"input": np.ones((2, 3), np.float32)})
    server.stop()
    yield server, sent


def test_every_row_of_every_request_is_captured_as_sent(
    everything: tuple[Captured, dict[str, Any]],
) -> None:
    """Rate 1: one row per batch item, model, version, request id, arrival time and latency;
    the table inputs equal what was sent (gRPC raw, template hits, typed; REST JSON and
    binary), outputs are the model's, predictions its top label; REST traceparent's trace id."""
    server, sent = everything
    table = cap.read_captures(server.directory, "classifier")
    df = table.to_pandas()
    assert len(df) == sum(len(x) for x in sent["table"].values()) + 5 * len(sent["no_id"])
    assert set(df["model"]) == {"classifier"} and set(df["version"]) == {"1"}
    assert set(df["source"]) == {cap.SERVING}
    assert (df["latency_ms"] > 0).all()
    assert df["timestamp"].is_monotonic_increasing
    assert abs(df["timestamp"].iloc[-1] - datetime.now(UTC)) < timedelta(minutes=5)
    features = [f"input.{j}" for j in range(4)]
    for rid, x in sent["table"].items():
        rows = df[df["request_id"] == rid].sort_values("row")
        assert list(rows["row"]) == list(range(len(x))), rid
        np.testing.assert_array_equal(rows[features].to_numpy(np.float32), x)
        probs = onnx_models.classifier_reference(x)
        labels = [f"output.{name}" for name in onnx_models.CLASS_LABELS]
        np.testing.assert_allclose(rows[labels].to_numpy(), probs, rtol=1e-5, atol=1e-6)
        best = [onnx_models.CLASS_LABELS[i] for i in probs.argmax(axis=1)]
        assert list(rows["prediction"]) == best
        np.testing.assert_allclose(rows["prediction.score"], probs.max(axis=1), rtol=1e-5)
        traces = [r["trace_id"] for r in table.to_pylist() if r["request_id"] == rid]
        assert traces == [sent["trace"].get(rid)] * len(x)
    anonymous = df[df["request_id"].isna()]
    assert len(anonymous) == 5 * len(sent["no_id"])
    np.testing.assert_array_equal(
        anonymous[features].to_numpy(np.float32), np.tile(sent["no_id"], (5, 1))
    )
    layout = layout_of(table)
    assert layout["prediction"] == "categorical"
    assert layout["tensors"][0]["columns"] == features


def test_images_are_captured_as_pixel_statistics_by_default(
    everything: tuple[Captured, dict[str, Any]],
) -> None:
    server, sent = everything
    df = cap.read_captures(server.directory, "image").to_pandas().sort_values("row")
    x = sent["image"].reshape(3, -1)
    assert "input" not in df.columns  # no pixels
    np.testing.assert_allclose(df["input.mean"], x.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(df["input.std"], x.std(axis=1), rtol=1e-4)
    np.testing.assert_allclose(df["input.min"], x.min(axis=1))
    np.testing.assert_allclose(df["input.max"], x.max(axis=1))
    np.testing.assert_allclose(df["input.p50"], np.median(x, axis=1), rtol=1e-5)
    assert set(df["prediction"]) <= {"dark", "bright"}


def test_text_is_captured_as_the_token_ids_the_model_received(
    everything: tuple[Captured, dict[str, Any]],
) -> None:
    """Text sent as a sentence is captured tokenized (as the model got it), unknown words as
    the unknown token, with the share of unknown tokens; ids sent as ids stay as they were."""
    server, sent = everything
    df = cap.read_captures(server.directory, "next-token").to_pandas()
    vocab = onnx_models.VOCAB
    text = df[df["request_id"].isna()].iloc[0]
    words = sent["text"].split()
    assert list(text["input"]) == [vocab.index(w) if w in vocab else 1 for w in words]
    assert text["input.length"] == len(words)
    assert text["input.unk_rate"] == pytest.approx(1 / len(words))
    ids = df[df["request_id"] == "ids"].iloc[0]
    assert list(ids["input"]) == [2, 3, 4] and ids["input.unk_rate"] == 0
    assert ids["prediction"] == "on"  # the model predicts the next id: 'sat' -> 'on'


def test_regression_predictions_are_values(everything: tuple[Captured, dict[str, Any]]) -> None:
    server, _ = everything
    df = cap.read_captures(server.directory, "regressor").to_pandas()
    expected = float((np.ones((1, 3), np.float32) @ onnx_models.REGRESSOR_W)[0, 0])
    assert df["prediction"].tolist() == pytest.approx([expected, expected])
    assert layout_of(cap.read_captures(server.directory, "regressor"))["prediction"] == (
        "numerical"
    )


def test_uncaptured_models_have_no_files(everything: tuple[Captured, dict[str, Any]]) -> None:
    server, _ = everything
    assert set(cap.captured_models(server.directory)) == {
        "classifier", "image", "next-token", "regressor",
    }  # fmt: skip
    assert cap.read_captures(server.directory, "lookup").num_rows == 0


def test_pixels_when_asked(model_repo: Path, tmp_path: Path) -> None:
    server = Captured(model_repo, tmp_path, capture_rate=1.0, capture_images="pixels")
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 1, 8, 8)).astype(np.float32)
    server.infer("image", {"input": x})
    server.stop()
    df = cap.read_captures(tmp_path, "image").to_pandas().sort_values("row")
    np.testing.assert_array_equal(np.stack(df["input"].to_list()), x.reshape(2, -1))
    np.testing.assert_allclose(df["input.mean"], x.reshape(2, -1).mean(axis=1), rtol=1e-5)


def test_grpc_trace_id_with_tracing_on(model_repo: Path, tmp_path: Path) -> None:
    """With tracing on, gRPC reads the caller's traceparent and the row carries its trace id."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from serving import tracing

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracing, "exporter_override", InMemorySpanExporter())
        server = Captured(model_repo, tmp_path, capture_rate=1.0, trace_rate=1.0)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    request = infer_request("classifier", {"input": np.ones((1, 4), np.float32)})
    server.stub.ModelInfer(
        request, timeout=10, metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")]
    )
    server.infer("classifier", {"input": np.ones((1, 4), np.float32)}, request_id="own")
    server.stop()
    df = cap.read_captures(tmp_path, "classifier").to_pandas()
    assert df[df["request_id"].isna()]["trace_id"].tolist() == [trace_id]
    own = df[df["request_id"] == "own"]["trace_id"].iloc[0]  # the trace the server started
    assert isinstance(own, str) and len(own) == 32 and own != trace_id


# --------------------------------------------------------------------------- sampling
def test_per_model_rates(model_repo: Path, tmp_path: Path) -> None:
    """``0,classifier=1``: only the classifier; ``regressor=0.5``: about half its requests."""
    server = Captured(model_repo, tmp_path, capture_rate="0,classifier=1,regressor=0.5")
    for i in range(10):
        server.infer("classifier", {"input": np.ones((1, 4), np.float32)}, request_id=str(i))
        server.infer("image", {"input": np.ones((1, 1, 8, 8), np.float32)})
    for _ in range(400):
        server.infer("regressor", {"input": np.ones((1, 3), np.float32)})
    server.stop()
    assert set(cap.captured_models(tmp_path)) == {"classifier", "regressor"}
    assert cap.read_captures(tmp_path, "classifier").num_rows == 10
    assert 140 <= cap.read_captures(tmp_path, "regressor").num_rows <= 260  # ±6 sd


def test_the_buffer_is_bounded_and_drops_are_counted(model_repo: Path, tmp_path: Path) -> None:
    """A writer that never catches up (not started): offers beyond the buffer's bytes are
    dropped and counted per model, the buffer never holds more than its bound, and once the
    writer runs exactly the accepted rows are written."""
    server = ServerThread(make_settings(model_repo)).start()
    assert server.server is not None
    served = server.server.repository.get("classifier", "")
    server.stop()
    settings = make_settings(
        model_repo, capture_rate=1.0, capture_dir=str(tmp_path), capture_buffer_mb=0.01
    )
    metrics = ServerMetrics()
    capture = cap.Capture(settings, metrics.capture_metrics())
    limit = int(0.01 * (1 << 20))
    x = np.ones((3, 4), np.float32)
    y = np.ones((3, 3), np.float32)
    for i in range(1000):
        capture.offer(served, str(i), None, None, {"input": x}, {"output": y}, 3, i, i + 1)
        assert capture.buffered_bytes <= limit
    accepted = len(capture._queue)
    per_record = cap.RECORD_OVERHEAD + x.nbytes + y.nbytes
    assert accepted == limit // per_record
    dropped = metrics.registry.get_sample_value(
        "neuroserve_capture_dropped_total", {"model": "classifier", "reason": "buffer_full"}
    )
    assert dropped == (1000 - accepted) * 3
    capture.start()
    capture.close()
    assert cap.read_captures(tmp_path, "classifier").num_rows == accepted * 3
    assert capture.buffered_bytes == 0
    rows = metrics.registry.get_sample_value(
        "neuroserve_capture_rows_total", {"model": "classifier"}
    )
    assert rows == accepted * 3


# --------------------------------------------------------------------------- files
def test_files_roll_by_size_and_every_one_is_complete(model_repo: Path, tmp_path: Path) -> None:
    roll = 0.005  # MiB
    server = Captured(
        model_repo, tmp_path, capture_rate=1.0, capture_images="pixels", capture_roll_size_mb=roll
    )
    rng = np.random.default_rng(1)
    for _ in range(60):
        server.infer("image", {"input": rng.uniform(0, 255, (4, 1, 8, 8)).astype(np.float32)})
    server.stop()
    written = files(tmp_path)
    assert len(written) >= 3
    total = 0
    for path in written:
        table = pq.read_table(path)  # complete Parquet, footer and all
        assert layout_of(table)["model"] == "image"
        assert path.stat().st_size < 4 * roll * (1 << 20)
        total += table.num_rows
        assert path.parent.parent.name == "version=1"
        assert path.parent.parent.parent.name == "model=image"
    assert total == 240
    assert cap.read_captures(tmp_path, "image").num_rows == 240
    assert [p.name for p in written] == sorted(p.name for p in written)


def test_files_roll_by_time_while_serving(model_repo: Path, tmp_path: Path) -> None:
    """Rows become readable within about the roll interval, the server still running."""
    server = Captured(model_repo, tmp_path, capture_rate=1.0, capture_roll_interval_s=0.3)
    server.infer("classifier", {"input": np.ones((2, 4), np.float32)}, request_id="a")
    wait_for(lambda: cap.read_captures(tmp_path, "classifier").num_rows == 2)
    server.infer("classifier", {"input": np.ones((1, 4), np.float32)}, request_id="b")
    wait_for(lambda: cap.read_captures(tmp_path, "classifier").num_rows == 3)
    assert len(files(tmp_path)) == 2
    assert server.metric("neuroserve_capture_rows_total", model="classifier") == 3
    server.stop()


def test_a_restart_keeps_every_row(model_repo: Path, tmp_path: Path) -> None:
    for run in ("first", "second"):
        server = Captured(model_repo, tmp_path, capture_rate=1.0)
        server.infer("classifier", {"input": np.ones((2, 4), np.float32)}, request_id=run)
        server.stop()
    df = cap.read_captures(tmp_path, "classifier").to_pandas()
    assert df["request_id"].tolist() == ["first", "first", "second", "second"]
    assert len(files(tmp_path)) == 2
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind


def test_a_killed_server_leaves_only_complete_files(model_repo: Path, tmp_path: Path) -> None:
    """SIGKILL, no shutdown: the files already rolled read back whole; the open one is lost
    (at most one roll interval) and its temporary file is not taken for a capture."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "serving", "--model-repository", str(model_repo),
            "--grpc-port", str(port), "--http-port", "-1", "--metrics-port", "-1",
            "--poll-interval", "0", "--capture-rate", "1", "--capture-dir", str(tmp_path),
            "--capture-roll-interval", "0.5", "--log-level", "WARNING",
        ],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            wait_for(lambda: _ready(stub), timeout=60)
            for i in range(10):
                stub.ModelInfer(
                    infer_request(
                        "classifier", {"input": np.ones((1, 4), np.float32)}, request_id=str(i)
                    ),
                    timeout=10,
                )
            wait_for(lambda: len(files(tmp_path)) >= 1)
            for i in range(10, 20):
                stub.ModelInfer(
                    infer_request(
                        "classifier", {"input": np.ones((1, 4), np.float32)}, request_id=str(i)
                    ),
                    timeout=10,
                )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    table = cap.read_captures(tmp_path, "classifier")
    assert cap.SKIPPED_KEY not in (table.schema.metadata or {})
    ids = set(table.column("request_id").to_pylist())
    assert {str(i) for i in range(10)} <= ids <= {str(i) for i in range(20)}
    for path in files(tmp_path):
        pq.read_table(path)


def _ready(stub: pb_grpc.GRPCInferenceServiceStub) -> bool:
    try:
        return stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready
    except grpc.RpcError:
        return False


def test_unwritable_location_keeps_serving_logs_once_and_recovers(
    model_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The capture directory cannot be created (a file stands where its parent should be):
    every request is still answered, the outage is logged once however many writes fail, the
    lost rows are counted; once the obstacle goes, rows are written again and that is logged
    once too."""
    caplog.set_level(logging.INFO, logger="serving")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    location = blocker / "captures"
    server = Captured(model_repo, location, capture_rate=1.0, capture_roll_interval_s=0.1)
    lost = "neuroserve_capture_dropped_total"
    for i in range(30):
        reply = server.infer("classifier", {"input": np.ones((2, 4), np.float32)})
        assert len(reply.outputs) == 1
        if i == 10:
            wait_for(lambda: server.metric(lost, model="classifier", reason="write_failed") > 0)
    wait_for(lambda: server.metric(lost, model="classifier", reason="write_failed") >= 60)
    time.sleep(0.5)  # several more failing cycles
    failed = [r for r in caplog.records if "event=capture_write_failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]
    assert failed[0].levelno == logging.WARNING and str(location) in failed[0].getMessage()
    blocker.unlink()
    server.infer("classifier", {"input": np.ones((1, 4), np.float32)}, request_id="after")
    wait_for(lambda: server.metric("neuroserve_capture_rows_total", model="classifier") > 0)
    server.infer("classifier", {"input": np.ones((1, 4), np.float32)}, request_id="later")
    server.stop()
    recovered = [r for r in caplog.records if "event=capture_write_recovered" in r.getMessage()]
    assert len(recovered) == 1
    assert len([r for r in caplog.records if "capture_write_failed" in r.getMessage()]) == 1
    ids = set(cap.read_captures(location, "classifier").column("request_id").to_pylist())
    assert {"after", "later"} <= ids


# --------------------------------------------------------------------------- reading
def _rows(model: str, version: str, when: datetime, n: int, source: str = "train") -> pa.Table:
    layout = cap.CaptureLayout.of(
        model,
        version,
        [TensorSpec("input", "FP32", (-1, 2))],
        [TensorSpec("output", "FP32", (-1, 1))],
        {"task": "regression", "input_kind": "table", "feature_names": '["a", "b"]'},
    )
    x = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    return layout.rows({"input": x}, {"output": x[:, :1]}, source=source, timestamp=when)


def test_read_captures_filters_by_version_and_time_and_skips_bad_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    for version, hours, n in (("1", 3, 1), ("1", 1, 2), ("2", 0, 4)):
        cap.write_captures(_rows("m", version, now - timedelta(hours=hours), n), tmp_path)
    assert cap.read_captures(tmp_path, "m").num_rows == 7
    assert cap.read_captures(tmp_path, "m", version="1").num_rows == 3
    assert cap.read_captures(tmp_path, "m", since=timedelta(hours=2)).num_rows == 6
    naive = (now - timedelta(minutes=30)).replace(tzinfo=None)
    assert cap.read_captures(tmp_path, "m", since=naive).num_rows == 4
    df = cap.read_captures(tmp_path, "m").to_pandas()
    assert list(df.columns[:8]) == [f.name for f in cap.META_SCHEMA]
    assert list(df.columns[8:]) == ["input.a", "input.b", "output.0", "prediction"]
    assert df["timestamp"].is_monotonic_increasing

    partition = tmp_path / "model=m" / "version=1" / f"date={now.date()}"
    partition.mkdir(parents=True, exist_ok=True)
    (partition / "notes.txt").write_text("mine")
    corrupt = partition / "20250101T000000000000Z_20991231T000000000000Z_x.parquet"
    corrupt.write_bytes(b"PAR1 truncated")
    foreign = partition / "20250101T000000000000Z_20991231T000000000000Z_y.parquet"
    pq.write_table(pa.table({"a": [1]}), foreign)
    (partition / ".in-progress.parquet.tmp").write_bytes(b"half")
    caplog.set_level(logging.WARNING, logger="serving.capture")
    table = cap.read_captures(tmp_path, "m")
    assert table.num_rows == 7
    skipped = json.loads(table.schema.metadata[cap.SKIPPED_KEY])
    assert sorted(skipped) == sorted(str(p) for p in (partition / "notes.txt", corrupt, foreign))
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(str(p) in warned for p in (corrupt, foreign))
    assert "in-progress" not in warned


def test_read_captures_of_nothing(tmp_path: Path) -> None:
    assert cap.read_captures(tmp_path, "never-served").num_rows == 0
    assert cap.captured_models(tmp_path) == {}
    with pytest.raises(cap.CaptureError, match="does not exist"):
        cap.read_captures(tmp_path / "missing", "m")


def test_layout_rows_series_and_text_statistics() -> None:
    """The series columns hold the window and its value and change statistics; text columns
    the ids, their count without padding and the unknown share."""
    series = cap.CaptureLayout.of(
        "s", "1", [TensorSpec("input", "FP32", (-1, -1, 1))],
        [TensorSpec("output", "FP32", (-1, 1))], {"task": "forecast", "input_kind": "series"},
    )  # fmt: skip
    x = np.array([[[1.0], [2.0], [4.0], [7.0]]], np.float32)
    row = series.rows({"input": x}, {}).to_pylist()[0]
    assert row["input"] == [1.0, 2.0, 4.0, 7.0]
    assert row["input.last"] == 7.0 and row["input.mean"] == 3.5
    assert row["input.change_mean"] == 2.0
    assert row["input.change_std"] == pytest.approx(np.std([1, 2, 3]))
    assert row["prediction"] is None  # outputs not given: nulls
    text = cap.CaptureLayout.of(
        "t", "1", [TensorSpec("input", "INT64", (-1, -1))],
        [TensorSpec("output", "FP32", (-1, len(onnx_models.VOCAB)))],
        {p.key: p.value for p in onnx_models.next_token().metadata_props},
    )  # fmt: skip
    ids = np.array([[0, 0, 1, 3], [2, 3, 4, 5]], np.int64)
    rows = text.rows({"input": ids}, {}, source="train").to_pylist()
    assert [r["input.length"] for r in rows] == [2, 4]
    assert [r["input.unk_rate"] for r in rows] == [0.5, 0.0]
    assert rows[0]["source"] == "train"


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--capture-rate", "often"], "--capture-rate"),
        (["--capture-rate", "1.5"], "outside 0..1"),
        (["--capture-rate", "=0.5"], "names no model"),
        (["--capture-rate", "0.1,0.2"], "given twice"),
        (["--capture-dir", "gs://bucket/x"], "s3://bucket/prefix"),
        (["--capture-dir", "s3://"], "names no bucket"),
        (["--capture-roll-size", "0"], "capture_roll_size_mb"),
        (["--capture-buffer", "-1"], "capture_buffer_mb"),
    ],
)
def test_bad_capture_flags_are_refused_clearly(
    flags: list[str], expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert serve_main(["--model-repository", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid server settings:") and expected in err
    assert len(err.strip().splitlines()) == 2


def test_bad_capture_images_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        serve_main(["--capture-images", "thumbnails"])
    assert exc.value.code == 2
    assert "--capture-images: invalid choice: 'thumbnails'" in capsys.readouterr().err


# --------------------------------------------------------------------------- S3
@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API (a ``moto`` server process) with a bucket ``captures``; its endpoint."""
    pytest.importorskip("moto")
    server = S3(free_port(), tmp_path_factory.mktemp("moto"))
    port, endpoint = server.port, server.endpoint
    try:
        server.start()
        with pytest.MonkeyPatch.context() as patch:
            _s3_env(patch, endpoint)
            from pyarrow import fs

            fs.S3FileSystem(
                endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                access_key="test", secret_key="test", allow_bucket_creation=True,
            ).create_dir("captures")  # fmt: skip
        yield endpoint
    finally:
        server.process.stop()


def _s3_env(patch: pytest.MonkeyPatch, endpoint: str) -> None:
    patch.setenv("AWS_ENDPOINT_URL", endpoint)
    patch.setenv("AWS_ACCESS_KEY_ID", "test")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    patch.delenv("AWS_REGION", raising=False)
    patch.delenv("AWS_DEFAULT_REGION", raising=False)


def test_capture_to_s3(model_repo: Path, s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Captures into an S3 bucket through the endpoint in ``AWS_ENDPOINT_URL`` (as MinIO in
    the compose stack), read back from there."""
    _s3_env(monkeypatch, s3)
    location = "s3://captures/neuroserve"
    server = Captured(model_repo, location, capture_rate=1.0)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    server.infer("classifier", {"input": x}, request_id="s3")
    server.stop()
    assert cap.captured_models(location) == {"classifier": ["1"]}
    assert cap.read_captures("s3://captures/nothing-yet", "classifier").num_rows == 0
    with pytest.raises(cap.CaptureError, match="bucket 'no-such-bucket' is missing"):
        cap.read_captures("s3://no-such-bucket/x", "classifier")
    df = cap.read_captures(location, "classifier").to_pandas()
    assert df["request_id"].tolist() == ["s3", "s3"]
    np.testing.assert_array_equal(df[[f"input.{j}" for j in range(4)]].to_numpy(np.float32), x)


def test_s3_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a bucket whose endpoint does not answer is one clear line, not a traceback."""
    _s3_env(monkeypatch, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(cap.CaptureError) as exc:
        cap.read_captures("s3://captures/neuroserve", "classifier")
    message = str(exc.value)
    assert message.startswith("capture location s3://captures/neuroserve could not be read")
    assert "\n" not in message


# --------------------------------------------------------------------------- housekeeping
def test_temporary_files_of_dead_writers_on_this_host_are_removed(
    model_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash leaves its open file's temporary name behind; the next server on the host
    deletes those of writers that are gone, and leaves live writers' and other hosts' alone."""
    caplog.set_level(logging.INFO, logger="serving")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    host = cap._host()
    partition = tmp_path / "model=classifier" / "version=1" / "date=2025-01-01"
    partition.mkdir(parents=True)
    dead = partition / f".{host}-{gone}-abc123-000001.parquet.tmp"
    live = partition / f".{host}-{os.getppid()}-abc123-000001.parquet.tmp"
    elsewhere = partition / f".other-host-{gone}-abc123-000001.parquet.tmp"
    for path in (dead, live, elsewhere):
        path.write_bytes(b"PAR1 half a file")
    server = Captured(model_repo, tmp_path, capture_rate=1.0)
    wait_for(lambda: not dead.exists())
    server.stop()
    assert live.exists() and elsewhere.exists()
    assert any("event=capture_stale_removed" in r.getMessage() for r in caplog.records)


def test_an_override_for_a_model_not_served_is_logged(
    model_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving")
    server = Captured(model_repo, tmp_path, capture_rate="0.1,clasifier=1")
    server.stop()
    warned = [
        r.getMessage() for r in caplog.records if "capture_rate_unknown_model" in r.getMessage()
    ]
    assert len(warned) == 1 and "model=clasifier" in warned[0]
