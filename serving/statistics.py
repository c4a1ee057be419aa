"""Triton-shaped cumulative inference statistics per model version (the ModelStatistics RPC).

Counts and nanosecond totals only; Prometheus (serving/metrics.py) carries the histograms. The
batcher records executions (per batch size), the data plane records request outcomes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    """A cumulative (count, nanoseconds) pair, Triton's ``StatisticDuration``."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Accumulate one (or ``count``) occurrences totalling ``ns``."""
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    """Compute durations of executions with one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Everything ModelStatistics reports for one model version."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_execution(
        self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One session call that served ``requests`` requests totalling ``batch_size`` items."""
        self.execution_count += 1
        self.inference_count += batch_size
        self.compute_input.add(input_ns, requests)
        self.compute_infer.add(infer_ns, requests)
        self.compute_output.add(output_ns, requests)
        stats = self.batches.get(batch_size)
        if stats is None:  # not setdefault: that would build a BatchStats on every call
            stats = self.batches[batch_size] = BatchStats()
        stats.compute_input.add(input_ns)
        stats.compute_infer.add(infer_ns)
        stats.compute_output.add(output_ns)

    def record_request(self, ok: bool, total_ns: int, queue_ns: int | None = None) -> None:
        """One request finished (successfully or not) after ``total_ns``."""
        (self.success if ok else self.fail).add(total_ns)
        if queue_ns is not None:
            self.queue.add(queue_ns)
        if ok:
            self.last_inference_ms = time.time_ns() // 1_000_000
