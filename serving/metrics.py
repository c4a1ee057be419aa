"""Prometheus metrics on their own HTTP port (Triton's 8002 by default).

Requests by model and status, latency histograms for queue, compute and total, executed batch
sizes and loaded models; with inference capture on, captured and dropped rows. The per-batch
series (compute latency, batch size) carry a ``provider`` label naming the execution provider
that ran the batch (``cuda``, ``tensorrt``, ``cpu``), bound when a version loads, so rows served
on the CPU are counted apart: ``neuroserve_batch_size_sum{provider="cpu"}``. Each server owns
a registry (several servers in one test process must not collide); with ``--workers N`` every
worker process writes to a shared multiprocess directory and the parent serves the aggregate
(prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import multiprocess as prom_multiprocess

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def multiprocess_enabled() -> bool:
    """True in worker processes started by ``--workers N`` (values go to shared files)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ServerMetrics:
    """The server's Prometheus instruments; also the batcher's ``BatchObserver``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "neuroserve_requests", "Inference requests by model, gRPC status and transport.",
            ["model", "status", "protocol"], registry=reg,
        )  # fmt: skip
        self.request_latency = Histogram(
            "neuroserve_request_latency_seconds", "Total time per inference request.",
            ["model", "protocol"], buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.queue_latency = Histogram(
            "neuroserve_queue_latency_seconds", "Time a request waited in the batch queue.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.compute_latency = Histogram(
            "neuroserve_compute_latency_seconds",
            "Time of one session call (one batch), by the execution provider that ran it.",
            ["model", "provider"], buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.batch_size = Histogram(
            "neuroserve_batch_size",
            "Items per executed batch, by the execution provider that ran it (the sum counts "
            "rows served on each provider).",
            ["model", "provider"], buckets=_BATCH_BUCKETS, registry=reg,
        )  # fmt: skip
        #: The ``provider`` label of each model's loaded version (``bind_provider``).
        self._providers: dict[str, str] = {}
        # Labelled children by label values: ``labels()`` takes a lock and builds a key on every
        # call, several times per request; the children themselves never change.
        self._request_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._queue_children: dict[str, Histogram] = {}
        self._batch_children: dict[str, tuple[Histogram, Histogram]] = {}
        self.models_loaded = Gauge(
            "neuroserve_models_loaded", "Model versions loaded and ready.",
            registry=reg, multiprocess_mode="livesum",
        )  # fmt: skip
        self._capture: CaptureMetrics | None = None

    def observe_request(
        self,
        model: str,
        status: str,
        total_s: float,
        queue_s: float | None = None,
        protocol: str = "grpc",
    ) -> None:
        """Count one finished request and record its latencies."""
        key = (model, status, protocol)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(model, status, protocol),
                self.request_latency.labels(model, protocol),
            )
        count, total = children
        count.inc()
        total.observe(total_s)
        if queue_s is not None:
            queue = self._queue_children.get(model)
            if queue is None:  # created on first use, as before: no empty series
                queue = self._queue_children[model] = self.queue_latency.labels(model)
            queue.observe(queue_s)

    def bind_provider(self, model: str, provider: str) -> None:
        """Label ``model``'s batches from now on with ``provider`` (called as a version loads).

        The labelled children are dropped and rebuilt on the next batch, so the request path
        keeps its one dictionary lookup and never formats a label.
        """
        if self._providers.get(model) != provider:
            self._providers[model] = provider
            self._batch_children.pop(model, None)

    def observe_batch(self, model: str, batch_size: int, compute_s: float) -> None:
        """Record one executed batch."""
        children = self._batch_children.get(model)
        if children is None:
            provider = self._providers.get(model, "unknown")
            children = self._batch_children[model] = (
                self.batch_size.labels(model, provider),
                self.compute_latency.labels(model, provider),
            )
        size, compute = children
        size.observe(batch_size)
        compute.observe(compute_s)

    def capture_metrics(self) -> CaptureMetrics:
        """Register (once) and return inference capture's instruments."""
        if self._capture is None:
            self._capture = CaptureMetrics(self.registry)
        return self._capture

    def set_models_loaded(self, count: int) -> None:
        """Set the number of ready model versions."""
        self.models_loaded.set(count)


class CaptureMetrics:
    """Inference capture's instruments (serving/capture.py), registered only when capture is on
    so a server without it exports no empty series."""

    #: ``reason`` label values of the dropped counter.
    BUFFER_FULL = "buffer_full"
    WRITE_FAILED = "write_failed"

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter(
            "neuroserve_capture_rows", "Captured rows (one per batch item) in complete files.",
            ["model"], registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "neuroserve_capture_dropped",
            "Sampled rows not captured: the writer's buffer was full, or writing failed.",
            ["model", "reason"], registry=registry,
        )  # fmt: skip
        self.buffered = Gauge(
            "neuroserve_capture_buffer_bytes",
            "Bytes of sampled requests waiting for the capture writer.",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self._dropped_children: dict[tuple[str, str], Counter] = {}

    def drop(self, model: str, reason: str, rows: int) -> None:
        """Count ``rows`` of ``model`` that were sampled but will not be written."""
        child = self._dropped_children.get((model, reason))
        if child is None:
            child = self._dropped_children[model, reason] = self.dropped.labels(model, reason)
        child.inc(rows)


class MetricsHTTPServer:
    """The ``/metrics`` endpoint in a daemon thread; ``port`` is the bound port."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    @classmethod
    def aggregating(cls, host: str, port: int) -> MetricsHTTPServer:
        """Serve the sum over all worker processes (parent of ``--workers N``)."""
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return cls(registry, host, port)

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
