"""OpenTelemetry traces through the request path, on real servers on loopback.

Spans go to the SDK's ``InMemorySpanExporter`` (``serving.tracing.exporter_override``) through
the same ``BatchSpanProcessor`` a deployment uses; each test reads the spans of the trace ids it
sent, so tests sharing a server do not see each other's spans.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from serving import tracing
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.errors import MODEL_INFER
from serving.servicer import InferenceServicer
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import good_request, infer_request
from tests.serving.test_http import call, infer_body

ROOT = Path(__file__).resolve().parents[2]
BATCH = 4


class Traced:
    """A server with tracing at 100 % and the spans it exported."""

    def __init__(self, thread: ServerThread, exporter: InMemorySpanExporter) -> None:
        self.thread = thread
        self.exporter = exporter
        self.channel = grpc.insecure_channel(thread.address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def exported(self) -> tuple[ReadableSpan, ...]:
        """Every span exported so far, once the server finished the requests already answered."""
        # Spans are made in a callback the server loop runs after each answer: one loop turn
        # later they all exist; then the processor hands them to the exporter.
        self.thread.call(asyncio.sleep(0))
        assert self.thread.server is not None
        tracer = self.thread.server.dataplane.tracer
        assert tracer is not None
        assert tracer.provider.force_flush(10_000)
        return self.exporter.get_finished_spans()

    def spans(self, trace_id: int) -> list[ReadableSpan]:
        """The exported spans of one trace."""
        return [
            s for s in self.exported() if s.context is not None and s.context.trace_id == trace_id
        ]

    def server_span(self, request_id: str) -> ReadableSpan:
        """The one server span of the request with this id."""
        found = [
            s
            for s in self.exported()
            if (s.attributes or {}).get("neuroserve.request.id") == request_id
        ]
        assert len(found) == 1, found
        return found[0]


def _traced_server(model_repo: Path, **overrides: object) -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracing, "exporter_override", exporter)
        thread = ServerThread(make_settings(model_repo, trace_rate=1.0, **overrides)).start()
    traced = Traced(thread, exporter)
    yield traced
    traced.channel.close()
    thread.stop()


@pytest.fixture(scope="module")
def traced(model_repo: Path) -> Iterator[Traced]:
    """Lone requests: batching with the test servers' short queue delay."""
    yield from _traced_server(model_repo)


@pytest.fixture(scope="module")
def batching(model_repo: Path) -> Iterator[Traced]:
    """Batches of exactly ``BATCH`` requests: the queue waits far longer than they take to come."""
    yield from _traced_server(
        model_repo,
        model_names=["classifier"],
        max_batch_size=BATCH,
        max_queue_delay_us=2_000_000,
    )


def _traceparent(sampled: bool = True) -> tuple[int, int, str]:
    """A caller's trace id, span id and their W3C ``traceparent``."""
    trace_id, span_id = secrets.randbits(128) or 1, secrets.randbits(64) or 1
    return trace_id, span_id, f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def _by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _within(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert None not in (child.start_time, child.end_time, parent.start_time, parent.end_time)
    return parent.start_time <= child.start_time <= child.end_time <= parent.end_time  # type: ignore[operator]


def test_grpc_request_continues_the_callers_trace(traced: Traced) -> None:
    """The server span is the child of the caller's span (its traceparent), in its trace; queue
    wait, batch (with its size), session call and encode hang below it, inside its time."""
    trace_id, caller_span, header = _traceparent()
    request = infer_request(
        "classifier", {"input": np.ones((2, 4), np.float32)}, request_id="req-7"
    )
    response = traced.stub.ModelInfer(request, timeout=10, metadata=[("traceparent", header)])
    assert response.id == "req-7"

    spans = _by_name(traced.spans(trace_id))
    assert set(spans) == {"ModelInfer classifier", "queue wait", "batch", "session call", "encode"}
    server = spans["ModelInfer classifier"]
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == caller_span
    attributes = dict(server.attributes or {})
    assert attributes.pop("neuroserve.batch.number") >= 1  # type: ignore[operator]
    assert attributes == {
        "rpc.system.name": "grpc",
        "neuroserve.model.name": "classifier",
        "neuroserve.model.version": "1",
        "neuroserve.request.id": "req-7",
        "neuroserve.batch.size": 2,
    }
    assert server.links == ()
    assert server.status.status_code == StatusCode.UNSET
    for name in ("queue wait", "batch", "encode"):
        parent = spans[name].parent
        assert parent is not None and parent.span_id == _span_id(server), name
        assert _within(spans[name], server), name
    session = spans["session call"]
    assert session.parent is not None and session.parent.span_id == _span_id(spans["batch"])
    assert _within(session, spans["batch"])
    batch = dict(spans["batch"].attributes or {})
    assert batch["neuroserve.batch.route"] == "queued"
    assert batch["neuroserve.batch.size"] == 2  # the request's two rows, alone in its batch
    assert batch["neuroserve.batch.requests"] == 1
    # In order: waited, then computed, then encoded.
    assert spans["queue wait"].end_time <= spans["batch"].start_time  # type: ignore[operator]
    assert spans["batch"].end_time <= spans["encode"].start_time  # type: ignore[operator]


def test_a_request_without_traceparent_starts_a_trace(traced: Traced) -> None:
    """No caller context: the server span is a root, sampled at trace_rate 1."""
    request_id = secrets.token_hex(8)
    request = infer_request(
        "classifier", {"input": np.ones((1, 4), np.float32)}, request_id=request_id
    )
    traced.stub.ModelInfer(request, timeout=10)
    server = traced.server_span(request_id)
    assert server.parent is None
    assert server.name == "ModelInfer classifier"
    assert server.context is not None
    assert {s.name for s in traced.spans(server.context.trace_id)} == {
        "ModelInfer classifier",
        "queue wait",
        "batch",
        "session call",
        "encode",
    }


def test_an_unsampled_caller_is_not_traced(traced: Traced) -> None:
    """ParentBased sampling follows the caller's decision: flags 00 means no spans, and a
    failure's message carries no trace id nobody recorded."""
    trace_id, _, header = _traceparent(sampled=False)
    traced.stub.ModelInfer(good_request(), timeout=10, metadata=[("traceparent", header)])
    bad = infer_request("classifier", {"input": np.ones((2, 5), np.float32)})
    with pytest.raises(grpc.RpcError) as info:
        traced.stub.ModelInfer(bad, timeout=10, metadata=[("traceparent", header)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "trace_id=" not in info.value.details()
    assert traced.spans(trace_id) == []


def test_concurrent_requests_share_one_linked_batch_span(batching: Traced) -> None:
    """``BATCH`` requests computed in one session call: one batch span (size ``BATCH``, holding
    ``BATCH`` requests) with its session call, in the first request's trace, linked to the other
    requests' server spans, which link back to it; every server span names the batch."""
    callers = [_traceparent() for _ in range(BATCH)]

    async def send_all() -> None:
        async with grpc.aio.insecure_channel(batching.thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await asyncio.gather(
                *(
                    stub.ModelInfer(
                        infer_request("classifier", {"input": np.full((1, 4), i, np.float32)}),
                        timeout=30,
                        metadata=[("traceparent", header)],
                    )
                    for i, (_, _, header) in enumerate(callers)
                )
            )

    asyncio.run(send_all())
    traces = {trace_id: _by_name(batching.spans(trace_id)) for trace_id, _, _ in callers}
    servers = {t: spans["ModelInfer classifier"] for t, spans in traces.items()}
    for trace_id, caller_span, _ in callers:
        parent = servers[trace_id].parent
        assert parent is not None and parent.span_id == caller_span
        assert {"queue wait", "encode"} <= set(traces[trace_id])
    owners = [t for t, spans in traces.items() if "batch" in spans]
    assert len(owners) == 1, "one batch span for the whole batch"
    owner = traces[owners[0]]
    batch = owner["batch"]
    assert batch.parent is not None and batch.parent.span_id == _span_id(
        owner["ModelInfer classifier"]
    )
    assert owner["session call"].parent.span_id == _span_id(batch)  # type: ignore[union-attr]
    assert dict(batch.attributes or {}) == {
        "neuroserve.batch.route": "queued",
        "neuroserve.batch.size": BATCH,
        "neuroserve.batch.requests": BATCH,
        "neuroserve.batch.number": servers[owners[0]].attributes["neuroserve.batch.number"],  # type: ignore[index]
    }
    members = {t: s for t, s in servers.items() if t != owners[0]}
    assert {link.context.span_id for link in batch.links} == {_span_id(s) for s in members.values()}
    for server in members.values():
        assert [link.context.span_id for link in server.links] == [_span_id(batch)]
    numbers = {s.attributes["neuroserve.batch.number"] for s in servers.values()}  # type: ignore[index]
    assert len(numbers) == 1
    assert {s.attributes["neuroserve.batch.size"] for s in servers.values()} == {BATCH}  # type: ignore[index]


def test_a_failed_request_names_its_trace_in_message_span_and_log(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller's error message ends with the trace id; the server span is an error with the
    status as error.type; the server logs one line for the request carrying the same id."""
    caplog.set_level(logging.INFO, logger="serving")
    trace_id, _, header = _traceparent()
    bad = infer_request("classifier", {"input": np.ones((2, 5), np.float32)})
    with pytest.raises(grpc.RpcError) as info:
        traced.stub.ModelInfer(bad, timeout=10, metadata=[("traceparent", header)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert details.startswith("model 'classifier' tensor 'input'"), details
    assert details.endswith(f" (trace_id={trace_id:032x})"), details

    spans = _by_name(traced.spans(trace_id))
    assert set(spans) == {"ModelInfer classifier"}  # refused while decoding: nothing ran
    server = spans["ModelInfer classifier"]
    assert server.status.status_code == StatusCode.ERROR
    assert server.status.description == details
    assert server.attributes is not None
    assert server.attributes["error.type"] == "INVALID_ARGUMENT"
    assert server.attributes["rpc.response.status_code"] == "INVALID_ARGUMENT"
    lines = [
        r.getMessage() for r in caplog.records if f"trace_id={trace_id:032x}" in r.getMessage()
    ]
    assert len(lines) == 1, lines
    assert lines[0].startswith("event=request_failed model=classifier code=INVALID_ARGUMENT")


def test_a_failed_stream_request_names_its_trace_in_band(traced: Traced) -> None:
    """ModelStreamInfer: each request is traced under the stream's traceparent, and the in-band
    error of a bad one ends with the trace id, while the good one after it is answered."""
    trace_id, caller_span, header = _traceparent()
    bad = infer_request("classifier", {"input": np.ones((2, 5), np.float32)})
    responses = list(
        traced.stub.ModelStreamInfer(
            iter([bad, good_request()]), timeout=10, metadata=[("traceparent", header)]
        )
    )
    assert len(responses) == 2
    assert responses[0].error_message.startswith("[INVALID_ARGUMENT] model 'classifier'")
    assert responses[0].error_message.endswith(f" (trace_id={trace_id:032x})")
    assert responses[1].error_message == "" and responses[1].infer_response.outputs
    servers = [s for s in traced.spans(trace_id) if s.kind == SpanKind.SERVER]
    assert len(servers) == 2
    assert {s.parent.span_id for s in servers if s.parent} == {caller_span}
    assert sorted(s.status.status_code.name for s in servers) == ["ERROR", "UNSET"]


def test_a_garbled_traceparent_starts_a_new_trace(traced: Traced) -> None:
    """A header that is not W3C trace context is ignored (a new root), not an error."""
    request_id = secrets.token_hex(8)
    request = infer_request(
        "classifier", {"input": np.ones((1, 4), np.float32)}, request_id=request_id
    )
    response = traced.stub.ModelInfer(
        request, timeout=10, metadata=[("traceparent", "00-not-a-trace-01")]
    )
    assert response.outputs
    assert traced.server_span(request_id).parent is None


def _http_port(traced: Traced) -> int:
    assert traced.thread.server is not None and traced.thread.server.http_port is not None
    return traced.thread.server.http_port


def test_http_request_continues_the_callers_trace(traced: Traced) -> None:
    """REST: the traceparent header makes the server span the caller's child, with the HTTP
    attributes, and the same children as over gRPC."""
    trace_id, caller_span, header = _traceparent()
    body, headers = infer_body({"input": np.ones((1, 4), np.float32)}, binary=False)
    reply = call(
        _http_port(traced),
        "POST",
        "/v2/models/classifier/infer",
        body,
        {**headers, "traceparent": header, "tracestate": "vendor=1"},
    )
    assert reply.status == 200, reply.body
    spans = _by_name(traced.spans(trace_id))
    assert set(spans) == {"ModelInfer classifier", "queue wait", "batch", "session call", "encode"}
    server = spans["ModelInfer classifier"]
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None and server.parent.span_id == caller_span
    assert server.context is not None and server.context.trace_state.get("vendor") == "1"
    attributes = server.attributes or {}
    assert attributes["network.protocol.name"] == "http"
    assert attributes["http.request.method"] == "POST"
    assert "rpc.system.name" not in attributes


def test_a_failed_request_has_the_same_message_on_both_transports(traced: Traced) -> None:
    """One bad request over gRPC and over REST: the same message, each ending with its own
    trace id, and the HTTP status on the HTTP server span."""
    x = np.ones((2, 5), np.float32)
    grpc_trace, _, grpc_header = _traceparent()
    with pytest.raises(grpc.RpcError) as info:
        traced.stub.ModelInfer(
            infer_request("classifier", {"input": x}, raw=False),
            timeout=10,
            metadata=[("traceparent", grpc_header)],
        )
    http_trace, _, http_header = _traceparent()
    body, headers = infer_body({"input": x}, binary=False)
    reply = call(
        _http_port(traced),
        "POST",
        "/v2/models/classifier/infer",
        body,
        {**headers, "traceparent": http_header},
    )
    assert reply.status == 400
    grpc_message, http_message = info.value.details(), reply.error
    grpc_suffix, http_suffix = f" (trace_id={grpc_trace:032x})", f" (trace_id={http_trace:032x})"
    assert grpc_message.endswith(grpc_suffix) and http_message.endswith(http_suffix)
    assert grpc_message.removesuffix(grpc_suffix) == http_message.removesuffix(http_suffix)
    (server,) = traced.spans(http_trace)
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 400
    assert server.attributes["error.type"] == "INVALID_ARGUMENT"


def test_spans_reach_an_otlp_collector(model_repo: Path) -> None:
    """With ``otlp_endpoint``, the OTLP/gRPC exporter (the ``tracing`` extra) delivers the
    request's spans to a collector: here a receiver on loopback that keeps what it is sent."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc

    received: list[tuple[bytes, str]] = []

    class Collector(ts_grpc.TraceServiceServicer):
        def Export(self, request: ts.ExportTraceServiceRequest, context: object) -> object:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    received.extend((span.trace_id, span.name) for span in scope_spans.spans)
            return ts.ExportTraceServiceResponse()

    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ts_grpc.add_TraceServiceServicer_to_server(Collector(), collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    thread = ServerThread(
        make_settings(
            model_repo,
            model_names=["classifier"],
            trace_rate=1.0,
            otlp_endpoint=f"http://127.0.0.1:{port}",
        )
    ).start()
    try:
        trace_id, _, header = _traceparent()
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(good_request(), timeout=10, metadata=[("traceparent", header)])
        assert thread.server is not None
        thread.call(thread.server.dataplane.close())  # exports what is buffered, then stops
    finally:
        thread.stop()
        collector.stop(0)
    names = sorted(name for tid, name in received if tid == trace_id.to_bytes(16, "big"))
    assert names == ["ModelInfer classifier", "batch", "encode", "queue wait", "session call"]


def test_tracing_off_has_no_tracer_and_reads_no_metadata(model_repo: Path) -> None:
    """trace_rate 0: the data plane holds no tracer and ModelInfer is the handler that never
    looks at the caller's metadata."""
    thread = ServerThread(make_settings(model_repo, model_names=["classifier"])).start()
    try:
        assert thread.server is not None
        assert thread.server.dataplane.tracer is None
        handler = InferenceServicer(thread.server.dataplane).raw_handlers()[MODEL_INFER]
        assert handler.unary_unary.__name__ == "infer_bytes"
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            _, _, header = _traceparent()
            bad = infer_request("classifier", {"input": np.ones((2, 5), np.float32)})
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(bad, timeout=10, metadata=[("traceparent", header)])
            assert "trace_id=" not in info.value.details()
    finally:
        thread.stop()


OFF_SCRIPT = """
import asyncio, sys
from pathlib import Path
import grpc
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.server import create_server
from tests.serving.conftest import make_settings
from tests.serving.helpers import good_request

async def main():
    server = create_server(make_settings(Path(sys.argv[1]), model_names=["classifier"]))
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            await stub.ModelInfer(good_request(), timeout=10)
    await server.stop(0)

asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry", "serving.tracing"))))
"""


def test_tracing_off_imports_no_opentelemetry(model_repo: Path) -> None:
    """A server with tracing off answers requests without importing OpenTelemetry at all."""
    result = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT, str(model_repo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_trace_rate_outside_its_range_is_refused(model_repo: Path) -> None:
    """Settings refuse a rate above 1 or below 0, naming the field."""
    for rate in (-0.1, 1.5):
        with pytest.raises(ValueError, match="trace_rate"):
            make_settings(model_repo, trace_rate=rate)
