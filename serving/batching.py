"""Dynamic batching, and the one place that decides how a request is executed.

One ``Batcher`` per loaded model version. :meth:`Batcher.infer` is the only entrance, and it picks
one of three routes:

* **now** (a shortcut, on with ``fast_paths``): the session computes on the event loop (tiny
  models, see serving/runtime.py), nothing is queued or running, and the request is alone -- it
  runs on the caller's stack straight away, like an unbatched server, without the queue's loop
  turns. "Alone" means the model is in *solo* mode: a request that arrives while another one is
  queued or running, or ``SOLO_CLOSE_CALLS`` in a row that each arrive within ``SOLO_GAP_NS`` of
  the previous one finishing, switch the queue on; ``SOLO_AFTER`` batches in a row of one request
  switch it off again. Only where no queue delay is configured: a lone request would not wait
  anyway.
* **direct**: batching is off for this model (disabled, not batchable, ``max_batch_size`` 1): the
  request runs alone through ``runtime.predict``.
* **queued**: one consumer task per batcher, one future per request (after MLServer's
  ``batching/adaptive.py``). The consumer takes the oldest request plus whatever has already
  arrived, waits at most ``max_queue_delay_us`` after that request *arrived* for more (0, the
  default as in Triton, never waits: requests arriving while a batch computes form the next
  batch), stops early at ``max_batch_size`` or a preferred size, runs one session call and splits
  the result. Only requests with the same signature (input dtypes and non-batch dims) are merged;
  others wait for the next batch.

Every route records its executions here (statistics and the batch-size metric); the data plane
records the request. Failure is per request: if a merged batch's session call raises, each of its
requests is run again alone, so only the culprit fails. The queue is bounded; a full queue refuses
new requests at once (``QueueFullError`` -> RESOURCE_EXHAUSTED) instead of letting latency grow
without bound. Requests whose deadline passed while queued are failed without being computed.

A traced request (serving/tracing.py) passes ``trace`` and is told the :class:`Execution` that
computed it; the batcher knows nothing of OpenTelemetry, and for untraced requests (``trace`` is
None) it builds nothing and reads no extra clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from serving.errors import DeadlineExceededError, InferenceFailedError, QueueFullError
from serving.merging import merge, split
from serving.runtime import ModelRuntime
from serving.statistics import ModelStats

logger = logging.getLogger("serving")


class BatchObserver(Protocol):
    """Receives one call per executed batch (serving/metrics.py implements it)."""

    def observe_batch(self, model: str, batch_size: int, compute_s: float) -> None:
        """Record one session call."""


@dataclass(frozen=True)
class BatchingConfig:
    """Per-model batching knobs (defaults come from Settings)."""

    enabled: bool = True
    max_batch_size: int = 32
    max_queue_delay_us: int = 500
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    fast_paths: bool = True  # the *now* route (see the module docstring)


#: A request arriving sooner than this after the previous one finished was probably waiting for
#: it: one caller's next request comes at least a network round trip later, while a request that
#: was already waiting is dispatched within a fraction of that. Only an unusually slow host would
#: see every gap under load above it, and then requests run as if unbatched.
SOLO_GAP_NS = 200_000
#: Requests in a row arriving within ``SOLO_GAP_NS`` that end solo mode. One such request may be
#: a quick caller on a fast host (c=1 over loopback); two in a row are a burst. Chosen with
#: bench/peers.sh at c=1 and c=32 on both CNNs (gaps of 50-200 µs, 1-3 in a row compared) and
#: bench/bench_tracing.py: a shorter gap let per-request work after the answer (tracing at
#: 100 %) stretch the gaps under load past it, and the model stopped batching.
SOLO_CLOSE_CALLS = 2
#: Batches in a row of one request after which requests skip the queue again.
SOLO_AFTER = 16


#: Routes, as :class:`Execution` names them.
NOW, DIRECT, QUEUED = "now", "direct", "queued"


@dataclass(frozen=True, slots=True)
class Execution:
    """One session call as the batcher ran it, told to each traced request it computed.

    A queued batch's record is shared by every request merged into it, so their traces show the
    same batch. Times are ``time.perf_counter_ns()``; "compute" is the await of the session call
    (on the *now* route, the session time alone).
    """

    route: str  # NOW, DIRECT or QUEUED
    size: int  # rows in the session call: the batch size
    requests: int  # requests merged into it
    start_ns: int  # the batch began (queued: merging its requests' inputs)
    compute_start_ns: int
    compute_end_ns: int
    end_ns: int  # outputs split, answers about to be handed back
    number: int = 0  # the batcher's queued batches so far: requests sharing a batch share it


class ExecutionObserver(Protocol):
    """A traced request, as ``Batcher.infer``'s ``trace`` (serving/tracing.py implements it)."""

    def executed(self, execution: Execution, queue_ns: int) -> None:
        """Told which execution computed the request, and how long the request waited in the
        queue for it (ns, 0 off the queue)."""


@dataclass
class _Item:
    feeds: Mapping[str, np.ndarray]
    batch_size: int
    signature: tuple[Any, ...]
    deadline: float | None
    future: asyncio.Future[tuple[dict[str, np.ndarray], int]]
    trace: ExecutionObserver | None = None
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


class Batcher:
    """The routes of one model version's requests; ``infer`` is the way in."""

    def __init__(
        self,
        runtime: ModelRuntime,
        stats: ModelStats,
        config: BatchingConfig,
        observer: BatchObserver | None = None,
    ) -> None:
        self.runtime = runtime
        self.stats = stats
        self.config = config
        self.observer = observer
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._direct_inflight = 0
        self._batching = config.enabled and runtime.batchable and config.max_batch_size > 1
        self._solo = True  # lone requests take the *now* route (see the module docstring)
        # Only where a lone request would not wait anyway: no queue delay to honour.
        self._may_run_now = config.fast_paths and (
            not self._batching or config.max_queue_delay_us == 0
        )
        self._solo_done_ns = 0  # when the last solo request finished
        self._singles = 0  # batches in a row that held one request
        self._close_calls = 0  # now-route requests in a row that came right after the last
        self._batches = 0  # queued batches run (numbers them for traces)
        self._task: asyncio.Task[None] | None = None
        if self._batching:
            self._task = asyncio.get_running_loop().create_task(
                self._consume(), name=f"batcher-{runtime.name}-{runtime.version}"
            )

    @property
    def batching(self) -> bool:
        """True when requests are merged (enabled, batchable model, max_batch_size > 1)."""
        return self._batching

    @property
    def queued(self) -> int:
        """Requests waiting (batching) or running (no batching)."""
        return len(self._pending) + self._direct_inflight

    async def infer(
        self,
        feeds: Mapping[str, np.ndarray],
        batch_size: int,
        signature: tuple[Any, ...] = (),
        deadline: float | None = None,
        trace: ExecutionObserver | None = None,
    ) -> tuple[dict[str, np.ndarray], int]:
        """Run one request's feeds by the route the module docstring describes.

        Returns the outputs and the time the request waited in the queue (ns, 0 off the queue);
        ``deadline`` is in event-loop time. ``trace``, if given, is told the
        :class:`Execution` that computed the request and its queue time, before this returns.
        """
        if self.queued >= self.config.max_queue_size:
            raise QueueFullError(self.runtime.name, self.config.max_queue_size)
        if self._may_run_now and self.runtime.computes_inline:
            if self._runs_now():
                return self._run_now(feeds, batch_size, trace), 0
            self._solo = False  # it would have waited for the last one: queue from now on
        if not self._batching:
            return await self._direct(feeds, batch_size, trace), 0
        future: asyncio.Future[tuple[dict[str, np.ndarray], int]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append(_Item(feeds, batch_size, signature, deadline, future, trace))
        self._wakeup.set()
        return await future

    def _runs_now(self) -> bool:
        """Nothing queued or running, and (when batching) the model is in solo mode."""
        if self._pending or self._direct_inflight:
            return False
        if not self._batching:
            return True
        if not self._solo:
            return False
        if time.perf_counter_ns() - self._solo_done_ns > SOLO_GAP_NS:
            self._close_calls = 0
            return True
        # Arrived right after the last one finished: a burst, or just a quick caller. Only
        # several in a row say "burst"; one quick caller on a fast host keeps the now route.
        self._close_calls += 1
        return self._close_calls < SOLO_CLOSE_CALLS

    def _run_now(
        self,
        feeds: Mapping[str, np.ndarray],
        batch_size: int,
        trace: ExecutionObserver | None,
    ) -> dict[str, np.ndarray]:
        """The *now* route: compute on this stack, record the execution after the answer."""
        try:
            outputs, infer_ns = self.runtime.run_inline(feeds)
        except Exception as exc:
            raise self._failure(exc) from exc
        finally:
            if self._batching:
                self._solo_done_ns = time.perf_counter_ns()
        asyncio.get_running_loop().call_soon(self._record_alone, batch_size, infer_ns)
        if trace is not None:
            # Timed backwards from now so an untraced request takes no extra clock reading.
            end = time.perf_counter_ns()
            trace.executed(
                Execution(NOW, batch_size, 1, end - infer_ns, end - infer_ns, end, end), 0
            )
        return outputs

    async def _direct(
        self,
        feeds: Mapping[str, np.ndarray],
        batch_size: int,
        trace: ExecutionObserver | None,
    ) -> dict[str, np.ndarray]:
        """The *direct* route: batching is off, so the request runs alone."""
        self._direct_inflight += 1
        try:
            start = time.perf_counter_ns()
            try:
                outputs = await self.runtime.predict(feeds)
            except Exception as exc:
                raise self._failure(exc) from exc
            end = time.perf_counter_ns()
            # Off the caller's latency: recorded once the answer is on its way.
            asyncio.get_running_loop().call_soon(self._record_alone, batch_size, end - start)
            if trace is not None:
                trace.executed(Execution(DIRECT, batch_size, 1, start, start, end, end), 0)
            return outputs
        finally:
            self._direct_inflight -= 1

    def _record_alone(self, batch_size: int, infer_ns: int) -> None:
        """One execution of one request (the *now* and *direct* routes)."""
        self.stats.record_execution(batch_size, 1, 0, infer_ns, 0)
        if self.observer:
            self.observer.observe_batch(self.runtime.name, batch_size, infer_ns / 1e9)

    def _failure(self, exc: BaseException) -> InferenceFailedError:
        logger.error(
            "event=batch_failed model=%s version=%s",
            self.runtime.name,
            self.runtime.version,
            exc_info=exc,
        )
        return InferenceFailedError(self.runtime.name, self.runtime.version, str(exc))

    def _gather(self) -> tuple[list[_Item], int]:
        """The requests the next batch would take (same signature as the oldest, in order)."""
        first = self._pending[0]
        taken: list[_Item] = []
        size = 0
        for item in self._pending:
            if item.signature != first.signature:
                continue
            if size + item.batch_size > self.config.max_batch_size:
                break
            taken.append(item)
            size += item.batch_size
        return taken, size

    @staticmethod
    def _cut_at_preferred(batch: list[_Item], preferred: set[int]) -> list[_Item]:
        """Shorten the batch to its largest prefix whose size is a preferred batch size."""
        if not preferred:
            return batch
        size, cut = 0, 0
        for i, item in enumerate(batch, 1):
            size += item.batch_size
            if size in preferred:
                cut = i
        return batch[:cut] if cut else batch

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        delay_ns = self.config.max_queue_delay_us * 1000
        preferred = set(self.config.preferred_batch_sizes)
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Loop turns let requests that already arrived join this batch without waiting for
            # a timer (the event loop's timers resolve to ~1 ms, far above compute times). A
            # call reaches infer() a few turns after its bytes arrive. When the session runs
            # on the compute thread, requests keep arriving while it computes; when it runs
            # inline it blocks the loop, so keep turning while each turn still brings requests
            # in (never once the batch is full): one turn alone left batches of ~2 at 32
            # concurrent callers.
            before = len(self._pending)
            await asyncio.sleep(0)
            while (
                self.runtime.computes_inline
                and before < len(self._pending) < self.config.max_batch_size
            ):
                before = len(self._pending)
                await asyncio.sleep(0)
            while True:
                batch, size = self._gather()
                waited = time.perf_counter_ns() - self._pending[0].enqueued_ns
                remaining = (delay_ns - waited) / 1e9
                if (
                    size >= self.config.max_batch_size
                    or size in preferred
                    or remaining <= 0
                    or self._closed
                    or len(batch) < len(self._pending)  # incompatible requests are waiting
                ):
                    break
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
            batch = self._cut_at_preferred(batch, preferred)
            for item in batch:
                self._pending.remove(item)
            now = loop.time()
            live: list[_Item] = []
            for item in batch:
                if item.future.done():  # caller went away (cancelled)
                    continue
                if item.deadline is not None and now >= item.deadline:
                    item.future.set_exception(DeadlineExceededError(self.runtime.name))
                    continue
                live.append(item)
            if live:
                await self._run(live)

    async def _run(self, batch: Sequence[_Item]) -> None:
        start = time.perf_counter_ns()
        sizes = [item.batch_size for item in batch]
        try:
            feeds = merge([item.feeds for item in batch])
            merged = time.perf_counter_ns()
            outputs = await self.runtime.predict(feeds)
            computed = time.perf_counter_ns()
            parts = split(outputs, sizes)
        except Exception as exc:
            if len(batch) > 1:
                # One request's values may be what the session rejects: run each alone, so
                # only the culprit fails, not every request that happened to share its batch.
                for item in batch:
                    await self._run([item])
                return
            error = self._failure(exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        done = time.perf_counter_ns()
        self._batches += 1
        self._singles = self._singles + 1 if len(batch) == 1 else 0
        if self._singles >= SOLO_AFTER:
            self._solo, self._singles, self._solo_done_ns = True, 0, done
            self._close_calls = 0
        total = sum(sizes)
        self.stats.record_execution(
            total, len(batch), merged - start, computed - merged, done - computed
        )
        if self.observer:
            self.observer.observe_batch(self.runtime.name, total, (computed - merged) / 1e9)
        execution: Execution | None = None
        for item, part in zip(batch, parts, strict=True):
            if item.trace is not None:
                if execution is None:
                    execution = Execution(
                        QUEUED, total, len(batch), start, merged, computed, done, self._batches
                    )
                item.trace.executed(execution, start - item.enqueued_ns)
            if not item.future.done():
                item.future.set_result((part, start - item.enqueued_ns))

    async def close(self) -> None:
        """Finish everything queued, then stop the consumer."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        while self._direct_inflight:
            await asyncio.sleep(0.005)
