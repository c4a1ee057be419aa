"""The server's domain operations, one method per protocol call, free of any transport.

The gRPC servicer (serving/servicer.py) and the REST adapter (serving/http.py) only read their
framing, call here and write their framing; every rule (which version serves, what is ready, how
statistics and configs look) lives in this module, the codecs and the repository. Methods take
and return protobuf messages because the messages *are* the protocol's data model (KServe v2
defines its JSON by the same fields); nothing here touches a gRPC context or an HTTP request.

:meth:`DataPlane.infer` is the one request path; serving/README.md walks through its routes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from google.protobuf.message import DecodeError

from serving import status
from serving._proto import grpc_service_pb2 as pb
from serving._proto import model_config_pb2 as mc
from serving.batching import ExecutionObserver
from serving.codecs import Answer, DecodedRequest, decode_request
from serving.datatypes import CONFIG_TYPE
from serving.errors import (
    MODEL_INFER,
    UNDECODABLE,
    MalformedRequestError,
    ServerUnavailableError,
    ServingError,
)
from serving.metrics import ServerMetrics
from serving.repository import READY, Repository, ServedVersion
from serving.runtime import TensorSpec
from serving.settings import Settings
from serving.statistics import Duration, ModelStats
from serving.templates import RequestTemplates

if TYPE_CHECKING:
    from serving.capture import Capture
    from serving.tracing import RequestTracer

PLATFORM: Final = "onnxruntime_onnx"


class RequestTrace(ExecutionObserver, Protocol):
    """A traced request as the request path sees it (serving/tracing.py implements it)."""

    def failed(self, exc: BaseException) -> None:
        """Told why the request failed, before the transport maps ``exc`` to a status."""


#: What a transport's answer writer returns (bytes for gRPC, a response for HTTP).
T = TypeVar("T")

#: Protocol extensions this server implements (reported by ServerMetadata).
EXTENSIONS: Final = (
    "classification",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "binary_tensor_data",
    "health",
)


def _server_version() -> str:
    try:
        return importlib_metadata.version("neuroserve")
    except importlib_metadata.PackageNotFoundError:
        return "0.0.0"


def _tensor_metadata(specs: list[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=s.datatype, shape=list(s.shape)
        )
        for s in specs
    ]


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


class DataPlane:
    """Readiness, metadata, inference, statistics and repository control."""

    def __init__(self, settings: Settings, repository: Repository, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.started = False
        self.shutting_down = False
        self.version = _server_version()
        self.fast_paths = settings.fast_paths
        self.templates = RequestTemplates()
        # No tracer, and no OpenTelemetry import, unless tracing is on (settings.trace_rate).
        self.tracer: RequestTracer | None = None
        if settings.trace_rate > 0:
            from serving.tracing import RequestTracer

            self.tracer = RequestTracer(settings, self.version)
        # Likewise no capture, and no pyarrow import, unless capture is on (settings.capture_rate);
        # its writer thread starts with the server (InferenceServer.start).
        self.capture: Capture | None = None
        if settings.capture_on():
            from serving.capture import Capture

            self.capture = Capture(settings, metrics.capture_metrics())

    async def close(self) -> None:
        """Flush the traces still buffered and close the capture files (complete Parquet); the
        server calls it last when it stops."""
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)

    # ------------------------------------------------------------------ health
    def live(self) -> bool:
        """The process answers, so it is live."""
        return True

    def ready(self) -> bool:
        """Ready once the first repository scan finished and until shutdown begins."""
        return self.started and not self.shutting_down

    def check_ready(self) -> None:
        """Raise ``ServerUnavailableError`` saying why the server is not taking requests."""
        if self.shutting_down:
            raise ServerUnavailableError("server is shutting down; retry on another replica")
        if not self.started:
            raise ServerUnavailableError("server is starting; models are still loading")

    def model_ready(self, name: str, version: str) -> bool:
        """True when the model (and version, if given) is loaded and the server is ready."""
        if not self.ready():
            return False
        try:
            self.repository.get(name, version)
        except ServingError:
            return False
        return True

    # ------------------------------------------------------------------ metadata
    def server_metadata(self) -> pb.ServerMetadataResponse:
        """Name, version and implemented extensions."""
        return pb.ServerMetadataResponse(
            name=self.settings.server_name, version=self.version, extensions=list(EXTENSIONS)
        )

    def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        """Versions, platform and tensors (shapes with -1 for dynamic axes)."""
        served = self.repository.get(name, version)
        return pb.ModelMetadataResponse(
            name=name,
            versions=[served.version],
            platform=PLATFORM,
            inputs=_tensor_metadata(served.runtime.inputs),
            outputs=_tensor_metadata(served.runtime.outputs),
        )

    def model_config(self, name: str, version: str) -> pb.ModelConfigResponse:
        """Triton-style config: dims exclude the batch axis when the model batches."""
        served = self.repository.get(name, version)
        sig = served.signature
        skip = 1 if sig.batchable else 0
        config = mc.ModelConfig(
            name=name,
            platform=PLATFORM,
            backend="onnxruntime",
            max_batch_size=sig.max_batch_size,
            input=[
                mc.ModelInput(
                    name=s.name,
                    data_type=CONFIG_TYPE.get(s.datatype, "TYPE_INVALID"),
                    dims=list(s.shape[skip:]),
                )
                for s in served.runtime.inputs
            ],
            output=[
                mc.ModelOutput(
                    name=s.name,
                    data_type=CONFIG_TYPE.get(s.datatype, "TYPE_INVALID"),
                    dims=list(s.shape[skip:]),
                )
                for s in served.runtime.outputs
            ],
            version_policy=mc.ModelVersionPolicy(
                latest=mc.ModelVersionPolicy.Latest(num_versions=1)
            ),
            instance_group=[
                mc.ModelInstanceGroup(
                    name=f"{name}_0",
                    kind=mc.ModelInstanceGroup.KIND_GPU
                    if any(p != "CPUExecutionProvider" for p in served.runtime.providers)
                    else mc.ModelInstanceGroup.KIND_CPU,
                    count=1,
                )
            ],
            default_model_filename="model.onnx",
            parameters={k: mc.ModelParameter(string_value=v) for k, v in sig.metadata.items()},
        )
        if served.batcher.batching:
            config.dynamic_batching.CopyFrom(
                mc.ModelDynamicBatching(
                    preferred_batch_size=list(self.settings.preferred_batch_sizes),
                    max_queue_delay_microseconds=self.settings.max_queue_delay_us,
                    default_queue_policy=mc.ModelQueuePolicy(
                        max_queue_size=self.settings.max_queue_size
                    ),
                )
            )
        return pb.ModelConfigResponse(config=config)

    # ------------------------------------------------------------------ inference
    def infer(
        self,
        request: pb.ModelInferRequest | bytes,
        write: Callable[[Answer], T],
        timeout: float | None = None,
        protocol: str = "grpc",
        trace: Mapping[str, str] | None = None,
    ) -> Awaitable[T]:
        """Decode, execute and answer one request: the one path every transport calls.

        ``request`` is a parsed message, or a serialized ``ModelInferRequest`` (gRPC's own
        bytes, which a learned template may take without parsing). ``write`` turns the answer
        into the transport's framing; it runs here so its cost and failures count as the
        request's. ``protocol`` labels the request's metrics (``grpc`` or ``http``); ``trace``
        holds the caller's W3C trace context headers (``traceparent``, ``tracestate``), if any.
        Await the result; it raises a ``ServingError`` (or ``CancelledError``) the transport
        maps to a status with serving/status.py.

        Not a coroutine itself: it hands back :meth:`_infer`'s coroutine, so tracing costs an
        untraced request one test and no extra frame; a traced request (serving/tracing.py)
        runs the same coroutine with its own writer and observer.
        """
        if self.tracer is None:
            return self._infer(request, write, timeout, protocol, None, trace)
        traced = self.tracer.start(write, protocol, trace)
        if traced is None:  # not sampled
            return self._infer(request, write, timeout, protocol, None, trace)
        return self._infer(request, traced.write, timeout, protocol, traced, trace)

    async def _infer(  # noqa: PLR0917 - called positionally on every request
        self,
        request: pb.ModelInferRequest | bytes,
        write: Callable[[Answer], T],
        timeout: float | None,
        protocol: str,
        trace: RequestTrace | None,
        headers: Mapping[str, str] | None,
    ) -> T:
        """The request path (serving/README.md names its routes). ``trace``, for a traced
        request only, is told which execution computed it (serving/batching.py) and, if it
        fails, why; its ``write`` (the one passed here) marks the answer. ``headers``, the
        caller's trace context, only reach inference capture (its rows' trace id)."""
        try:
            self.check_ready()
            start = time.perf_counter_ns()
            served, decoded, request_id = self._decode(request, start, protocol)
        except BaseException as exc:
            if trace is not None:
                trace.failed(exc)
            raise
        loop = asyncio.get_running_loop()
        queue_ns: int | None = None
        served.acquire()
        try:
            outputs, queue_ns = await served.batcher.infer(
                decoded.feeds,
                decoded.batch_size,
                decoded.signature,
                None if timeout is None else loop.time() + timeout,
                trace,
            )
            answer = write(
                Answer(
                    served.signature,
                    served.version,
                    request_id,
                    outputs,
                    decoded.requested,
                    typed=not decoded.raw,
                )
            )
        except BaseException as exc:
            self._record(served, False, start, queue_ns, exc, protocol)
            if trace is not None:
                trace.failed(exc)
            raise
        finally:
            served.release()
        # Counted after the answer is on its way: bookkeeping is off the caller's latency.
        end = time.perf_counter_ns()
        loop.call_soon(self._record, served, True, start, queue_ns, None, protocol, end)
        if self.capture is not None:  # sampled and handed to its writer thread (serving/capture.py)
            self.capture.offer(
                served, request_id, headers, trace, decoded.feeds, outputs,
                decoded.batch_size, start, end,
            )  # fmt: skip
        return answer

    def _decode(
        self, request: pb.ModelInferRequest | bytes, start: int, protocol: str
    ) -> tuple[ServedVersion, DecodedRequest, str]:
        """The serving version, the validated request and its id.

        Bytes in a layout already validated skip parsing and validation (serving/templates.py,
        a ``fast_paths`` shortcut) as long as the version they were validated against still
        serves; anything else is parsed and checked in full.
        """
        raw: bytes | None = None
        if isinstance(request, bytes):
            raw = request
            if self.fast_paths:
                hit = self.templates.match(raw)
                if hit is not None:
                    served = hit[0].served
                    entry = self.repository.models.get(served.name)
                    if entry is not None and entry.current is served:
                        return served, hit[1], ""
            try:
                request = pb.ModelInferRequest.FromString(raw)
            except DecodeError as exc:
                raise MalformedRequestError(UNDECODABLE.format(MODEL_INFER)) from exc
        served = self.repository.get(request.model_name, request.model_version)
        try:
            decoded = decode_request(request, served.signature, self.fast_paths)
        except BaseException as exc:
            self._record(served, False, start, None, exc, protocol)
            raise
        if raw is not None and self.fast_paths:
            self.templates.learn(raw, request, decoded, served)
        return served, decoded, request.id

    def _record(  # noqa: PLR0917 - loop.call_soon passes arguments positionally
        self,
        served: ServedVersion,
        ok: bool,
        start: int,
        queue_ns: int | None,
        exc: BaseException | None,
        protocol: str,
        end: int | None = None,
    ) -> None:
        total = (end or time.perf_counter_ns()) - start
        stats = self.repository.stats.get((served.name, served.version))
        if stats is not None:
            stats.record_request(ok, total, queue_ns)
        # The transport's own status_of call logs an unknown error; this one must not again.
        code = "OK" if exc is None else status.status_of(exc, log=False).label
        self.metrics.observe_request(
            served.name,
            code,
            total / 1e9,
            None if queue_ns is None else queue_ns / 1e9,
            protocol,
        )

    # ------------------------------------------------------------------ statistics
    def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        """Cumulative Triton-shaped statistics (all models when ``name`` is empty)."""
        if name and name not in self.repository.models:
            self.repository.get(name, version)  # raises the right NOT_FOUND
        selected: list[ModelStats] = [
            s
            for (n, v), s in sorted(self.repository.stats.items())
            if (not name or n == name) and (not version or v == version)
        ]
        if name and version and not selected:
            self.repository.get(name, version)
        return pb.ModelStatisticsResponse(model_stats=[self._model_stats(s) for s in selected])

    @staticmethod
    def _model_stats(s: ModelStats) -> pb.ModelStatistics:
        return pb.ModelStatistics(
            name=s.name,
            version=s.version,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
            inference_stats=pb.InferStatistics(
                success=_duration(s.success),
                fail=_duration(s.fail),
                queue=_duration(s.queue),
                compute_input=_duration(s.compute_input),
                compute_infer=_duration(s.compute_infer),
                compute_output=_duration(s.compute_output),
                cache_hit=pb.StatisticDuration(),
                cache_miss=pb.StatisticDuration(),
            ),
            batch_stats=[
                pb.InferBatchStatistics(
                    batch_size=size,
                    compute_input=_duration(b.compute_input),
                    compute_infer=_duration(b.compute_infer),
                    compute_output=_duration(b.compute_output),
                )
                for size, b in sorted(s.batches.items())
            ],
        )

    # ------------------------------------------------------------------ repository
    def repository_index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        """Every version seen, with state and reason (e.g. why a load failed)."""
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=n, version=v, state=state, reason=reason)
                for n, v, state, reason in self.repository.index()
                if not ready_only or state == READY
            ]
        )

    async def load_model(self, name: str) -> None:
        """Load or reload a model now."""
        await self.repository.load_model(name)

    async def unload_model(self, name: str) -> None:
        """Unload a model (in-flight requests finish first)."""
        await self.repository.unload_model(name)
