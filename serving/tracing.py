"""OpenTelemetry traces of the one request path; imported only when ``trace_rate`` > 0.

With tracing off (``trace_rate`` 0, the default) this module is never imported: the data plane
holds no tracer and pays one ``is None`` test per request, the batcher one more, and the gRPC
adapter registers handlers that never read the caller's metadata.

With tracing on, :meth:`RequestTracer.infer` wraps :meth:`DataPlane._infer
<serving.dataplane.DataPlane._infer>`, the request path itself, and each sampled request
becomes one trace::

    ModelInfer <model>      SERVER; parent: the caller's W3C ``traceparent``, if it sent one
    ├── queue wait          the queued route only: handed to the batcher -> its batch began
    ├── batch               the execution that computed it: route, size (rows), requests, number
    │   └── session call    the ONNX Runtime call (awaited, when it runs on the session's thread)
    └── encode              the transport's ``write(Answer)``: protobuf bytes or JSON

**One batch span per request.** A batch is shared by several requests; each request's trace
gets its own copy of the batch span (same times, same ``neuroserve.batch.number``) rather than
one batch span linked to the requests. Sampling is per request, so a batch span of its own would
need a trace of its own (or belong to whichever request came first) and may hold some unsampled
requests; and a trace viewer shows a request's whole timeline without following links. Requests
that shared a batch are one query away: the same model and ``neuroserve.batch.number``.

**Spans after the answer.** The batcher and the transport's writer only note timestamps
(``time.perf_counter_ns``, converted to the epoch with one offset taken at start, so every span of
a request is on one clock); the spans are created once the answer is on its way (``call_soon``),
off the request's latency, like the request statistics.

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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Generic, TypeVar

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serving import status
from serving.batching import QUEUED, Execution, ExecutionObserver
from serving.codecs import Answer
from serving.logs import log_event
from serving.settings import Settings

T = TypeVar("T")

#: The request path the tracer wraps: ``DataPlane._infer(request, write, timeout, protocol,
#: trace)``, ``trace`` being what the batcher tells which execution computed the request.
Body = Callable[
    [Any, Callable[[Answer], T], float | None, str, ExecutionObserver | None], Awaitable[T]
]

#: Tests and benchmarks send spans elsewhere (an ``InMemorySpanExporter``, a no-op) by setting
#: this before the server is built; None: OTLP when ``otlp_endpoint`` is set, else stderr.
exporter_override: SpanExporter | None = None

#: The W3C headers a transport passes on (``DataPlane.infer``'s ``trace``).
TRACE_HEADERS: Final = ("traceparent", "tracestate")

#: Server span attributes per transport (OpenTelemetry semantic conventions: RPC, HTTP).
PROTOCOL_ATTRIBUTES: Final[dict[str, dict[str, str]]] = {
    "grpc": {"rpc.system.name": "grpc"},
    "http": {"network.protocol.name": "http", "http.request.method": "POST"},
}

SERVER_SPAN: Final = "ModelInfer"
INSTRUMENTATION: Final = "neuroserve.serving"


def _exporter(settings: Settings) -> SpanExporter:
    if exporter_override is not None:
        return exporter_override
    if settings.otlp_endpoint is None:
        return ConsoleSpanExporter(out=sys.stderr)
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            f"otlp_endpoint {settings.otlp_endpoint!r} needs the OTLP exporter: "
            "pip install 'neuroserve[tracing]' (or leave otlp_endpoint unset to print spans "
            "to stderr)"
        ) from exc
    # http:// means plaintext (a local collector), https:// TLS, as the exporter reads them.
    return OTLPSpanExporter(endpoint=settings.otlp_endpoint)


class RequestTracer:
    """The tracer of one server process: its provider, sampler, exporter and propagator."""

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
        self.provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
        self.tracer = self.provider.get_tracer(INSTRUMENTATION, version)
        self.propagator = TraceContextTextMapPropagator()
        # perf_counter_ns -> ns since the epoch: the batcher's clock, read once.
        self.epoch_ns = time.time_ns() - time.perf_counter_ns()

    async def infer(
        self,
        body: Body[T],
        request: Any,
        write: Callable[[Answer], T],
        *,
        timeout: float | None,
        protocol: str,
        headers: Mapping[str, str] | None,
    ) -> T:
        """Run ``body`` (the request path) as one traced request, if the sampler takes it."""
        start = time.perf_counter_ns()
        parent = self.propagator.extract(headers) if headers else None
        span = self.tracer.start_span(
            SERVER_SPAN,
            parent,
            trace_api.SpanKind.SERVER,
            PROTOCOL_ATTRIBUTES.get(protocol, {"network.protocol.name": protocol}),
            start_time=start + self.epoch_ns,
        )
        if not span.is_recording():
            return await body(request, write, timeout, protocol, None)
        traced = _TracedRequest(self, span, write, protocol)
        loop = asyncio.get_running_loop()
        try:
            answer = await body(request, traced.write, timeout, protocol, traced.executed)
        except BaseException as exc:
            trace_id = trace_api.format_trace_id(span.get_span_context().trace_id)
            # serving/status.py appends it to the caller's message (and any log it writes).
            with contextlib.suppress(AttributeError):  # an exception class with __slots__
                exc.trace_id = trace_id  # type: ignore[attr-defined]
            loop.call_soon(traced.finish, time.perf_counter_ns(), exc)
            raise
        loop.call_soon(traced.finish, time.perf_counter_ns(), None)
        return answer

    def close(self) -> None:
        """Export what is buffered and stop the exporter (blocks; the SDK also does it at exit)."""
        self.provider.shutdown()


class _TracedRequest(Generic[T]):
    """One sampled request: timestamps noted on the way, spans made in :meth:`finish`."""

    __slots__ = (
        "answer",
        "encode_end_ns",
        "encode_start_ns",
        "execution",
        "owner",
        "protocol",
        "queue_ns",
        "span",
        "write_answer",
    )

    def __init__(
        self,
        owner: RequestTracer,
        span: trace_api.Span,
        write: Callable[[Answer], T],
        protocol: str,
    ) -> None:
        self.owner = owner
        self.span = span
        self.write_answer = write
        self.protocol = protocol
        self.answer: Answer | None = None
        self.execution: Execution | None = None
        self.queue_ns = 0
        self.encode_start_ns = 0
        self.encode_end_ns = 0

    def executed(self, execution: Execution, queue_ns: int) -> None:
        """The batcher's report: which execution computed this request."""
        self.execution = execution
        self.queue_ns = queue_ns

    def write(self, answer: Answer) -> T:
        """The transport's writer, timed: the *encode* span."""
        self.answer = answer
        self.encode_start_ns = time.perf_counter_ns()
        try:
            return self.write_answer(answer)
        finally:
            self.encode_end_ns = time.perf_counter_ns()

    def finish(self, end_ns: int, exc: BaseException | None) -> None:
        """Create the child spans and end the server span (after the answer left)."""
        owner, span, epoch = self.owner, self.span, self.owner.epoch_ns
        tracer = owner.tracer
        context = trace_api.set_span_in_context(span)
        model = ""
        if self.answer is not None:
            model = self.answer.model_name
            span.set_attribute("neuroserve.model.version", self.answer.version)
            if self.answer.request_id:
                span.set_attribute("neuroserve.request.id", self.answer.request_id)
        elif exc is not None:
            model = getattr(exc, "model", "") or ""
        if model:
            span.update_name(f"{SERVER_SPAN} {model}")
            span.set_attribute("neuroserve.model.name", model)
        run = self.execution
        if run is not None:
            if run.route == QUEUED:
                tracer.start_span(
                    "queue wait", context, start_time=run.start_ns - self.queue_ns + epoch
                ).end(run.start_ns + epoch)
            attributes: dict[str, str | int] = {
                "neuroserve.batch.route": run.route,
                "neuroserve.batch.size": run.size,
                "neuroserve.batch.requests": run.requests,
            }
            if run.route == QUEUED:
                attributes["neuroserve.batch.number"] = run.number
            batch = tracer.start_span(
                "batch", context, attributes=attributes, start_time=run.start_ns + epoch
            )
            tracer.start_span(
                "session call",
                trace_api.set_span_in_context(batch),
                start_time=run.compute_start_ns + epoch,
            ).end(run.compute_end_ns + epoch)
            batch.end(run.end_ns + epoch)
        if self.encode_start_ns:
            tracer.start_span("encode", context, start_time=self.encode_start_ns + epoch).end(
                self.encode_end_ns + epoch
            )
        if exc is not None:
            self._failed(exc, model)
        span.end(end_ns + epoch)

    def _failed(self, exc: BaseException, model: str) -> None:
        failure = status.status_of(exc, log=False)
        span = self.span
        span.set_attribute("error.type", failure.label)
        if self.protocol == "http":
            span.set_attribute("http.response.status_code", failure.http)
        else:
            span.set_attribute("rpc.response.status_code", failure.label)
        span.set_status(trace_api.Status(trace_api.StatusCode.ERROR, failure.message))
        log_event(
            "request_failed",
            model=model or "-",
            code=failure.label,
            protocol=self.protocol,
            trace_id=trace_api.format_trace_id(span.get_span_context().trace_id),
        )
