"""The GPU path measured in one run: training the MNIST CNN on CUDA, and serving it on CUDA
against the CPU provider, raw ONNX Runtime on CUDA and the bare gRPC floor.

    .venv/bin/python bench/bench_gpu.py train --device cuda --json train.json
    .venv/bin/python bench/bench_gpu.py serve --devices cuda,cpu --train-json train.json \\
        --markdown table.md

``train`` trains ``cnn`` on ``mnist`` with ``training.train`` directly (no Prefect, no MLflow:
the GPU machine has neither, and what a run records is tested on the CPU), exports it where the
serving benchmarks look for the trained model (``.neuroserve-bench/mnist-cnn.onnx``) and writes
its time, accuracy, device record and ONNX parity per provider as JSON.

``serve`` starts, side by side, ``neuroserve serve --device D`` for each of ``--devices`` (batching
on, ``--max-batch-size`` large enough for the large-batch requests) and two bare gRPC echo
servers (bench/serving_echo.py: fixed response bytes of the batch-1 and the large-batch size,
the Python gRPC floor). Each cell is bench/serving_load.py (closed-loop async load, its own
process) for ``--duration`` seconds: batch-1 requests at c=1 and c=32, then ``--large``-row
requests at c=1 and c=8; cells are measured in interleaved rounds and the median of each is
reported, so drift on a shared machine stays out of the ratios. Raw ONNX Runtime runs
in-process (plain ``session.run`` with host arrays, as an application would) at batch 1 and at
the large size, on every provider measured. At the end each server's Prometheus metrics say
which provider served its rows (``neuroserve_batch_size_sum{provider=...}``).

It prints one markdown table (the measurements, then the goals of issue 17) and writes it to
``--markdown``; bench/gpu_check.sh puts it into the README. Without CUDA, ``--devices cpu``
measures the CPU columns alone and the CUDA goals say "not measured".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    progress,
    run_load,
    running,
)
from serving_cnn import cnn_path  # noqa: E402

from serving._proto import grpc_service_pb2 as pb  # noqa: E402
from serving.client import encode_inputs  # noqa: E402

TRAINED = ROOT / ".neuroserve-bench" / "mnist-cnn.onnx"
ECHO = "echo (Python gRPC floor)"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
SHORT = {CUDA: "cuda", CPU: "cpu"}
#: The issue's goals: c=1 p50 within this factor of (echo p50 + raw ORT CUDA batch-1 p50), and
#: c=32 batched throughput at least this share of the echo's.
LATENCY_FACTOR = 1.3
THROUGHPUT_SHARE = 0.9


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]


def _core_sets() -> tuple[str | None, str | None]:
    """(server cores, load cores): disjoint halves of up to four cores, as ``taskset -c`` text;
    (None, None) without taskset or with one core (then nothing is pinned)."""
    cores = _cores()
    if not TASKSET or len(cores) < 2:
        return None, None
    half = max(1, min(2, len(cores) // 2))
    server, load = cores[:half], cores[half : 2 * half]
    return ",".join(map(str, server)), ",".join(map(str, load))


SERVER_CORES, LOAD_CORES = _core_sets()


# --------------------------------------------------------------------------------------------
# train


class _Announced:
    """What the loop announces at the start of training (device, GPU, versions)."""

    def __init__(self) -> None:
        from training import Callback

        outer = self

        class _Keep(Callback):
            def on_train_start(self, info: dict[str, Any]) -> None:
                outer.info = dict(info)

        self.info: dict[str, Any] = {}
        self.callback = _Keep()


def train_main(args: argparse.Namespace) -> int:
    """Train the MNIST CNN on ``--device``, export it for the serving bench, write JSON."""
    from training import TrainSpec, export_onnx, train

    spec = TrainSpec(
        "cnn", args.data, seed=args.seed, epochs=args.epochs, device=args.device, amp=args.amp
    )
    announced = _Announced()
    progress(f"training {spec.kind} on {spec.data}, --device {spec.device}")
    start = time.perf_counter()
    result = train(spec, callbacks=[announced.callback])
    wall = time.perf_counter() - start
    out = Path(args.out)
    report = export_onnx(result, out)
    record = {
        "spec": result.spec.to_dict(),
        "device": announced.info,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 2),
        "wall_seconds": round(wall, 2),
        "seconds_per_epoch": round(result.train_seconds / max(1, len(result.history)), 3),
        "test_metrics": result.test_metrics,
        "parity": report.provider_diffs,
        "parity_notes": report.provider_notes,
        "onnx": str(out),
    }
    text = json.dumps(record, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


# --------------------------------------------------------------------------------------------
# serve


@dataclass
class Cell:
    """One measured configuration: a server (or echo) at one concurrency and request size."""

    config: str
    rows: int  # rows per request
    concurrency: int
    p50_ms: float
    p99_ms: float
    throughput: float  # requests per second
    errors: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.throughput * self.rows


def _request_bytes(x: np.ndarray) -> bytes:
    return encode_inputs(pb.ModelInferRequest(model_name=MODEL), {"input": x}).SerializeToString()


def _response_bytes(rows: int) -> bytes:
    """A ModelInferResponse of ``rows`` x 10 probabilities: what our server sends back."""
    response = pb.ModelInferResponse(model_name=MODEL, model_version="1")
    response.outputs.add(name="output", datatype="FP32", shape=[rows, 10])
    response.raw_output_contents.append(np.full((rows, 10), 0.1, np.float32).tobytes())
    return response.SerializeToString()


def _load(target: str, request: Path, c: int, duration: float, warmup: float) -> dict[str, Any]:
    """One cell through bench/serving_load.py, pinned to the load cores."""
    return run_load(target, request, c, duration, cores=LOAD_CORES, warmup=warmup)


def raw_ort(model: Path, provider: str, rows: int, n: int) -> Cell | str:
    """ONNX Runtime in this process on ``provider``: plain ``session.run`` on host arrays
    (each call copies its input to the device and its output back), or why it cannot run."""
    import onnxruntime as ort

    if provider == CUDA:
        from serving.devices import DeviceUnavailableError, require_device

        try:  # the server's own check: loads CUDA/cuDNN from pip's nvidia-* packages, or says why
            require_device("cuda")
        except DeviceUnavailableError as exc:
            return str(exc)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    providers: list[Any] = [CPU]
    if provider == CUDA:
        providers = [(CUDA, {"cudnn_conv_algo_search": "EXHAUSTIVE"}), CPU]
    try:
        session = ort.InferenceSession(str(model), options, providers=providers)
    except Exception as exc:
        return f"no session: {str(exc).splitlines()[0][:200]}"
    if session.get_providers()[0] != provider:
        return f"ONNX Runtime fell back to {session.get_providers()[0]}"
    x = np.random.default_rng(0).uniform(0, 255, size=(rows, 1, 28, 28)).astype(np.float32)
    for _ in range(50):
        session.run(None, {"input": x})
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    lat = np.array(times) * 1000
    label = f"raw ONNX Runtime, {SHORT[provider]}, in-process"
    p50, p99 = (float(v) for v in np.percentile(lat, [50, 99]))
    return Cell(label, rows, 1, p50, p99, n / sum(times))


def _scrape(port: int) -> dict[str, float]:
    """Rows served per provider label, from one server's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    rows: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "neuroserve_batch_size_sum":
                provider = sample.labels.get("provider", "(no label)")
                rows[provider] = rows.get(provider, 0.0) + float(sample.value)
    return rows


@dataclass
class Server:
    name: str
    device: str
    target: str = ""
    metrics_port: int = 0
    failed: str = ""


@contextlib.contextmanager
def _servers(
    devices: Sequence[str], repo: Path, max_batch: int, tmp: Path
) -> Iterator[list[Server]]:
    """``neuroserve serve --device D`` for each device, started in turn; one that does not
    come up is reported with its last log line and left out."""
    common = [
        PY,
        "-m",
        "serving",
        "--model-repository",
        str(repo),
        "--http-port",
        "-1",
        "--poll-interval",
        "0",
        "--max-batch-size",
        str(max_batch),
        "--log-level",
        "WARNING",
    ]
    servers: list[Server] = []
    with contextlib.ExitStack() as stack:
        for device in devices:
            server = Server(f"neuroserve --device {device}", device)
            port, server.metrics_port = _free_port(), _free_port()
            server.target = f"127.0.0.1:{port}"
            threads = ["--intra-op-threads", str(_server_threads())]
            cmd = _pin(
                SERVER_CORES,
                [
                    *common,
                    "--device",
                    device,
                    "--grpc-port",
                    str(port),
                    "--metrics-port",
                    str(server.metrics_port),
                    *threads,
                ],
            )
            log = tmp / f"server-{device}.log"
            progress(f"starting {server.name}")
            try:
                proc = stack.enter_context(running(cmd, log))
                _wait(server.target, proc, log)
            except RuntimeError as exc:
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                server.failed = lines[-1][:300] if lines else "did not start"
                progress(f"{server.name} did not start: {server.failed}")
            servers.append(server)
        yield servers


def _server_threads() -> int:
    return len(SERVER_CORES.split(",")) if SERVER_CORES else 1


def _wait(target: str, proc: subprocess.Popen[Any], log: Path) -> None:
    """Ready, or RuntimeError with the server's log when it exits first (strict --device)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        with contextlib.suppress(RuntimeError):
            wait_ready_quick(target)
            return
        time.sleep(0.2)
    raise RuntimeError(f"not ready after 180 s\n{log.read_text()}")


def wait_ready_quick(target: str) -> None:
    """One short readiness probe (``wait_ready`` itself waits up to 30 s)."""
    import grpc

    from serving._proto import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            if stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=1).ready:
                return
        except grpc.RpcError as exc:
            raise RuntimeError(str(exc)) from None
    raise RuntimeError("not ready")


def serve_main(args: argparse.Namespace) -> int:
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    large_levels = [int(c) for c in args.large_concurrency.split(",")]
    notes: list[str] = []
    samples: list[Cell] = []
    raw: list[Cell] = []
    rows_by_server: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmpdir:
        tmp = Path(tmpdir)
        model, origin = cnn_path(tmp, TRAINED)
        notes.append(f"model: the MNIST CNN, {origin}")
        repo_file = tmp / "repo" / MODEL / "1" / "model.onnx"
        repo_file.parent.mkdir(parents=True)
        repo_file.write_bytes(model.read_bytes())

        rng = np.random.default_rng(1)
        sizes = {1: "small", args.large: "large"}
        requests, responses = {}, {}
        for rows in sizes:
            x = rng.uniform(0, 255, size=(rows, 1, 28, 28)).astype(np.float32)
            requests[rows] = tmp / f"request-{rows}.bin"
            requests[rows].write_bytes(_request_bytes(x))
            responses[rows] = tmp / f"response-{rows}.bin"
            responses[rows].write_bytes(_response_bytes(rows))

        providers = [p for p, d in ((CUDA, "cuda"), (CPU, "cpu")) if d in devices]
        for provider in providers:
            for rows in sizes:
                progress(f"raw ONNX Runtime on {SHORT[provider]}, batch {rows}")
                got = raw_ort(model, provider, rows, args.raw_calls if rows == 1 else 200)
                if isinstance(got, str):
                    notes.append(f"raw ONNX Runtime on {SHORT[provider]}: {got}")
                    break
                raw.append(got)

        with (
            _servers(devices, tmp / "repo", args.large, tmp) as servers,
            contextlib.ExitStack() as echoes,
        ):
            targets = {s.name: s.target for s in servers if not s.failed}
            for s in servers:
                if s.failed:
                    notes.append(f"{s.name} did not serve: {s.failed}")
            for rows in sizes:
                port = _free_port()
                name = f"{ECHO}, {rows}-row responses"
                cmd = _pin(
                    SERVER_CORES,
                    [
                        PY,
                        str(BENCH / "serving_echo.py"),
                        "--port",
                        str(port),
                        "--response",
                        str(responses[rows]),
                    ],
                )
                echoes.enter_context(running(cmd, tmp / f"echo-{rows}.log", "echo ready"))
                targets[name] = f"127.0.0.1:{port}"
            plan = [(1, c) for c in levels] + [(args.large, c) for c in large_levels]
            for round_ in range(1, args.rounds + 1):
                for rows, c in plan:
                    for name, target in targets.items():
                        if name.startswith(ECHO) and not name.endswith(f", {rows}-row responses"):
                            continue
                        label = ECHO if name.startswith(ECHO) else name
                        progress(f"round {round_}/{args.rounds}: {label}, {rows} row(s), c={c}")
                        r = _load(target, requests[rows], c, args.duration, args.warmup)
                        samples.append(
                            Cell(
                                label,
                                rows,
                                c,
                                r["p50_ms"],
                                r["p99_ms"],
                                r["throughput"],
                                r["errors"],
                            )
                        )
            for s in servers:
                if not s.failed:
                    rows_by_server[s.name] = _scrape(s.metrics_port)
    cells = _medians(samples)
    notes.append(
        f"{args.rounds} interleaved round(s) of {args.duration:g} s per cell, medians shown; "
        f"servers on cores {SERVER_CORES or 'any'}, load generator on {LOAD_CORES or 'any'}"
    )
    train = json.loads(Path(args.train_json).read_text()) if args.train_json else None
    text = report(raw + cells, rows_by_server, notes, args.large, levels, train)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "cells": [asdict(c) for c in raw + cells],
                    "rows_by_provider": rows_by_server,
                    "notes": notes,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


def _medians(samples: list[Cell]) -> list[Cell]:
    """The median of each (config, rows, concurrency) over the rounds (bench_serving's rule)."""
    out = []
    for rows in sorted({s.rows for s in samples}):
        group = [
            Row(f"{s.config}\0{rows}", s.concurrency, s.p50_ms, s.p99_ms, s.throughput, s.errors)
            for s in samples
            if s.rows == rows
        ]
        for r in _median_rows(group):
            config = r.config.split("\0")[0]
            out.append(
                Cell(config, rows, r.concurrency, r.p50_ms, r.p99_ms, r.throughput, r.errors)
            )
    return out


def _find(cells: list[Cell], config: str, rows: int, c: int) -> Cell | None:
    return next(
        (x for x in cells if x.config == config and x.rows == rows and x.concurrency == c), None
    )


def report(
    cells: list[Cell],
    rows_by_server: dict[str, dict[str, float]],
    notes: list[str],
    large: int,
    levels: list[int],
    train: dict[str, Any] | None,
) -> str:
    """The markdown the README's GPU section holds: training, measurements, goals, notes."""
    lines: list[str] = []
    if train is not None:
        dev = train.get("device", {})
        acc = train.get("test_metrics", {}).get("accuracy")
        parity = ", ".join(f"{SHORT.get(k, k)} {v:.1e}" for k, v in train["parity"].items())
        spec = train.get("spec", {})
        lines += [
            f"| training (`{spec.get('kind')}` on `{spec.get('data')}`) | device | epochs | "
            "train s | s/epoch | test accuracy | ONNX parity (max diff) |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- |",
            f"| {dev.get('gpu_name', 'CPU')}, torch {dev.get('torch_version', '?')}, CUDA "
            f"{dev.get('cuda_version', '-')}, cuDNN {dev.get('cudnn_version', '-')}, amp "
            f"{dev.get('amp', 'off')} | {dev.get('device', '?')} | {train['epochs_run']} | "
            f"{train['train_seconds']:.1f} | {train['seconds_per_epoch']:.2f} | "
            f"{'-' if acc is None else f'{acc:.4f}'} | {parity} |",
            "",
        ]
    lines += [
        "| configuration | rows/request | c | p50 ms | p99 ms | requests/s | rows/s | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = sorted(cells, key=lambda x: (x.rows, x.config.startswith("neuroserve"), x.config))
    for x in order:
        lines.append(
            f"| {x.config} | {x.rows} | {x.concurrency} | {x.p50_ms:.3f} | {x.p99_ms:.3f} | "
            f"{x.throughput:,.0f} | {x.rows_per_s:,.0f} | {x.errors} |"
        )
    lines += ["", "| goal (issue 17) | measured | target | met |", "| --- | --- | --- | --- |"]
    cuda_server = "neuroserve --device cuda"
    raw_cuda = _find(cells, "raw ONNX Runtime, cuda, in-process", 1, 1)
    echo1 = _find(cells, ECHO, 1, 1)
    ours1 = _find(cells, cuda_server, 1, 1)
    if raw_cuda and echo1 and ours1:
        budget = LATENCY_FACTOR * (echo1.p50_ms + raw_cuda.p50_ms)
        lines.append(
            f"| c=1 p50, {cuda_server} | {ours1.p50_ms:.3f} ms | <= {LATENCY_FACTOR} x (echo "
            f"{echo1.p50_ms:.3f} + raw ORT CUDA {raw_cuda.p50_ms:.3f}) = {budget:.3f} ms | "
            f"{'yes' if ours1.p50_ms <= budget else 'NO'} |"
        )
    else:
        lines.append(f"| c=1 p50, {cuda_server} | not measured (no CUDA) | - | - |")
    top = max(levels)
    echo_top, ours_top = _find(cells, ECHO, 1, top), _find(cells, cuda_server, 1, top)
    if echo_top and ours_top:
        share = ours_top.throughput / echo_top.throughput
        lines.append(
            f"| c={top} throughput with batching, {cuda_server} / echo | {share:.2f} x "
            f"({ours_top.throughput:,.0f} / {echo_top.throughput:,.0f} req/s) | >= "
            f"{THROUGHPUT_SHARE} x | {'yes' if share >= THROUGHPUT_SHARE else 'NO'} |"
        )
    else:
        lines.append(f"| c={top} throughput, {cuda_server} / echo | not measured | - | - |")
    served = rows_by_server.get(cuda_server)
    if served is not None:
        on_cpu = served.get("cpu", 0.0)
        detail = ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(served.items())) or "none"
        lines.append(
            f"| rows served on the CPU provider by {cuda_server} (provider label) | "
            f"{on_cpu:,.0f} ({detail}) | 0 | {'yes' if on_cpu == 0 and served else 'NO'} |"
        )
    else:
        lines.append(f"| rows on the CPU provider, {cuda_server} | not measured | 0 | - |")
    for name, served_rows in sorted(rows_by_server.items()):
        if name != cuda_server:
            detail = ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(served_rows.items()))
            notes.append(f"rows served by {name}, by provider label: {detail or 'none'}")
    ours_large = _find(cells, cuda_server, large, 1)
    raw_large = _find(cells, "raw ONNX Runtime, cuda, in-process", large, 1)
    if ours_large and raw_large:
        notes.append(
            f"{large}-row requests at c=1: {cuda_server} {ours_large.rows_per_s:,.0f} rows/s, "
            f"raw ORT CUDA {raw_large.rows_per_s:,.0f} rows/s "
            f"({ours_large.rows_per_s / raw_large.rows_per_s:.2f} x)"
        )
    lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the MNIST CNN and export it for the serving bench")
    t.add_argument("--device", default="cuda", help="training --device (cuda)")
    t.add_argument("--data", default="mnist")
    t.add_argument("--epochs", type=int, default=None, help="default: the catalog's")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--amp", action="store_true")
    t.add_argument("--out", default=str(TRAINED))
    t.add_argument("--json", default="")
    s = sub.add_parser("serve", help="the serving benchmark")
    s.add_argument("--devices", default="cuda,cpu", help="neuroserve --device values (cuda,cpu)")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--duration", type=float, default=2.0, help="seconds per cell (2)")
    s.add_argument("--warmup", type=float, default=0.5)
    s.add_argument("--concurrency", default="1,32", help="batch-1 levels (1,32)")
    s.add_argument("--large", type=int, default=256, help="rows per large request (256)")
    s.add_argument("--large-concurrency", default="1,8")
    s.add_argument("--raw-calls", type=int, default=2000)
    s.add_argument("--train-json", default="")
    s.add_argument("--markdown", default="")
    s.add_argument("--json", default="")
    args = parser.parse_args(argv)
    return train_main(args) if args.command == "train" else serve_main(args)


if __name__ == "__main__":
    sys.exit(main())
