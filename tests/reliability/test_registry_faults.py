"""MLflow outages: down when the server starts, and down (then back) while the server polls.

The source's promise (serving/sources.py ``MlflowSource``): when the registry cannot be reached a
scan falls back to the local cache, so cached champions keep serving; the outage is logged once
(``registry_unreachable``) and its end once (``registry_reachable``), not once per poll; when the
registry is back, a moved alias is picked up.

The outage during polling uses a real ``mlflow server`` behind a TCP proxy the test can switch
off (connections accepted and dropped, counted) and on again, so "down" and "back" are the same
URI, as in production.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving._proto import grpc_service_pb2_grpc as pb_grpc
from tests.reliability.conftest import (
    LogCollector,
    ServerProcess,
    closed_port,
    free_port,
    wait_until,
)
from tests.serving import onnx_models
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import infer_request

X = np.array([[0.5, 1.0, -1.0, 2.0]], np.float32)
FAST_FAIL = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite MLflow store for the module: 'iris' v1 (alias champion) and v2 (no alias).

    Migrating a store and logging two models costs ~10 s on 2 cores; tests copy the database
    file (artifacts are shared read-only) instead of building their own.
    """
    import mlflow.onnx
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        _point_mlflow_at(mp, uri)
        client = MlflowClient(uri, uri)
        experiment = client.create_experiment("rel", artifact_location=str(root / "art"))
        for scale in (1.0, 2.0):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.onnx.log_model(
                    onnx_models.classifier(scale), name="model", registered_model_name="iris"
                )
        client.set_registered_model_alias("iris", "champion", "1")
    return root / "mlflow.db"


def _point_mlflow_at(mp: pytest.MonkeyPatch, uri: str) -> None:
    """Point MLflow's process-wide tracking/registry URIs at ``uri`` until ``mp`` undoes it
    (environment set, module globals cleared), so no other test inherits a pinned URI."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("MLFLOW_REGISTRY_URI", uri)
    mp.setattr(tracking_utils, "_tracking_uri", None)
    mp.setattr(registry_utils, "_registry_uri", None)


@pytest.fixture
def registry(
    registry_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Any]:
    """This test's copy of the template store, and a client on it."""
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    shutil.copy(registry_template, db)
    uri = f"sqlite:///{db}"
    _point_mlflow_at(monkeypatch, uri)
    return uri, MlflowClient(uri, uri)


def _version(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return str(stub.ModelInfer(infer_request("iris", {"input": X}), timeout=10).model_version)


def _populate_cache(uri: str, cache: Path) -> None:
    """Serve once from the live store so the champion lands in the cache."""
    thread = ServerThread(
        make_settings(cache, model_repository=None, mlflow_tracking_uri=uri, cache_dir=cache)
    ).start()
    try:
        assert _version(thread.address) == "1"
    finally:
        thread.stop()
    assert (cache / "iris" / "1" / "model.onnx").is_file()


def _start_offline(
    start_server: Callable[..., ServerProcess], tmp_path: Path, cache: Path, env: dict[str, str]
) -> ServerProcess:
    return start_server(
        ["--poll-interval", "0.5"],
        env={
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}",
            "NEUROSERVE_CACHE_DIR": str(cache),
            "NEUROSERVE_HOME": str(tmp_path / "home"),
            **env,
        },
    )


def test_mlflow_down_at_start_serves_cached_champion(
    registry: tuple[str, Any], tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    uri, _ = registry
    cache = tmp_path / "cache"
    _populate_cache(uri, cache)
    server = _start_offline(start_server, tmp_path, cache, FAST_FAIL)
    server.wait_for("event=server_ready", timeout=60)
    assert _version(server.address) == "1"
    polls_before = server.count("event=model_") + server.count("registry_")
    time.sleep(3)  # ~6 more polls against the dead registry
    assert _version(server.address) == "1"
    assert server.count("event=registry_unreachable") == 1, server.log()
    assert server.count("event=model_load_failed") == 0
    assert server.count("event=model_loaded") == 1
    assert server.count("event=model_") + server.count("registry_") == polls_before


def test_mlflow_down_at_start_is_ready_quickly_with_default_client_settings(
    registry: tuple[str, Any],
    tmp_path: Path,
    start_server: Callable[..., ServerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, _ = registry
    cache = tmp_path / "cache"
    _populate_cache(uri, cache)
    for name in FAST_FAIL:
        monkeypatch.delenv(name, raising=False)
    server = _start_offline(start_server, tmp_path, cache, {})
    server.wait_for("event=server_ready", timeout=10)
    assert _version(server.address) == "1"


def test_sigterm_during_a_stuck_start_exits_within_the_grace_period(
    registry: tuple[str, Any],
    tmp_path: Path,
    start_server: Callable[..., ServerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in FAST_FAIL:
        monkeypatch.delenv(name, raising=False)
    server = start_server(
        ["--poll-interval", "0.5", "--grace-period", "2"],
        env={
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}",
            "NEUROSERVE_CACHE_DIR": str(tmp_path / "cache"),
            "NEUROSERVE_HOME": str(tmp_path / "home"),
        },
    )
    server.wait_for("event=server_listening", timeout=30)
    server.terminate()
    assert server.proc.wait(5) == 0  # a 2 s grace period, plus margin


def test_fetch_uses_the_configured_store_not_the_process_registry_uri(
    registry: tuple[str, Any], tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    uri, _ = registry
    other = f"sqlite:///{tmp_path / 'other.db'}"  # e.g. a registry another tool on the host uses
    server = start_server(
        ["--tracking-uri", uri, "--poll-interval", "0"],
        env={
            "MLFLOW_REGISTRY_URI": other,
            "NEUROSERVE_HOME": str(tmp_path / "home"),
            "MLFLOW_TRACKING_URI": "",
        },
    )
    server.wait_for("event=server_ready", timeout=60)
    assert server.count("event=model_load_failed") == 0, server.log()
    assert _version(server.address) == "1"


class ToggleProxy:
    """A loopback TCP proxy that can be switched off (accept, count, drop) and on again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self.dropped = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if not self.up:
                with self._lock:
                    self.dropped += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def set_up(self, up: bool) -> None:
        """Switch the proxy; going down also cuts every open (keep-alive) connection."""
        self.up = up
        if not up:
            with self._lock:
                conns, self._open = self._open, []
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    def close(self) -> None:
        """Stop accepting and cut everything."""
        self._closed = True
        self.set_up(False)
        self._thread.join(2)
        self._listener.close()


@pytest.fixture
def mlflow_http(registry: tuple[str, Any], tmp_path: Path) -> Iterator[ToggleProxy]:
    """``mlflow server`` on the test's SQLite store, reached through a ToggleProxy."""
    uri, _ = registry
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "mlflow-server.log").read_text())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    proxy: ToggleProxy | None = None
    try:
        wait_until(healthy, 90, "mlflow server", interval=0.25)
        proxy = ToggleProxy(port)
        yield proxy
    finally:
        if proxy is not None:
            proxy.close()
        os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture started (uvicorn too)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def test_mlflow_outage_while_polling_keeps_serving_logs_once_and_recovers(
    registry: tuple[str, Any],
    mlflow_http: ToggleProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server_log: LogCollector,
) -> None:
    _, client = registry
    for name, value in FAST_FAIL.items():
        monkeypatch.setenv(name, value)
    proxy = mlflow_http
    settings = make_settings(
        tmp_path,  # replaced by model_repository=None: serve the registry
        model_repository=None,
        mlflow_tracking_uri=f"http://127.0.0.1:{proxy.port}",
        cache_dir=tmp_path / "cache",
        poll_interval_s=0.5,
    )
    thread = ServerThread(settings).start()
    try:
        assert _version(thread.address) == "1"
        # --- outage 1: the champion moves while the registry is unreachable.
        proxy.set_up(False)
        wait_until(lambda: proxy.dropped >= 4, 30, "four polls against the dead registry")
        client.set_registered_model_alias("iris", "champion", "2")
        for _ in range(5):
            assert _version(thread.address) == "1"  # cached champion keeps serving
            time.sleep(0.2)
        assert len(server_log.matching("event=registry_unreachable")) == 1, server_log.lines
        # --- back: the new champion is picked up, the recovery logged once.
        proxy.set_up(True)
        wait_until(lambda: _version(thread.address) == "2", 30, "champion v2 to be served")
        assert len(server_log.matching("event=registry_reachable")) == 1
        # --- outage 2 is a new outage: logged once more, and v2 (now cached) keeps serving.
        proxy.set_up(False)
        dropped = proxy.dropped
        wait_until(lambda: proxy.dropped >= dropped + 3, 30, "polls in the second outage")
        assert _version(thread.address) == "2"
        assert len(server_log.matching("event=registry_unreachable")) == 2
        logged = len(server_log.matching("registry_unreachable"))
        print(f"MLflow outage: {proxy.dropped} registry connections refused over two outages; "
              f"registry_unreachable logged {logged}x")  # fmt: skip
    finally:
        thread.stop()
    assert not server_log.matching("event=model_load_failed")
