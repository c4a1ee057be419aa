"""OpenTelemetry traces of the one request path; imported only when ``trace_rate`` > 0.

With tracing off (``trace_rate`` 0, the default) this module is never imported: the data plane
holds no tracer and pays one ``is None`` test per request, the batcher one more, and the gRPC
adapter registers handlers that never read the caller's metadata.

With tracing on, :meth:`RequestTracer.start` samples each request; a sampled one runs the same
request path (:meth:`DataPlane._infer <serving.dataplane.DataPlane._infer>`) with a
:class:`_TracedRequest` as its ``trace`` and ``write``, and becomes one trace::

    ModelInfer <model>      SERVER; parent: the caller's W3C ``traceparent``, if it sent one
    ├── queue wait          the queued route only: handed to the batcher -> its batch began
    ├── batch               the session call's batch: route, size (rows), requests, number
    │   └── session call    the ONNX Runtime call (awaited, when it runs on the session's thread)
    └── encode              the transport's ``write(Answer)``: protobuf bytes or JSON

**One batch span per batch, linked.** A queued batch computes several requests at once. Its
``batch`` and ``session call`` spans are made once, in the trace of the first traced request in
it; the batch span links to the server spans of the other traced requests it computed, and each
of those links back to the batch span and carries the batch's size and number itself. That is
OpenTelemetry's pattern for work that fans in (one span, links to its inputs), and it is what
keeps tracing's cost in budget: a copy of both spans in every request's trace would be two more
spans per request, and spans are most of what tracing costs. At low sampling rates a batch
rarely holds two traced requests, so nearly every trace is whole; at 100 % a request's batch is
one link away. Every server span has ``neuroserve.batch.size`` and ``neuroserve.batch.number``.

**Spans after the answer.** The batcher and the transport's writer only note timestamps
(``time.perf_counter_ns``, converted to the epoch with one offset taken at start, so every span of
a request is on one clock); the spans are created once the answer is on its way (one
``call_soon`` for the requests answered in a loop turn), off the request's latency, like the
request statistics.

**Errors.** A sampled request that fails gets its trace id in the message the caller reads,
``... (trace_id=<32 hex>)``, on gRPC and HTTP alike (serving/status.py appends it), and one log
line ``event=request_failed ... trace_id=<32 hex>``: the id a user reports finds both the trace
and the log.

Sampling is ``ParentBased(TraceIdRatioBased(trace_rate))``: a caller's sampling decision is
followed; requests without one are sampled at ``trace_rate``. Spans go to an OTLP/gRPC collector
when ``otlp_endpoint`` is set (the ``tracing`` extra installs the exporter), else to stderr, through
the SDK's ``BatchSpanProcessor`` (a background thread; the provider flushes at exit, and
:meth:`RequestTracer.close` flushes earlier).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    format_trace_id,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serving import status
from serving.batching import QUEUED, Execution
from serving.codecs import Answer
from serving.logs import log_event
from serving.settings import Settings

T = TypeVar("T")

#: Tests and benchmarks send spans elsewhere (an ``InMemorySpanExporter``, a no-op) by setting
#: this before the server is built; None: OTLP when ``otlp_endpoint`` is set, else stderr.
exporter_override: SpanExporter | None = None

#: Server span attributes per transport (OpenTelemetry semantic conventions: RPC, HTTP).
PROTOCOL_ATTRIBUTES: Final[dict[str, dict[str, str]]] = {
    "grpc": {"rpc.system.name": "grpc"},
    "http": {"network.protocol.name": "http", "http.request.method": "POST"},
}

SERVER_SPAN: Final = "ModelInfer"
INSTRUMENTATION: Final = "neuroserve.serving"
SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
UNSET: Final = Status(StatusCode.UNSET)


def _exporter(settings: Settings) -> SpanExporter:
    if exporter_override is not None:
        return exporter_override
    if settings.otlp_endpoint is None:
        return ConsoleSpanExporter(out=sys.stderr)
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        # ValueError: the CLI reports it as a setting this installation cannot honour.
        raise ValueError(
            f"otlp_endpoint {settings.otlp_endpoint!r} needs the OTLP exporter: "
            "pip install 'neuroserve[tracing]' (or leave otlp_endpoint unset to print spans "
            "to stderr)"
        ) from exc
    # http:// means plaintext (a local collector), https:// TLS, as the exporter reads them.
    return OTLPSpanExporter(endpoint=settings.otlp_endpoint)


class RequestTracer:
    """The tracer of one server process: its provider, sampler, exporter and propagator.

    Spans are handed to the ``BatchSpanProcessor`` as finished ``ReadableSpan`` records, built
    once every time is known, instead of live SDK spans: a live span takes a lock, bounds its
    attributes and calls the processors twice, and five of them per request cost several times
    what the request itself costs in Python. The records carry the same fields a live span
    exports, and sampling is the provider's own sampler, asked once per request.
    """

    def __init__(self, settings: Settings, version: str) -> None:
        if not 0 < settings.trace_rate <= 1:
            raise ValueError(f"trace_rate must be in (0, 1] to trace, got {settings.trace_rate}")
        resource = Resource.create(
            {
                "service.name": os.environ.get("OTEL_SERVICE_NAME") or settings.server_name,
                "service.version": version,
            }
        )
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.trace_rate)), resource=resource
        )
        self.processor = BatchSpanProcessor(_exporter(settings))
        self.provider.add_span_processor(self.processor)  # flushed and shut down with it
        self.sampler = self.provider.sampler
        self.ids = self.provider.id_generator
        self.resource = self.provider.resource
        self.scope = InstrumentationScope(INSTRUMENTATION, version)
        self.propagator = TraceContextTextMapPropagator()
        #: The batch the last traced request was computed in (see _TracedRequest.executed).
        self.last_batch: _BatchTrace | None = None
        #: Requests answered in this loop turn whose spans are still to be made.
        self.ending: list[tuple[_TracedRequest[Any], int, BaseException | None]] = []
        # perf_counter_ns -> ns since the epoch: the batcher's clock, read once.
        self.epoch_ns = time.time_ns() - time.perf_counter_ns()

    def start(
        self, write: Callable[[Answer], T], protocol: str, headers: Mapping[str, str] | None
    ) -> _TracedRequest[T] | None:
        """A new traced request, continuing the caller's trace context if it sent one; None if
        the sampler leaves it out."""
        start = time.perf_counter_ns()
        parent_context = self.propagator.extract(headers) if headers else None
        parent: SpanContext | None = None
        if parent_context is not None:
            parent = trace_api.get_current_span(parent_context).get_span_context()
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
        else:
            parent, parent_context = None, None
            trace_id = self.ids.generate_trace_id()
        attributes = PROTOCOL_ATTRIBUTES.get(protocol) or {"network.protocol.name": protocol}
        sampling = self.sampler.should_sample(
            parent_context, trace_id, SERVER_SPAN, SpanKind.SERVER, attributes
        )
        if not sampling.decision.is_sampled():
            return None
        context = SpanContext(
            trace_id, self.ids.generate_span_id(), False, SAMPLED, sampling.trace_state
        )
        traced = _TracedRequest(self, context, parent, protocol, start, write)
        traced.attributes.update(attributes)
        if sampling.attributes:
            traced.attributes.update(sampling.attributes)
        return traced

    def ended(self, request: _TracedRequest[Any], end_ns: int, exc: BaseException | None) -> None:
        """Queue a request's spans to be made once the answer is on its way: off its latency,
        and in one loop callback for all the requests that ended in the same loop turn."""
        if not self.ending:
            asyncio.get_running_loop().call_soon(self._finish_ended)
        self.ending.append((request, end_ns, exc))

    def _finish_ended(self) -> None:
        ending, self.ending = self.ending, []
        for request, end_ns, exc in ending:
            request.finish(end_ns, exc)

    def close(self) -> None:
        """Export what is buffered and stop the exporter (blocks; the SDK also does it at exit)."""
        self.provider.shutdown()


class _BatchTrace:
    """The spans of one batch: made by the first traced request it computed (its parent),
    linked to the other traced requests it computed."""

    __slots__ = ("context", "execution", "members")

    def __init__(self, execution: Execution, context: SpanContext) -> None:
        self.execution = execution
        self.context = context
        self.members: list[SpanContext] = []


class _TracedRequest(Generic[T]):
    """One sampled request: timestamps noted on the way through the request path (it is the
    path's ``trace`` and its ``write``), spans made in :meth:`finish` once it is answered."""

    __slots__ = (
        "answer",
        "attributes",
        "batch",
        "context",
        "encode_end_ns",
        "encode_start_ns",
        "finished",
        "owner",
        "owns_batch",
        "parent",
        "protocol",
        "queue_ns",
        "start_ns",
        "write_answer",
    )

    def __init__(  # noqa: PLR0917 - one call site, RequestTracer.start
        self,
        owner: RequestTracer,
        context: SpanContext,
        parent: SpanContext | None,
        protocol: str,
        start_ns: int,
        write: Callable[[Answer], T],
    ) -> None:
        self.owner = owner
        self.context = context
        self.parent = parent
        self.protocol = protocol
        self.start_ns = start_ns
        self.write_answer = write
        self.attributes: dict[str, Any] = {}
        self.answer: Answer | None = None
        self.batch: _BatchTrace | None = None
        self.owns_batch = False
        self.finished = False
        self.queue_ns = 0
        self.encode_start_ns = 0
        self.encode_end_ns = 0

    def executed(self, execution: Execution, queue_ns: int) -> None:
        """The batcher's report: which execution computed this request.

        The batcher reports a batch's requests one after another without yielding, so a report
        of the execution the last one named joins its batch; any other starts a new one.
        """
        self.queue_ns = queue_ns
        last = self.owner.last_batch
        if last is not None and last.execution is execution:
            last.members.append(self.context)
            self.batch = last
            return
        self.batch = self.owner.last_batch = _BatchTrace(execution, self._child_context())
        self.owns_batch = True

    def write(self, answer: Answer) -> T:
        """The transport's writer, timed (the *encode* span); the answer ends the request."""
        self.answer = answer
        self.encode_start_ns = time.perf_counter_ns()
        written = self.write_answer(answer)  # on failure, the request path calls failed()
        self.encode_end_ns = end = time.perf_counter_ns()
        self._end(end, None)
        return written

    def failed(self, exc: BaseException) -> None:
        """The request failed: its trace id goes into the error, which serving/status.py
        appends to the caller's message (and any log line it writes)."""
        end = time.perf_counter_ns()
        if self.encode_start_ns and not self.encode_end_ns:
            self.encode_end_ns = end  # the writer raised
        with contextlib.suppress(AttributeError):  # an exception class with __slots__
            exc.trace_id = format_trace_id(self.context.trace_id)  # type: ignore[attr-defined]
        self._end(end, exc)

    def _end(self, end_ns: int, exc: BaseException | None) -> None:
        if not self.finished:
            self.finished = True
            self.owner.ended(self, end_ns, exc)

    def _child_context(self) -> SpanContext:
        trace = self.context
        return SpanContext(
            trace.trace_id, self.owner.ids.generate_span_id(), False, SAMPLED, trace.trace_state
        )

    def _emit(
        self,
        name: str,
        parent: SpanContext | None,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, Any] | None = None,
        *,
        context: SpanContext | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        status: Status = UNSET,
        links: Sequence[Link] = (),
    ) -> None:
        """Hand one finished span (perf_counter times) to the exporter."""
        owner = self.owner
        owner.processor.on_end(
            ReadableSpan(  # positionally: keywords cost more than the rest of the call
                name,
                context or self._child_context(),
                parent,
                owner.resource,
                attributes,
                (),
                links,
                kind,
                None,
                status,
                start_ns + owner.epoch_ns,
                end_ns + owner.epoch_ns,
                owner.scope,
            )
        )

    def finish(self, end_ns: int, exc: BaseException | None) -> None:
        """Emit this request's spans, and its batch's if it made them (after the answer left)."""
        server, attributes, model = self.context, self.attributes, ""
        if self.answer is not None:
            model = self.answer.model_name
            attributes["neuroserve.model.version"] = self.answer.version
            if self.answer.request_id:
                attributes["neuroserve.request.id"] = self.answer.request_id
        elif exc is not None:
            model = getattr(exc, "model", "") or ""
        if model:
            attributes["neuroserve.model.name"] = model
        links: list[Link] = []
        batch = self.batch
        if batch is not None:
            run = batch.execution
            attributes["neuroserve.batch.size"] = run.size
            if run.route == QUEUED:
                attributes["neuroserve.batch.number"] = run.number
                self._emit("queue wait", server, run.start_ns - self.queue_ns, run.start_ns)
            if self.owns_batch:
                self._emit_batch(batch)
            else:
                links.append(Link(batch.context))
        if self.encode_start_ns:
            self._emit("encode", server, self.encode_start_ns, self.encode_end_ns)
        status = UNSET
        if exc is not None:
            status = self._failed(exc, model)
        self._emit(
            f"{SERVER_SPAN} {model}" if model else SERVER_SPAN,
            self.parent,
            self.start_ns,
            end_ns,
            attributes,
            context=server,
            kind=SpanKind.SERVER,
            status=status,
            links=links,
        )

    def _emit_batch(self, batch: _BatchTrace) -> None:
        """The batch span and its session call, under this request's server span. Every other
        traced request of the batch has reported by now: the batcher reports them all before
        any of them resumes."""
        run = batch.execution
        if self.owner.last_batch is batch:
            self.owner.last_batch = None  # complete: nothing may join it any more
        attributes: dict[str, Any] = {
            "neuroserve.batch.route": run.route,
            "neuroserve.batch.size": run.size,
            "neuroserve.batch.requests": run.requests,
        }
        if run.route == QUEUED:
            attributes["neuroserve.batch.number"] = run.number
        self._emit(
            "batch",
            self.context,
            run.start_ns,
            run.end_ns,
            attributes,
            context=batch.context,
            links=[Link(member) for member in batch.members],
        )
        self._emit("session call", batch.context, run.compute_start_ns, run.compute_end_ns)

    def _failed(self, exc: BaseException, model: str) -> Status:
        """The server span's error status and attributes, and the request's log line."""
        failure = status.status_of(exc, log=False)
        self.attributes["error.type"] = failure.label
        if self.protocol == "http":
            self.attributes["http.response.status_code"] = failure.http
        else:
            self.attributes["rpc.response.status_code"] = failure.label
        log_event(
            "request_failed",
            model=model or "-",
            code=failure.label,
            protocol=self.protocol,
            trace_id=format_trace_id(self.context.trace_id),
        )
        return Status(StatusCode.ERROR, failure.message)
