"""What tracing costs a server under load: the same server with tracing off and at 100 %.

    .venv/bin/python bench/bench_tracing.py [--rounds 3] [--duration 3] [--concurrency 32]
        [--otlp] [--baseline-tree DIR]

Model and load as bench/bench_serving.py: the MNIST CNN, batch-1 requests from
bench/serving_load.py (a closed-loop async generator, no trace headers: every traced request
starts its own trace). Rows, all servers running side by side pinned to core 0 (idle while
another is measured), the load pinned to core 1:

* ``tracing off``: ``--trace-rate 0``, the default.
* ``tracing 100 %, no-op export``: ``--trace-rate 1`` with spans handed by the SDK's
  ``BatchSpanProcessor`` to an exporter that drops them. Every span is created, timed and queued
  as in production; only the serialisation and sending of the exporter are left out (the console
  exporter, the default without ``--otlp-endpoint``, writes JSON to stderr and would measure the
  terminal).
* ``--also-rate R``: also ``--trace-rate R`` with the no-op exporter (what sampling saves).
* ``--otlp``: also ``--trace-rate 1 --otlp-endpoint`` to a sink in this process that accepts
  OTLP/gRPC exports and drops them: the full production path, exporter included.
* ``--baseline-tree DIR``: also a server from another checkout (e.g. ``git worktree add DIR
  <commit before tracing>``) with tracing off, to show that off costs nothing next to code
  without tracing at all.

Cells are measured in interleaved rounds and the median of each is reported (this machine's
speed drifts within minutes; interleaving keeps the drift out of the ratios). Beside throughput
each cell reports the server's CPU time per request (its process's user + system time over the
requests its statistics counted during the cell): on a shared machine another process on the
server's core lowers throughput but not the CPU a request costs, so that ratio is the steadier
measure of what tracing adds. The issue's goal: tracing at 100 % costs at most 10 % at c=32, and
off costs nothing measurable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from bench_serving import (  # noqa: E402
    MODEL,
    PY,
    TASKSET,
    Row,
    _free_port,
    _median_rows,
    _pin,
    load,
    progress,
    running,
    wait_ready,
)
from serving_cnn import cnn_path  # noqa: E402

from serving._proto import grpc_service_pb2 as pb  # noqa: E402
from serving._proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from serving.client import encode_inputs  # noqa: E402

OFF = "tracing off"
NOOP = "tracing 100 %, no-op export"
OTLP = "tracing 100 %, OTLP to a local sink"
BASELINE = "baseline tree, tracing off"
GOAL = 0.10  # the issue's bound on what tracing at 100 % may cost

#: Runs the server with spans dropped by a no-op exporter (``serving.tracing.exporter_override``).
NOOP_SERVER = """
import sys
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from serving import tracing
from serving.cli import serve_main

class Drop(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

tracing.exporter_override = Drop()
sys.exit(serve_main())
"""

#: Runs another checkout's server: its package first on the path.
TREE_SERVER = """
import sys
sys.path.insert(0, sys.argv.pop(1))
from serving.cli import serve_main
sys.exit(serve_main())
"""


def input_shape(path: Path) -> list[int]:
    """The model input's dimensions after the batch axis."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    (tensor,) = [i for i in graph.input if i.name not in initializers]
    if tensor.name != "input":
        raise SystemExit(f"{path}: the input is {tensor.name!r}; the benchmark sends 'input'")
    return [d.dim_value for d in tensor.type.tensor_type.shape.dim[1:]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(target: str) -> tuple[int, int]:
    """Requests the server has answered successfully, and session calls it has made (its
    ModelStatistics)."""
    with grpc.insecure_channel(target) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=MODEL), timeout=10
        )
    model = stats.model_stats[0]
    return int(model.inference_stats.success.count), int(model.execution_count)


@contextlib.contextmanager
def otlp_sink() -> Iterator[int]:
    """An OTLP/gRPC trace receiver on a free port that accepts every export and keeps nothing."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc

    class Sink(ts_grpc.TraceServiceServicer):
        def Export(self, request: object, context: object) -> ts.ExportTraceServiceResponse:  # noqa: N802
            return ts.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ts_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (3)")
    parser.add_argument("--duration", type=float, default=3.0, help="s per cell (3)")
    parser.add_argument("--concurrency", type=int, default=32, help="callers (32)")
    parser.add_argument("--otlp", action="store_true", help="add the OTLP-to-a-sink row")
    parser.add_argument(
        "--also-rate",
        type=float,
        help="add a row sampling this fraction of requests (no-op export), e.g. 0.1",
    )
    parser.add_argument(
        "--model-file",
        type=Path,
        help="serve this ONNX model instead (one FP32 input named 'input', batch axis first; "
        "e.g. the peer harness's seed CNN)",
    )
    parser.add_argument("--baseline-tree", type=Path, help="add a row for another checkout")
    args = parser.parse_args()
    if args.baseline_tree is not None and not (args.baseline_tree / "serving").is_dir():
        parser.error(f"--baseline-tree {args.baseline_tree}: no serving/ package there")
    samples: list[Row] = []
    notes: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmpdir,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmpdir)
        if args.model_file is not None:
            model_path, origin = args.model_file, str(args.model_file)
        else:
            model_path, origin = cnn_path(tmp, ROOT / ".neuroserve-bench" / "mnist-cnn.onnx")
        notes.append(f"model: {origin}")
        repo_file = tmp / "repo" / MODEL / "1" / "model.onnx"
        repo_file.parent.mkdir(parents=True)
        shutil.copyfile(model_path, repo_file)
        x = np.random.default_rng(1).uniform(0, 255, size=(1, *input_shape(model_path)))
        x = x.astype(np.float32)
        request = tmp / "request.bin"
        request.write_bytes(
            encode_inputs(pb.ModelInferRequest(model_name=MODEL), {"input": x}).SerializeToString()
        )
        flags = [
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
        servers: list[tuple[str, list[str]]] = [
            (OFF, [PY, "-m", "serving", *flags, "--trace-rate", "0"]),
            (NOOP, [PY, "-c", NOOP_SERVER, *flags, "--trace-rate", "1"]),
        ]
        if args.also_rate is not None:
            rate = f"{args.also_rate:g}"
            servers.append(
                (
                    f"tracing {rate}, no-op export",
                    [PY, "-c", NOOP_SERVER, *flags, "--trace-rate", rate],
                )
            )
        if args.otlp:
            sink = stack.enter_context(otlp_sink())
            servers.append(
                (
                    OTLP,
                    [
                        PY,
                        "-m",
                        "serving",
                        *flags,
                        "--trace-rate",
                        "1",
                        "--otlp-endpoint",
                        f"http://127.0.0.1:{sink}",
                    ],
                )
            )
            notes.append("OTLP sink: a grpc server in the benchmark process, unpinned")
        if args.baseline_tree is not None:
            tree = str(args.baseline_tree.resolve())
            servers.append((BASELINE, [PY, "-c", TREE_SERVER, tree, *flags]))
            notes.append(f"baseline tree: {tree}")
        targets: dict[str, str] = {}
        pids: dict[str, int] = {}
        for name, cmd in servers:
            port = _free_port()
            targets[name] = f"127.0.0.1:{port}"
            progress(f"starting {name}")
            proc = stack.enter_context(
                running(_pin("0", [*cmd, "--grpc-port", str(port)]), tmp / f"{port}.log")
            )
            pids[name] = proc.pid
            wait_ready(targets[name])
        c = args.concurrency
        cpu: dict[str, list[float]] = {name: [] for name, _ in servers}
        batch: dict[str, list[float]] = {name: [] for name, _ in servers}
        for round_ in range(1, args.rounds + 1):
            for name, _ in servers:
                progress(f"round {round_}/{args.rounds}: {name}, c={c}")
                (requests, calls), seconds = served(targets[name]), cpu_seconds(pids[name])
                samples.append(load(name, targets[name], request, c, args.duration))
                after, calls_after = served(targets[name])
                answered = max(after - requests, 1)
                cpu[name].append((cpu_seconds(pids[name]) - seconds) / answered * 1e6)
                batch[name].append(answered / max(calls_after - calls, 1))
    rows = {r.config: r for r in _median_rows(samples)}
    cpu_us = {name: float(np.median(values)) for name, values in cpu.items()}
    batch_mean = {name: float(np.median(values)) for name, values in batch.items()}
    notes.append(f"{args.rounds} interleaved round(s) of {args.duration:g} s per cell, medians")
    notes.append(
        f"pinning: {'taskset, servers core 0, load core 1' if TASKSET else 'none'}; "
        "shared machine, numbers are noisy"
    )
    print_report([rows[name] for name, _ in servers], cpu_us, batch_mean, notes)
    return 0


def print_report(
    rows: list[Row], cpu_us: dict[str, float], batch: dict[str, float], notes: list[str]
) -> None:
    """One plain table: throughput, CPU per request, mean batch and latency of each server,
    with the ratios to tracing off; then the goal."""
    off = next(r for r in rows if r.config == OFF)
    header = (
        f"{'server':<36} {'c':>3} {'req/s':>9} {'vs off':>7} {'CPU us/req':>10} {'vs off':>7} "
        f"{'batch':>5} {'p50 ms':>8} {'p99 ms':>8} err"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.config:<36} {r.concurrency:>3} {r.throughput:>9,.0f} "
            f"{r.throughput / off.throughput:>6.3f}x {cpu_us[r.config]:>10.1f} "
            f"{cpu_us[r.config] / cpu_us[OFF]:>6.3f}x {batch[r.config]:>5.1f} "
            f"{r.p50_ms:>8.3f} {r.p99_ms:>8.3f} {r.errors}"
        )
    print()
    for r in rows:
        if r.config in {NOOP, OTLP}:
            lost = 1 - r.throughput / off.throughput
            added = cpu_us[r.config] / cpu_us[OFF] - 1
            verdict = "yes" if max(lost, added) <= GOAL else "NO"
            print(
                f"goal, {r.config}: {lost:+.1%} throughput lost, {added:+.1%} CPU per request "
                f"(both <= {GOAL:.0%}): {verdict}"
            )
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    sys.exit(main())
