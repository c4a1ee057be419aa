"""Serving benchmark: raw ONNX Runtime vs the Python gRPC floor vs our server, side by side.

    .venv/bin/python bench/bench_serving.py [--rounds 2] [--concurrency 1,8,32] [--load python]

Model: the MNIST CNN (``.neuroserve-bench/mnist-cnn.onnx`` if trained, else the same network
built with onnx.helper, see serving_cnn.py). Rows: ONNX Runtime in-process at batch 1; a bare
grpc.aio echo server (fixed response bytes, same message sizes: the floor for any Python gRPC
server); our server with batching off, batching on, and ``--workers 2``.

The load is Triton's ``perf_analyzer -i grpc`` (fetched by serving_perf_analyzer.sh), unchanged
against every server: the echo answers the control RPCs perf_analyzer asks first with our
server's own answers. Without perf_analyzer (or with ``--load python``) bench/serving_load.py, a
closed-loop async generator, takes its place. Servers run side by side pinned to core 0 (idle
while another is measured) and the load generator to core 1 (``taskset``); ``--workers 2`` is
left unpinned, sharing both cores with the load. Cells are measured in interleaved rounds and
the median of each is reported: this machine's speed drifts by 10 % within minutes, and
interleaving keeps that drift out of the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from serving_cnn import cnn_path  # noqa: E402

from serving._proto import grpc_service_pb2 as pb  # noqa: E402
from serving._proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from serving.client import encode_inputs  # noqa: E402
from serving.runtime import OnnxModel  # noqa: E402

MODEL = "mnist-cnn"
ECHO = "echo (Python gRPC floor)"
ROW_ORDER = {
    ECHO: 0,
    "ours, batching off": 1,
    "ours, batching on": 2,
    "ours, batching on, --workers 2": 3,
}
PY = sys.executable
TASKSET = shutil.which("taskset") if (os.cpu_count() or 1) >= 2 else None


@dataclass
class Row:
    """One measured cell."""

    config: str
    concurrency: int
    p50_ms: float
    p99_ms: float
    throughput: float
    errors: int = 0
    tool: str = "async load gen"


def _pin(core: str | None, cmd: list[str]) -> list[str]:
    return [TASKSET, "-c", core, *cmd] if TASKSET and core else cmd


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure_ort(model_path: Path, n: int = 3000) -> Row:
    """ONNX Runtime in this process, batch 1, one thread, pinned to the server core."""
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if before is not None and TASKSET:
        os.sched_setaffinity(0, {0})
    try:
        model = OnnxModel(model_path, intra_op_threads=1)
        x = np.random.default_rng(0).uniform(0, 255, size=(1, 1, 28, 28)).astype(np.float32)
        for _ in range(200):
            model.run({"input": x})
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            model.run({"input": x})
            times.append(time.perf_counter() - t0)
    finally:
        if before is not None and TASKSET:
            os.sched_setaffinity(0, before)
    lat = np.array(times) * 1000
    return Row(
        "ONNX Runtime in-process", 1, *np.percentile(lat, [50, 99]), n / sum(times), 0, "loop"
    )


@contextlib.contextmanager
def running(cmd: list[str], log: Path, ready: str | None = None) -> Iterator[subprocess.Popen]:
    """Start a server process (output to ``log``), optionally wait for ``ready`` in it,
    and SIGTERM it afterwards. The repository comes first on its PYTHONPATH and this process's
    PYTHONPATH is kept after it: on the GPU machine the staged packages (onnxruntime-gpu,
    grpcio, ...) are found through it, and a server started without them would import that
    image's CPU onnxruntime instead."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with log.open("w") as sink:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": path},
        )
    try:
        deadline = time.monotonic() + 60
        while ready is not None and ready not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def progress(message: str) -> None:
    """One progress line on stderr (the tables come at the end)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_load(
    target: str,
    request: Path,
    c: int,
    duration: float,
    cores: str | None = "1",
    warmup: float | None = None,
) -> dict[str, Any]:
    """One cell through serving_load.py pinned to ``cores``: its JSON summary (p50/p99 ms,
    throughput, errors)."""
    args = ["--target", target, "--request", str(request), "--concurrency", str(c)]
    args += ["--duration", str(duration)]
    if warmup is not None:
        args += ["--warmup", str(warmup)]
    cmd = _pin(cores, [PY, str(BENCH / "serving_load.py"), *args])
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=duration * 4 + 60
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def load(config: str, target: str, request: Path, c: int, duration: float) -> Row:
    r = run_load(target, request, c, duration)
    return Row(config, c, r["p50_ms"], r["p99_ms"], r["throughput"], r["errors"])


def perf_analyzer(binary: str, config: str, target: str, c: int, tmp: Path) -> Row | str:
    """One perf_analyzer measurement, or the reason it failed."""
    report = tmp / f"pa-{c}.csv"
    cmd = _pin(
        "1",
        [
            binary,
            "-m",
            MODEL,
            "-i",
            "grpc",
            "-u",
            target,
            "--concurrency-range",
            f"{c}:{c}",
            "--measurement-interval",
            "3000",
            "--input-data",
            "zero",
            "--stability-percentage",
            "50",
            "--max-trials",
            "8",
            "-f",
            str(report),
        ],
    )
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0 or not report.exists():
        return (result.stdout + result.stderr).strip().splitlines()[-1][:120]
    with report.open() as fh:
        rec = next(csv.DictReader(fh))
    return Row(
        config,
        c,
        float(rec["p50 latency"]) / 1000,
        float(rec["p99 latency"]) / 1000,
        float(rec["Inferences/Second"]),
        0,
        "perf_analyzer",
    )


def wait_ready(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(300):
            with contextlib.suppress(grpc.RpcError):
                if stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=1).ready:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"{target} never became ready")


def _canned(target: str, tmp: Path) -> list[str]:
    """Our server's answers to the control RPCs, as ``--canned METHOD=FILE`` for the echo."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = {
            "ServerLive": stub.ServerLive(pb.ServerLiveRequest()),
            "ServerReady": stub.ServerReady(pb.ServerReadyRequest()),
            "ModelReady": stub.ModelReady(pb.ModelReadyRequest(name=MODEL)),
            # No extensions: the echo keeps no statistics, so perf_analyzer must not ask.
            "ServerMetadata": pb.ServerMetadataResponse(name="echo", version="0"),
            "ModelMetadata": stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL)),
            "ModelConfig": stub.ModelConfig(pb.ModelConfigRequest(name=MODEL)),
        }
    args = []
    for method, message in answers.items():
        path = tmp / f"{method}.bin"
        path.write_bytes(message.SerializeToString())
        args += ["--canned", f"{method}={path}"]
    return args


def _median_rows(samples: list[Row]) -> list[Row]:
    """One row per (configuration, concurrency, tool): the median of each column."""
    groups: dict[tuple[str, int, str], list[Row]] = {}
    for row in samples:
        groups.setdefault((row.config, row.concurrency, row.tool), []).append(row)
    return [
        Row(
            config,
            c,
            float(np.median([r.p50_ms for r in rows])),
            float(np.median([r.p99_ms for r in rows])),
            float(np.median([r.throughput for r in rows])),
            sum(r.errors for r in rows),
            tool,
        )
        for (config, c, tool), rows in groups.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per cell (2)")
    parser.add_argument("--duration", type=float, default=3.0, help="python load: s per cell")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated (1,8,32)")
    parser.add_argument("--load", choices=["perf_analyzer", "python"], default="perf_analyzer")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    notes: list[str] = []
    samples: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmpdir:
        tmp = Path(tmpdir)
        model_path, origin = cnn_path(tmp, ROOT / ".neuroserve-bench" / "mnist-cnn.onnx")
        notes.append(f"model: {origin}")
        repo_file = tmp / "repo" / MODEL / "1" / "model.onnx"
        repo_file.parent.mkdir(parents=True)
        shutil.copyfile(model_path, repo_file)

        x = np.random.default_rng(1).uniform(0, 255, size=(1, 1, 28, 28)).astype(np.float32)
        request = tmp / "request.bin"
        request.write_bytes(
            encode_inputs(pb.ModelInferRequest(model_name=MODEL), {"input": x}).SerializeToString()
        )
        ort_row = measure_ort(model_path)
        probs = OnnxModel(model_path, intra_op_threads=1).run({"input": x})["output"]
        response = pb.ModelInferResponse(model_name=MODEL, model_version="1")
        response.outputs.add(name="output", datatype="FP32", shape=[1, 10])
        response.raw_output_contents.append(probs.tobytes())
        response_file = tmp / "response.bin"
        response_file.write_bytes(response.SerializeToString())
        notes.append(
            f"message sizes: request {request.stat().st_size} B, response "
            f"{response_file.stat().st_size} B"
        )

        pa_binary: str | None = None
        if args.load == "perf_analyzer":
            script = subprocess.run(
                ["bash", str(BENCH / "serving_perf_analyzer.sh")],
                capture_output=True,
                text=True,
                check=False,
            )
            if script.returncode == 0:
                pa_binary = script.stdout.strip().splitlines()[-1]
            else:
                notes.append(
                    "perf_analyzer unavailable, Python load generator used instead: "
                    + script.stderr.strip()[-200:]
                )

        common = [
            "-m",
            "serving",
            "--model-repository",
            str(tmp / "repo"),
            "--metrics-port",
            "-1",
            "--http-port",
            "-1",
            "--poll-interval",
            "0",
            "--intra-op-threads",
            "1",
            "--max-batch-size",
            "32",
            "--log-level",
            "WARNING",
        ]
        servers = [
            ("ours, batching off", "0", ["--no-batching"]),
            ("ours, batching on", "0", []),
            ("ours, batching on, --workers 2", None, ["--workers", "2"]),
        ]
        targets: dict[str, str] = {}
        with contextlib.ExitStack() as stack:
            for name, core, extra in servers:
                port = _free_port()
                targets[name] = f"127.0.0.1:{port}"
                cmd = _pin(core, [PY, *common, "--grpc-port", str(port), *extra])
                progress(f"starting {name}")
                stack.enter_context(running(cmd, tmp / f"server-{port}.log"))
                wait_ready(targets[name])
            port = _free_port()
            targets[ECHO] = f"127.0.0.1:{port}"
            echo = _pin(
                "0",
                [
                    PY,
                    str(BENCH / "serving_echo.py"),
                    "--port",
                    str(port),
                    "--response",
                    str(response_file),
                    *_canned(targets["ours, batching off"], tmp),
                ],
            )
            stack.enter_context(running(echo, tmp / "echo.log", "echo ready"))
            order = [ECHO, "ours, batching off", "ours, batching on", servers[2][0]]
            for round_ in range(1, args.rounds + 1):
                for c in levels:
                    for name in order:
                        progress(f"round {round_}/{args.rounds}: {name}, c={c}")
                        if pa_binary:
                            got = perf_analyzer(pa_binary, name, targets[name], c, tmp)
                            if isinstance(got, Row):
                                samples.append(got)
                            else:
                                notes.append(f"perf_analyzer {name} c={c}: {got}")
                        else:
                            samples.append(load(name, targets[name], request, c, args.duration))
    rows = [
        ort_row,
        *sorted(_median_rows(samples), key=lambda r: (ROW_ORDER[r.config], r.concurrency)),
    ]
    notes.append(f"{args.rounds} interleaved round(s) per cell, medians shown")
    print_report(rows, notes, levels)
    return 0


def _get(rows: list[Row], config: str, c: int) -> Row | None:
    return next((r for r in rows if r.config == config and r.concurrency == c), None)


def print_report(rows: list[Row], notes: list[str], levels: list[int]) -> None:
    """Rich tables (plain text without rich): measurements, then the goals."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for r in rows:
            print(r)
        return
    console = Console(width=140)
    table = Table(title="neuroserve serving benchmark (latency ms, throughput req/s)")
    for col in ("configuration", "tool", "c", "p50", "p99", "throughput", "errors"):
        table.add_column(col, justify="left" if col in {"configuration", "tool"} else "right")
    for r in rows:
        table.add_row(
            r.config,
            r.tool,
            str(r.concurrency),
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.throughput:,.0f}",
            str(r.errors),
        )
    console.print(table)

    ort = rows[0]
    echo = ECHO
    goals = Table(title="goals")
    for col in ("goal", "measured", "target", "met"):
        goals.add_column(col)
    e1 = _get(rows, echo, 1)
    for cfg in ("ours, batching off", "ours, batching on"):
        ours = _get(rows, cfg, 1)
        if e1 and ours:
            budget = 1.3 * (e1.p50_ms + ort.p50_ms)
            goals.add_row(
                f"c=1 p50, {cfg}",
                f"{ours.p50_ms:.3f} ms",
                f"<= 1.3 x (echo {e1.p50_ms:.3f} + ORT {ort.p50_ms:.3f}) = {budget:.3f} ms",
                "yes" if ours.p50_ms <= budget else "NO",
            )
    top = max(levels)
    e32, on, off = (
        _get(rows, echo, top),
        _get(rows, "ours, batching on", top),
        _get(rows, "ours, batching off", top),
    )
    if e32 and on:
        ratio = on.throughput / e32.throughput
        goals.add_row(
            f"c={top} throughput, batching / echo",
            f"{ratio:.2f}x",
            ">= 0.75x",
            "yes" if ratio >= 0.75 else "NO",
        )
    if on and off:
        ratio = on.throughput / off.throughput
        goals.add_row(
            f"c={top} throughput, batching on / off",
            f"{ratio:.2f}x",
            ">= 1.2x",
            "yes" if ratio >= 1.2 else "NO",
        )
    w2 = _get(rows, "ours, batching on, --workers 2", top)
    if w2 and on:
        goals.add_row(
            f"c={top} throughput, --workers 2 / 1 (info)",
            f"{w2.throughput / on.throughput:.2f}x",
            "-",
            "-",
        )
    console.print(goals)
    for note in notes:
        console.print(f"- {note}")
    console.print(
        f"- pinning: {'taskset, server core 0, load core 1' if TASKSET else 'none'}; "
        f"{os.cpu_count()} cores; shared machine, numbers are noisy"
    )


if __name__ == "__main__":
    sys.exit(main())
