"""Fixtures and helpers for the reliability tests: load, faults and hostile input.

Reuses tests/serving's in-process server (``ServerThread``, ``make_settings``) and tiny ONNX
models by importing them, and adds what those tests do not need: a *slow* model (so queues,
cancellations and shutdowns have something in flight), a server run as a real subprocess
(``python -m serving``) whose stderr is drained on a thread (a full pipe would stall the server
and look like a hang), and a log collector for the in-process server's ``serving`` logger.

Every wait here is bounded: helpers take a timeout and raise ``AssertionError`` with the log so
far instead of blocking.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.ports import free_port
from tests.serving import onnx_models

# Re-exported fixtures from tests/serving (a second, independent instance for this folder).
from tests.serving.conftest import channel, model_repo, server, stub  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]

#: Side of the square matrices the slow model multiplies; cost ~ SLOW_N**3 per MatMul.
SLOW_N = 384


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


def slow_model(matmuls: int = 60) -> onnx.ModelProto:
    """[batch, 4] FP32 -> [batch, 4] (identity), after ``matmuls`` dense SLOW_N² products.

    The products depend on the input (a scaled identity times the input's sum), so ONNX
    Runtime cannot constant-fold them away, and their cost does not depend on the batch size:
    one session call (~100 ms on one core at the default) costs the same for 1 or 8 rows,
    which makes queue behaviour easy to reason about. Values stay finite for small inputs
    (the chain multiplies by the identity).
    """
    eye = numpy_helper.from_array(np.eye(SLOW_N, dtype=np.float32), "I")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [
        helper.make_node("ReduceSum", ["input"], ["s"], keepdims=0),
        helper.make_node("Mul", ["I", "s"], ["m0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "I"], [f"m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"m{matmuls}"], ["t"], keepdims=0),
        helper.make_node("Mul", ["t", "zero"], ["t0"]),
        helper.make_node("Add", ["input", "t0"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        initializer=[eye, zero],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", onnx_models.OPSET)],
        ir_version=onnx_models.IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model


#: What one call of the slow model should cost on one core: queue, cancellation and shutdown
#: tests reason in multiples of it.
SLOW_CALL_S = 0.1


def calibrated_slow_model() -> onnx.ModelProto:
    """``slow_model`` with as many products as make one call take ~SLOW_CALL_S on this CPU.

    A fixed count made a call 25-100 ms depending on the machine, and on a fast one a queue of
    abandoned calls drained before a cancellation could reach it. Never fewer than the default.
    """
    import onnxruntime as ort

    probe_matmuls = 20
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        slow_model(probe_matmuls).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    x = np.ones((1, 4), dtype=np.float32)
    session.run(None, {"input": x})
    times = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - start)
    per_matmul = sorted(times)[len(times) // 2] / probe_matmuls
    return slow_model(max(60, round(SLOW_CALL_S / per_matmul)))


def write_models(root: Path, models: dict[str, onnx.ModelProto]) -> Path:
    """Write ``{name: model}`` as version 1 of each under ``root``."""
    for name, model in models.items():
        onnx_models.save(model, root / name / "1" / "model.onnx")
    return root


@pytest.fixture(scope="session")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with the slow model (``slow``) and the fast classifier."""
    return write_models(
        tmp_path_factory.mktemp("slow-repo"),
        {"slow": calibrated_slow_model(), "classifier": onnx_models.classifier()},
    )


class LogCollector(logging.Handler):
    """Collects the in-process server's log lines (the ``serving`` logger) for assertions."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.lines.append(record.getMessage())

    def matching(self, *needles: str) -> list[str]:
        """Lines containing every needle."""
        with self._lock:
            return [line for line in self.lines if all(n in line for n in needles)]


@pytest.fixture
def server_log() -> Iterator[LogCollector]:
    """Everything the ``serving`` logger says during one test."""
    collector = LogCollector()
    logger = logging.getLogger("serving")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(collector)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)
        logger.setLevel(old_level)


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> object:
    """Poll ``predicate`` until truthy (returned) or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class ServerProcess:
    """``python -m serving ...`` as a subprocess, stderr drained into ``lines`` by a thread."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "serving",
                "--grpc-port", str(self.port), "--http-port", "0", "--metrics-port", "-1", *args,
            ],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` of the server."""
        return f"127.0.0.1:{self.port}"

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line)

    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        with self._lock:
            return "".join(self.lines)

    def count(self, needle: str) -> int:
        """How many log lines contain ``needle``."""
        with self._lock:
            return sum(needle in line for line in self.lines)

    def wait_for(self, needle: str, timeout: float = 60, count: int = 1) -> None:
        """Block until ``needle`` appeared ``count`` times in the log (bounded)."""
        deadline = time.monotonic() + timeout
        while self.count(needle) < count:
            if self.proc.poll() is not None and self.count(needle) < count:
                time.sleep(0.2)  # let the reader catch up on the last lines
                if self.count(needle) >= count:
                    return
                raise AssertionError(
                    f"server exited ({self.proc.returncode}) before {needle!r}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not seen within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def rss_mb(self) -> float:
        """Resident set size of the server process in MiB."""
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def terminate(self) -> None:
        """Send SIGTERM (graceful shutdown)."""
        self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Stop the process for good (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Factory for server subprocesses; every one started is stopped after the test."""
    started: list[ServerProcess] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(args, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
