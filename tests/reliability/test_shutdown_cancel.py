"""SIGTERM under load, and clients that cancel or time out mid-request.

Both run the server as a real subprocess (``python -m serving``) with the slow model (~100 ms per
session call), so there is always work in flight when the signal or the cancellation lands, and
the server's own RSS can be measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from tests.reliability.conftest import ServerProcess
from tests.serving.helpers import infer_request

SLOW = infer_request("slow", {"input": np.ones((1, 4), np.float32)})
GRACE_S = 10.0


async def _load_through_sigterm(
    server: ServerProcess, workers: int, sigterm_after: float, tail: float
) -> tuple[list[tuple[float, float, str]], float]:
    """Closed-loop load; SIGTERM at ``sigterm_after`` s; stop ``tail`` s later.

    Returns (start, end, status) per call, times relative to the start, and the SIGTERM time.
    """
    t0 = time.monotonic()
    sent_at: list[float] = []
    calls: list[tuple[float, float, str]] = []
    stop_at = sigterm_after + tail
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def worker() -> None:
            while time.monotonic() - t0 < stop_at:
                start = time.monotonic() - t0
                try:
                    await stub.ModelInfer(SLOW, timeout=GRACE_S + 10)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                calls.append((start, time.monotonic() - t0, code))
                if code != "OK":
                    await asyncio.sleep(0.05)  # refused: do not spin on a dead port

        async def killer() -> None:
            await asyncio.sleep(sigterm_after)
            sent_at.append(time.monotonic() - t0)
            server.terminate()

        await asyncio.wait_for(
            asyncio.gather(killer(), *(worker() for _ in range(workers))), stop_at + GRACE_S + 15
        )
    return calls, sent_at[0]


def test_sigterm_under_load_drains_in_flight_and_exits_zero(
    slow_repo: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(
        [
            "--model-repository", str(slow_repo), "--model", "slow", "--no-batching",
            "--grace-period", str(GRACE_S), "--intra-op-threads", "1",
        ]
    )  # fmt: skip
    server.wait_for("event=server_ready")
    calls, sigterm = asyncio.run(_load_through_sigterm(server, 16, sigterm_after=2.0, tail=4.0))
    exit_code = server.proc.wait(GRACE_S + 5)
    before = [c for c in calls if c[0] < sigterm - 0.2]  # surely in the server at the signal
    in_flight = [c for c in before if c[1] > sigterm]
    after = [c for c in calls if c[0] > sigterm + 0.2]
    assert len(in_flight) >= 8, calls  # 16 callers, ~1.6 s of queued work: plenty in flight
    assert {c[2] for c in before} == {"OK"}, [c for c in before if c[2] != "OK"]
    assert after and {c[2] for c in after} == {"UNAVAILABLE"}, {c[2] for c in after}
    assert exit_code == 0, server.log()
    drained = max(c[1] for c in in_flight) - sigterm
    assert drained < GRACE_S, drained
    log = server.log()
    assert "event=server_draining" in log and "event=server_stopped" in log
    print(f"SIGTERM: {len(in_flight)} in flight finished OK within {drained:.2f}s; "
          f"{len(after)} later calls UNAVAILABLE; exit {exit_code}")  # fmt: skip


async def _cancel_round(address: str, n: int, cancel_after: float) -> dict[str, int]:
    """``n`` calls to the slow model: half cancelled by the client, half by a short deadline."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        explicit = [stub.ModelInfer(SLOW, timeout=30) for _ in range(n // 2)]
        timed = [stub.ModelInfer(SLOW, timeout=cancel_after) for _ in range(n - n // 2)]
        await asyncio.sleep(cancel_after)
        for call in explicit:
            call.cancel()
        outcomes: dict[str, int] = {}
        for call in explicit + timed:
            try:
                await call
                key = "OK"
            except asyncio.CancelledError:
                key = "CANCELLED"
            except grpc.aio.AioRpcError as exc:
                key = exc.code().name
            outcomes[key] = outcomes.get(key, 0) + 1
        return outcomes


def _inference_count(stub: pb_grpc.GRPCInferenceServiceStub) -> int:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow"), timeout=10)
    return int(stats.model_stats[0].inference_count)


@pytest.mark.parametrize(
    "mode", [["--max-batch-size", "4", "--max-queue-delay-us", "1000"], ["--no-batching"]],
    ids=["batching", "direct"],
)  # fmt: skip
def test_cancelled_calls_leave_no_leaked_work(
    slow_repo: Path, start_server: Callable[..., ServerProcess], mode: list[str]
) -> None:
    """48 abandoned calls per round would be 1.2 s (batches of 4) to 4.8 s (one by one) of
    work if the server computed them anyway; it must compute only what had already started."""
    server = start_server(
        [
            "--model-repository", str(slow_repo), "--model", "slow", "--intra-op-threads", "1",
            *mode,
        ]
    )  # fmt: skip
    server.wait_for("event=server_ready")
    rounds, per_round = 6, 48
    rss: list[float] = []
    computed: list[int] = []
    next_latency: list[float] = []
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(SLOW, timeout=10)
        for _ in range(rounds):
            before = _inference_count(stub)
            outcomes = asyncio.run(_cancel_round(server.address, per_round, cancel_after=0.25))
            assert set(outcomes) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED"}, outcomes
            t0 = time.monotonic()
            response = stub.ModelInfer(SLOW, timeout=10)  # the next request is not stuck
            next_latency.append(time.monotonic() - t0)
            assert response.model_name == "slow"
            # Everything abandoned is gone: one more call costs one model run, not the backlog.
            computed.append(_inference_count(stub) - before - 1)
            rss.append(server.rss_mb())
    latencies = [round(x, 2) for x in next_latency]
    print(f"cancel rounds: computed per round {computed} of {per_round}, next-call latency "
          f"{latencies} s, RSS {[round(x, 1) for x in rss]} MiB")  # fmt: skip
    # Abandoned after 0.25 s at ~100 ms per session call: only the calls already running (or
    # dispatched before the cancellation reached the server) were computed.
    assert max(computed) <= 24, computed
    assert max(next_latency) < 2.5, next_latency
    assert rss[-1] - rss[0] < 15, rss
    assert server.proc.poll() is None
