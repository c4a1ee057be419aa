"""The server's domain operations, one method per RPC, free of gRPC transport concerns.

The servicer (serving/servicer.py) only unpacks the call and hands it here; every rule (which
version serves, what is ready, how statistics and configs look) lives in this module, the codecs
and the repository. Methods return protobuf messages because the messages *are* the protocol's
data model; nothing here touches a gRPC context.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from typing import Final, TypeVar

from serving import status
from serving._proto import grpc_service_pb2 as pb
from serving._proto import model_config_pb2 as mc
from serving.codecs import (
    DecodedRequest,
    decode_request,
    encode_response,
    encode_response_bytes,
)
from serving.datatypes import CONFIG_TYPE
from serving.errors import ServerUnavailableError, ServingError
from serving.metrics import ServerMetrics
from serving.repository import READY, Repository, ServedVersion
from serving.runtime import TensorSpec
from serving.settings import Settings
from serving.statistics import Duration, ModelStats
from serving.templates import RequestTemplates

PLATFORM: Final = "onnxruntime_onnx"

#: What :meth:`DataPlane._infer` answers with: the response message, or its serialized bytes
#: (``encode_response`` / ``encode_response_bytes``, which share one signature).
R = TypeVar("R", pb.ModelInferResponse, bytes)

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
        self.templates = RequestTemplates()

    # ------------------------------------------------------------------ health
    def live(self) -> bool:
        """The process answers, so it is live."""
        return True

    def ready(self) -> bool:
        """Ready once the first repository scan finished and until shutdown begins."""
        return self.started and not self.shutting_down

    def _check_ready(self) -> None:
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
    async def infer(
        self, request: pb.ModelInferRequest, timeout: float | None = None
    ) -> pb.ModelInferResponse:
        """Validate, queue (maybe batch), run and encode one request."""
        self._check_ready()
        start = time.perf_counter_ns()
        return await self._infer_parsed(request, None, start, timeout, encode_response)

    async def infer_raw(self, raw: bytes, timeout: float | None = None) -> bytes:
        """:meth:`infer` from the request's bytes to the response's bytes (the unary hot path).

        A request in a layout already validated skips parsing and validation (see
        serving/templates.py). Raises protobuf's ``DecodeError`` for bytes that do not parse.
        """
        self._check_ready()
        start = time.perf_counter_ns()
        hit = self.templates.match(raw)
        if hit is not None:
            template, decoded = hit
            served = template.served
            entry = self.repository.models.get(served.name)
            if entry is not None and entry.current is served:
                return await self._infer(
                    served, decoded, "", True, start, timeout, encode_response_bytes
                )
        request = pb.ModelInferRequest.FromString(raw)
        return await self._infer_parsed(request, raw, start, timeout, encode_response_bytes)

    async def _infer_parsed(
        self,
        request: pb.ModelInferRequest,
        raw: bytes | None,
        start: int,
        timeout: float | None,
        encode: Callable[..., R],
    ) -> R:
        """Validate a parsed request, learn its layout when its bytes are given, then infer."""
        served = self.repository.get(request.model_name, request.model_version)
        try:
            decoded = decode_request(request, served.signature)
        except BaseException as exc:
            self._record(served, False, start, None, exc)
            raise
        if raw is not None:
            self.templates.learn(raw, request, decoded, served)
        return await self._infer(
            served, decoded, request.id, decoded.raw or not request.inputs, start, timeout, encode
        )

    async def _infer(  # noqa: PLR0917 - one request's parts, passed straight through
        self,
        served: ServedVersion,
        decoded: DecodedRequest,
        request_id: str,
        raw: bool,
        start: int,
        timeout: float | None,
        encode: Callable[..., R],
    ) -> R:
        sig = served.signature
        loop = asyncio.get_running_loop()
        queue_ns: int | None = None
        served.acquire()
        try:
            # A request that would not wait for anything runs here and now (Batcher.run_now).
            ran = served.batcher.run_now(decoded.feeds, decoded.batch_size)
            if ran is None:
                deadline = None if timeout is None else loop.time() + timeout
                outputs, queue_ns = await served.batcher.submit(
                    decoded.feeds, decoded.batch_size, decoded.signature, deadline
                )
            else:
                outputs, infer_ns = ran
                queue_ns = 0
            response = encode(
                sig, served.version, request_id=request_id, outputs=outputs,
                requested=decoded.requested, raw=raw,
            )  # fmt: skip
        except BaseException as exc:
            self._record(served, False, start, queue_ns, exc)
            raise
        finally:
            served.release()
        # Counted after the answer is on its way: bookkeeping is off the caller's latency.
        end = time.perf_counter_ns()
        if ran is None:
            loop.call_soon(self._record, served, True, start, queue_ns, None, end)
        else:
            loop.call_soon(self._record_now, served, decoded.batch_size, infer_ns, start, end)
        return response

    def _record_now(
        self, served: ServedVersion, batch_size: int, infer_ns: int, start: int, end: int
    ) -> None:
        """Bookkeeping for a request computed by ``Batcher.run_now``: its execution, then it."""
        served.batcher.record_direct(batch_size, infer_ns)
        self._record(served, True, start, 0, None, end)

    def _record(  # noqa: PLR0917 - loop.call_soon passes arguments positionally
        self,
        served: ServedVersion,
        ok: bool,
        start: int,
        queue_ns: int | None,
        exc: BaseException | None,
        end: int | None = None,
    ) -> None:
        total = (end or time.perf_counter_ns()) - start
        stats = self.repository.stats.get((served.name, served.version))
        if stats is not None:
            stats.record_request(ok, total, queue_ns)
        if ok:
            code = "OK"
        elif isinstance(exc, asyncio.CancelledError):
            code = "CANCELLED"
        elif isinstance(exc, ServingError):
            code = status.status_of(exc)[0].name
        else:
            code = "INTERNAL"
        self.metrics.observe_request(
            served.name, code, total / 1e9, None if queue_ns is None else queue_ns / 1e9
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
