"""Load: the soak generator (smoke in CI, longer behind ``slow``) and overload behaviour.

Overload must fail fast and visibly: with a small ``max_queue_size`` and a model that takes
~100 ms per call, a burst far above capacity gets RESOURCE_EXHAUSTED at once for what does not
fit (never a slow timeout, never a hang), the admitted requests still succeed, and the server is
fine as soon as the burst is over.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from tests.reliability.conftest import ROOT
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import infer_request

SLOW_INPUT = {"input": np.ones((1, 4), np.float32)}


def _soak(tmp_path: Path, *args: str, timeout: float) -> tuple[int, dict, str]:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--json", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    result = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, result, proc.stdout + proc.stderr


def test_soak_smoke_has_zero_errors(tmp_path: Path) -> None:
    """~5 s at concurrency 64 against three models: every request answered OK."""
    _code, result, output = _soak(tmp_path, "--seconds", "5", "--window", "5", timeout=120)
    assert result, output
    assert result["errors"] == 0, output
    assert result["requests"] > 500, output  # the load really ran (loopback, 2 cores)
    assert "server exited" not in " ".join(result["reasons"]), output
    assert "verdict" in output


@pytest.mark.slow
def test_soak_short_passes_full_verdict(tmp_path: Path) -> None:
    """8 s in 2 s windows: zero errors, p99 stable within 2x, RSS growth under 50 MiB."""
    code, result, output = _soak(tmp_path, "--seconds", "8", "--window", "2", timeout=180)
    assert code == 0, output
    assert result["passed"] and result["errors"] == 0, output
    assert len(result["windows"]) == 4
    assert result["rss_growth_mb"] < 50


async def _burst(address: str, n: int, timeout: float) -> list[tuple[str, float]]:
    """``n`` concurrent ModelInfer calls to the slow model: (status name, seconds) each."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = infer_request("slow", SLOW_INPUT)

        async def one() -> tuple[str, float]:
            t0 = time.perf_counter()
            try:
                await stub.ModelInfer(request, timeout=timeout)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            return code, time.perf_counter() - t0

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("batching", [False, True], ids=["direct", "batching"])
def test_overload_rejects_fast_and_recovers(slow_repo: Path, batching: bool) -> None:
    thread = ServerThread(
        make_settings(
            slow_repo,
            model_names=["slow"],
            max_queue_size=4,
            dynamic_batching=batching,
            max_batch_size=2,
            max_queue_delay_us=100,
        )
    ).start()
    try:
        started = time.perf_counter()
        results = asyncio.run(_burst(thread.address, 64, timeout=30))
        wall = time.perf_counter() - started
        codes = [code for code, _ in results]
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
        rejected = [t for code, t in results if code == "RESOURCE_EXHAUSTED"]
        admitted = codes.count("OK")
        assert len(rejected) >= 40, codes  # capacity is a handful; most of 64 must bounce
        assert admitted >= 4, codes  # ... but the queue's worth is served, not dropped
        assert max(rejected) < 1.0, f"slowest rejection {max(rejected):.2f}s"
        assert float(np.median(rejected)) < 0.5
        assert wall < 20, f"burst took {wall:.1f}s"  # nothing hangs
        slowest, median = max(rejected) * 1000, float(np.median(rejected)) * 1000
        print(f"overload ({'batching' if batching else 'direct'}): {admitted} served, "
              f"{len(rejected)} RESOURCE_EXHAUSTED, slowest rejection {slowest:.0f} ms, "
              f"median {median:.0f} ms, burst {wall:.2f} s")  # fmt: skip
        with grpc.insecure_channel(thread.address) as channel:  # load gone: served again
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            t0 = time.perf_counter()
            response = stub.ModelInfer(infer_request("slow", SLOW_INPUT), timeout=10)
            assert response.model_name == "slow"
            assert time.perf_counter() - t0 < 2.0
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow"))
            assert stats.model_stats[0].inference_stats.success.count == admitted + 1
    finally:
        thread.stop()
