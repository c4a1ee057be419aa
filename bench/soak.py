"""Soak test: sustained concurrent load on a real server process, with a verdict.

Starts ``python -m serving --model-repository DIR`` as a subprocess serving three models (a
classifier, a regressor and an image model, built with onnx.helper), then drives it from
``--concurrency`` asyncio workers for ``--seconds`` over grpc.aio, raw tensors, pre-serialised
requests (so the client spends its CPU on the wire, not on protobuf). Every ``--window`` seconds
it records requests, errors, p50/p99 latency and the server's RSS (psutil), then prints a table
and a verdict:

* zero errors;
* p99 stable: the last window's p99 within ``--p99-ratio`` (2x) of the first window's;
* RSS growth under ``--rss-bound-mb`` (50 MiB), measured from the end of the first window
  (after warm-up: ONNX Runtime arenas and gRPC buffers grow once under first load) to the end.

Exit code 0 when the verdict passes, 1 otherwise, 2 when the server would not start, so CI and
people can both use it::

    python bench/soak.py --seconds 60
    python bench/soak.py --seconds 5 --window 1 --json /tmp/soak.json

Every loop is bounded by ``--seconds`` plus fixed timeouts; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python bench/soak.py`` from anywhere
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from serving._proto import grpc_service_pb2 as pb  # noqa: E402
from serving.client import encode_inputs  # noqa: E402

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
READY_METHOD = "/inference.GRPCInferenceService/ServerReady"
CALL_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0


def model_inputs() -> dict[str, np.ndarray]:
    """One small batch per served model, matching its input signature."""
    rng = np.random.default_rng(0)
    return {
        "classifier": rng.normal(size=(2, 4)).astype(np.float32),
        "regressor": rng.normal(size=(2, 3)).astype(np.float32),
        "image": rng.uniform(0, 255, size=(1, 1, 8, 8)).astype(np.float32),
    }


def write_repository(root: Path) -> Path:
    """The three soak models as version 1 under ``root`` (onnx.helper, no torch)."""
    from tests.serving import onnx_models

    for name, build in (
        ("classifier", onnx_models.classifier),
        ("regressor", onnx_models.regressor),
        ("image", onnx_models.image),
    ):
        onnx_models.save(build(), root / name / "1" / "model.onnx")
    return root


@dataclass
class Window:
    """One time window of the run."""

    index: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    rss_mb: float


@dataclass
class SoakResult:
    """Everything the run measured, and the verdict."""

    seconds: float
    concurrency: int
    requests: int
    errors: int
    error_codes: dict[str, int]
    throughput_rps: float
    windows: list[Window]
    rss_idle_mb: float
    rss_start_mb: float
    rss_end_mb: float
    rss_growth_mb: float
    rss_bound_mb: float
    p99_first_ms: float
    p99_last_ms: float
    p99_ratio_bound: float
    passed: bool
    reasons: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """The server under test as a subprocess; stderr drained on a thread so it never blocks."""

    def __init__(self, repository: Path, extra_args: list[str]) -> None:
        self.port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "serving", "--model-repository", str(repository),
                "--grpc-port", str(self.port), "--metrics-port", "-1", "--http-port", "-1",
                *extra_args,
            ],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    @property
    def address(self) -> str:
        """Where clients connect."""
        return f"127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        """Poll ServerReady until true (bounded by START_TIMEOUT_S)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(self.address) as channel:
            ready = channel.unary_unary(
                READY_METHOD,
                request_serializer=pb.ServerReadyRequest.SerializeToString,
                response_deserializer=pb.ServerReadyResponse.FromString,
            )
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("server exited during start:\n" + "".join(self.log))
                try:
                    if ready(pb.ServerReadyRequest(), timeout=1).ready:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise RuntimeError("server not ready in time:\n" + "".join(self.log))

    def rss_mb(self) -> float:
        """Server resident memory, MiB."""
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> int:
        """SIGTERM, wait (bounded), return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return int(self.proc.returncode)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _drive(
    address: str, seconds: float, concurrency: int, rss: Callable[[], float]
) -> tuple[list[tuple[float, float, str]], list[tuple[float, float]]]:
    """Run the load; return (t_done, latency_s, code) per call and (t, rss_mb) samples."""
    payloads = [
        encode_inputs(pb.ModelInferRequest(model_name=name), {"input": array}).SerializeToString()
        for name, array in model_inputs().items()
    ]
    results: list[tuple[float, float, str]] = []
    samples: list[tuple[float, float]] = []
    channels = [grpc.aio.insecure_channel(address) for _ in range(2)]
    calls = [
        ch.unary_unary(
            INFER_METHOD,
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for ch in channels
    ]
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker(index: int) -> None:
        call = calls[index % len(calls)]
        n = index
        while time.perf_counter() < stop_at:
            payload = payloads[n % len(payloads)]
            n += 1
            t0 = time.perf_counter()
            try:
                response = await call(payload, timeout=CALL_TIMEOUT_S)
                code = "OK" if response.raw_output_contents else "EMPTY"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            t1 = time.perf_counter()
            results.append((t1 - start, t1 - t0, code))

    async def sampler() -> None:
        while time.perf_counter() < stop_at:
            samples.append((time.perf_counter() - start, rss()))
            await asyncio.sleep(0.5)
        samples.append((time.perf_counter() - start, rss()))

    try:
        await asyncio.wait_for(
            asyncio.gather(sampler(), *(worker(i) for i in range(concurrency))),
            timeout=seconds + CALL_TIMEOUT_S + 10,
        )
    finally:
        for ch in channels:
            await ch.close()
    return results, samples


def summarise(
    results: list[tuple[float, float, str]],
    samples: list[tuple[float, float]],
    *,
    seconds: float,
    concurrency: int,
    window: float,
    rss_idle: float,
    rss_bound_mb: float,
    p99_ratio: float,
) -> SoakResult:
    """Cut the calls into windows and judge the run."""
    n_windows = max(1, round(seconds / window))
    windows: list[Window] = []
    for w in range(n_windows):
        lo, hi = w * window, (w + 1) * window
        last = w == n_windows - 1
        inside = [r for r in results if lo <= r[0] < hi or (last and r[0] >= hi)]
        lat = [r[1] * 1000 for r in inside]
        rss_in = [s[1] for s in samples if s[0] <= hi] or [rss_idle]
        windows.append(
            Window(
                index=w + 1,
                requests=len(inside),
                errors=sum(r[2] != "OK" for r in inside),
                p50_ms=_percentile(lat, 50),
                p99_ms=_percentile(lat, 99),
                rss_mb=rss_in[-1],
            )
        )
    codes: dict[str, int] = {}
    for _, _, code in results:
        if code != "OK":
            codes[code] = codes.get(code, 0) + 1
    errors = sum(codes.values())
    rss_start = windows[0].rss_mb if len(windows) > 1 else samples[0][1] if samples else rss_idle
    rss_end = samples[-1][1] if samples else rss_idle
    growth = rss_end - rss_start
    p99_first, p99_last = windows[0].p99_ms, windows[-1].p99_ms
    reasons: list[str] = []
    if errors:
        reasons.append(f"{errors} errors: {codes}")
    if not results:
        reasons.append("no requests completed")
    if len(windows) > 1 and not p99_last <= p99_ratio * p99_first:
        reasons.append(
            f"p99 drifted: last window {p99_last:.1f} ms > {p99_ratio}x first {p99_first:.1f} ms"
        )
    if growth > rss_bound_mb:
        reasons.append(f"RSS grew {growth:.1f} MiB > {rss_bound_mb} MiB")
    return SoakResult(
        seconds=seconds,
        concurrency=concurrency,
        requests=len(results),
        errors=errors,
        error_codes=codes,
        throughput_rps=len(results) / seconds if seconds else 0.0,
        windows=windows,
        rss_idle_mb=rss_idle,
        rss_start_mb=rss_start,
        rss_end_mb=rss_end,
        rss_growth_mb=growth,
        rss_bound_mb=rss_bound_mb,
        p99_first_ms=p99_first,
        p99_last_ms=p99_last,
        p99_ratio_bound=p99_ratio,
        passed=not reasons,
        reasons=reasons,
    )


def print_report(result: SoakResult) -> None:
    """The table people read (rich), with the verdict under it."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"soak: {result.seconds:.0f} s at concurrency {result.concurrency}, 3 models"
    )
    for col in ("window", "requests", "errors", "p50 ms", "p99 ms", "server RSS MiB"):
        table.add_column(col, justify="right")
    for w in result.windows:
        table.add_row(
            str(w.index),
            str(w.requests),
            str(w.errors),
            f"{w.p50_ms:.1f}",
            f"{w.p99_ms:.1f}",
            f"{w.rss_mb:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"requests sent {result.requests} ({result.throughput_rps:.0f}/s), errors "
        f"{result.errors} {result.error_codes or ''}\n"
        f"RSS idle {result.rss_idle_mb:.1f} MiB, start (end of window 1) "
        f"{result.rss_start_mb:.1f} MiB, end {result.rss_end_mb:.1f} MiB, growth "
        f"{result.rss_growth_mb:+.1f} MiB (bound {result.rss_bound_mb} MiB)\n"
        f"p99 first {result.p99_first_ms:.1f} ms, last {result.p99_last_ms:.1f} ms "
        f"(bound {result.p99_ratio_bound}x)",
        highlight=False,
    )
    if result.passed:
        console.print("[bold green]verdict: PASS[/bold green]")
    else:
        console.print("[bold red]verdict: FAIL[/bold red] - " + "; ".join(result.reasons))


def run_soak(
    *,
    seconds: float,
    concurrency: int,
    window: float,
    rss_bound_mb: float,
    p99_ratio: float,
    repository: Path | None = None,
    server_args: list[str] | None = None,
) -> SoakResult:
    """Start the server, load it, stop it (SIGTERM, must exit 0), return the result."""
    with tempfile.TemporaryDirectory(prefix="neuroserve-soak-") as tmp:
        repo = repository or write_repository(Path(tmp) / "repo")
        server = Server(repo, server_args or [])
        try:
            server.wait_ready()
            rss_idle = server.rss_mb()
            results, samples = asyncio.run(
                _drive(server.address, seconds, concurrency, server.rss_mb)
            )
        finally:
            code = server.stop()
    result = summarise(
        results,
        samples,
        seconds=seconds,
        concurrency=concurrency,
        window=window,
        rss_idle=rss_idle,
        rss_bound_mb=rss_bound_mb,
        p99_ratio=p99_ratio,
    )
    if code != 0:
        result.passed = False
        result.reasons.append(f"server exited {code} on SIGTERM")
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (60)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent callers (64)")
    parser.add_argument("--window", type=float, default=10.0, help="window length, s (10)")
    parser.add_argument("--rss-bound-mb", type=float, default=50.0, help="max RSS growth (50)")
    parser.add_argument("--p99-ratio", type=float, default=2.0, help="last/first p99 bound (2)")
    parser.add_argument("--repository", type=Path, default=None, help="serve this directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra flag for the server (repeat)"
    )
    args = parser.parse_args(argv)
    try:
        result = run_soak(
            seconds=args.seconds,
            concurrency=args.concurrency,
            window=min(args.window, args.seconds),
            rss_bound_mb=args.rss_bound_mb,
            p99_ratio=args.p99_ratio,
            repository=args.repository,
            server_args=args.server_arg,
        )
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    print_report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
