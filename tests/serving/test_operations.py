"""Health, reflection, metrics, auth, TLS/mTLS, SIGTERM shutdown and worker processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.client import AuthenticationError, InferenceClient, UnavailableError
from tests.ports import free_port
from tests.serving.certs import write_certs
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import good_request

ROOT = Path(__file__).resolve().parents[2]
X = np.ones((1, 4), np.float32)


def test_health_service_reports_serving(server, channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_is_not_serving_once_shutdown_begins(model_repo):
    thread = ServerThread(make_settings(model_repo, model_names=["regressor"])).start()
    server = thread.server
    assert server is not None
    request = health_pb2.HealthCheckRequest(service="")
    assert thread.call(server.health.Check(request, None)).status == 1
    thread.call(server.stop(0))
    assert thread.call(server.health.Check(request, None)).status == 2  # NOT_SERVING
    assert not server.dataplane.ready()
    thread.stop()


def test_reflection_lists_and_describes_services(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    described = db.FindFileContainingSymbol("inference.GRPCInferenceService")
    assert described.name == "grpc_service.proto"
    assert any(s.name == "GRPCInferenceService" for s in described.service)


def test_metrics_endpoint(server, stub):
    stub.ModelInfer(good_request())
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(pb.ModelInferRequest(model_name="classifier"))
    assert server.server is not None and server.server.metrics_server is not None
    port = server.server.metrics_server.port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert re.search(
        r'neuroserve_requests_total\{model="classifier",protocol="grpc",status="OK"\} [1-9]', text
    )
    assert 'status="INVALID_ARGUMENT"' in text
    for name in (
        "neuroserve_request_latency_seconds_bucket",
        "neuroserve_queue_latency_seconds_bucket",
        "neuroserve_compute_latency_seconds_bucket",
        "neuroserve_batch_size_bucket",
    ):
        assert f'{name}{{le="' in text or f'{name}{{model="classifier"' in text, name
    assert re.search(r"neuroserve_models_loaded [1-9]", text)
    # per-batch series name the provider the loaded version really runs on
    provider = server.server.repository.get("classifier").runtime.provider
    assert re.search(
        rf'neuroserve_batch_size_sum\{{model="classifier",provider="{provider}"\}} [1-9]', text
    )


def test_bearer_token(model_repo):
    thread = ServerThread(
        make_settings(model_repo, model_names=["classifier"], auth_token="s3cret")
    ).start()
    try:
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest()).live  # open
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == 1  # open
            for metadata in (
                None,
                [("authorization", "Bearer nope")],
                [("authorization", "s3cret")],
            ):
                with pytest.raises(grpc.RpcError) as info:
                    stub.ModelInfer(good_request(), metadata=metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "bearer token" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(iter([good_request()])))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Readiness is health, open as REST's /v2/health/ready is (serving/auth.py).
            assert stub.ServerReady(pb.ServerReadyRequest()).ready
            good = [("authorization", "Bearer s3cret")]
            assert stub.ModelInfer(good_request(), metadata=good).outputs
        with pytest.raises(AuthenticationError):
            InferenceClient(thread.address).predict("classifier", X)
        with InferenceClient(thread.address, token="s3cret") as client:
            assert client.predict("classifier", X).shape == (1, 3)
    finally:
        thread.stop()


def test_tls_and_mtls(model_repo, tmp_path):
    certs = write_certs(tmp_path)
    tls = ServerThread(
        make_settings(
            model_repo,
            model_names=["classifier"],
            tls_cert_file=certs["server_cert"],
            tls_key_file=certs["server_key"],
        )
    ).start()
    try:
        address = f"localhost:{tls.server.port}"
        with InferenceClient(address, root_certificates=certs["ca"]) as client:
            assert client.predict("classifier", X).shape == (1, 3)
        with (
            InferenceClient(address, timeout=3) as plaintext,
            pytest.raises(UnavailableError),
        ):
            plaintext.ready()
    finally:
        tls.stop()

    mtls = ServerThread(
        make_settings(
            model_repo,
            model_names=["classifier"],
            tls_cert_file=certs["server_cert"],
            tls_key_file=certs["server_key"],
            tls_ca_file=certs["ca"],
        )
    ).start()
    try:
        address = f"localhost:{mtls.server.port}"
        with (
            InferenceClient(address, root_certificates=certs["ca"], timeout=3) as anonymous,
            pytest.raises(UnavailableError),
        ):
            anonymous.ready()
        with InferenceClient(
            address,
            root_certificates=certs["ca"],
            certificate_chain=certs["client_cert"],
            private_key=certs["client_key"],
        ) as client:
            assert client.ready()
            assert client.predict("classifier", X).shape == (1, 3)
    finally:
        mtls.stop()


def _start(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "serving", *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(
    proc: subprocess.Popen, pattern: str, count: int = 1, timeout: float = 60
) -> list[str]:
    """Collect stderr lines until ``pattern`` was seen ``count`` times."""
    lines: list[str] = []
    seen = 0
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while seen < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not seen; log:\n" + "".join(lines))
        line = proc.stderr.readline()
        if not line:
            raise AssertionError("server exited early; log:\n" + "".join(lines))
        lines.append(line)
        seen += pattern in line
    return lines


def test_sigterm_finishes_in_flight_requests_and_exits_zero(model_repo):
    port = free_port()
    proc = _start(
        [
            "--model-repository", str(model_repo), "--model", "classifier",
            "--grpc-port", str(port), "--http-port", "0", "--metrics-port", "-1",
            "--max-queue-delay-us", "1500000", "--grace-period", "10",
        ]
    )  # fmt: skip
    try:
        _read_until(proc, "event=server_ready")
        result: dict[str, object] = {}
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ServerReady(pb.ServerReadyRequest())

        def in_flight() -> None:  # waits ~1.5 s in the batch queue: in flight during SIGTERM
            try:
                result["response"] = stub.ModelInfer(good_request(), timeout=20)
            except grpc.RpcError as exc:
                result["error"] = exc

        worker = threading.Thread(target=in_flight)
        worker.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        worker.join(20)
        assert "error" not in result, result
        assert result["response"].outputs[0].name == "output"
        lines = _read_until(proc, "event=server_stopped")
        assert proc.wait(20) == 0
        assert any("event=server_draining" in line for line in lines)
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_share_the_port_and_stop_cleanly(model_repo):
    port, metrics_port = free_port(), free_port()
    proc = _start(
        [
            "--model-repository", str(model_repo), "--model", "classifier",
            "--grpc-port", str(port), "--http-port", "0", "--metrics-port", str(metrics_port),
            "--workers", "2", "--intra-op-threads", "1", "--worker-gpus", "3,5",
        ]
    )  # fmt: skip
    try:
        lines = _read_until(proc, "event=server_ready", count=2)
        pids = {
            m.group(1) for line in lines if (m := re.search(r"pid=(\d+) event=server_ready", line))
        }
        assert len(pids) == 2
        # each worker sees one GPU of --worker-gpus (CUDA_VISIBLE_DEVICES), dealt round-robin
        gpus = {
            m.group(1): m.group(2)
            for line in lines
            if (m := re.search(r"event=worker_started index=(\d) pid=\d+ gpu=(\d)", line))
        }
        assert gpus == {"0": "3", "1": "5"}, lines
        for _ in range(8):  # fresh connections land on either worker
            with InferenceClient(f"127.0.0.1:{port}") as client:
                assert client.predict("classifier", X).shape == (1, 3)
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        match = re.search(
            r'neuroserve_requests_total\{model="classifier",protocol="grpc",status="OK"\} (\S+)',
            text,
        )
        assert match and float(match.group(1)) == 8
        # the provider label survives the workers' shared multiprocess files
        assert re.search(r'neuroserve_batch_size_sum\{model="classifier",provider="\w+"\} 8', text)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
