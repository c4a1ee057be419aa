"""The gRPC adapter: read gRPC's framing, call the data plane, write gRPC's framing.

No rules live here; every error becomes its status in ``serving/status.py``. The only logic is the
transport's own: reading the caller's deadline and, with tracing on, its W3C trace context from
the call's metadata, and reporting streaming errors in-band (the stream stays open after a bad
request, as Triton's does).

ModelInfer and ModelStreamInfer are registered bytes-in, bytes-out (see ``raw_handlers``): the
data plane takes the request's bytes (a learned layout skips parsing) and
:class:`~serving.codecs.ResponseWriter` writes the answer's bytes, so no message is built for the
common request on either RPC.
"""

# ruff: noqa: N802  (method names are fixed by the proto service)
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, TypeVar

import grpc

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.auth import Authorizer, audited, metadata_token, ready_versions
from serving.codecs import ResponseWriter
from serving.dataplane import DataPlane
from serving.errors import MODEL_INFER
from serving.status import abort, grpc_errors, stream_error_message
from serving.wire import stream_frame

T = TypeVar("T")

MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
#: The W3C trace context metadata keys passed to the data plane (gRPC lowercases keys).
TRACE_KEYS: Final = frozenset({"traceparent", "tracestate"})


def trace_headers(context: grpc.aio.ServicerContext) -> dict[str, str] | None:
    """The caller's ``traceparent``/``tracestate`` (None without them), read only by the
    traced handlers: reading a call's metadata is a cost of its own on every request."""
    found: dict[str, str] | None = None
    for key, value in context.invocation_metadata() or ():
        if key in TRACE_KEYS:  # text keys: gRPC gives their values as str
            if found is None:
                found = {}
            found[key] = value
    return found


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` backed by a ``DataPlane``."""

    def __init__(self, dataplane: DataPlane, authorizer: Authorizer | None = None) -> None:
        self.dataplane = dataplane
        self.authorizer = authorizer  # names the credential in audit lines (serving/auth.py)
        self.writer = ResponseWriter(fast=dataplane.fast_paths)

    def raw_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The inference RPCs as bytes-in, bytes-out handlers (no protobuf (de)serializers).

        With tracing on, ModelInfer is the variant that reads the caller's trace context; the
        choice is made here, once, so an untraced server never looks at metadata.
        """
        unary = self.infer_bytes if self.dataplane.tracer is None else self.infer_bytes_traced
        return {
            MODEL_INFER: grpc.unary_unary_rpc_method_handler(unary),
            MODEL_STREAM_INFER: grpc.stream_stream_rpc_method_handler(self.stream_infer_bytes),
        }

    @grpc_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @grpc_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @grpc_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version)
        )

    @grpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return self.dataplane.server_metadata()

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return self.dataplane.model_metadata(request.name, request.version)

    @grpc_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        return self.dataplane.model_config(request.name, request.version)

    async def infer_bytes(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """ModelInfer: the request's bytes to the response's bytes, in one coroutine."""
        try:
            return await self.dataplane.infer(raw, self.writer.write, context.time_remaining())
        except Exception as exc:
            await abort(context, exc)
        raise AssertionError("unreachable: context.abort raises")

    async def infer_bytes_traced(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """ModelInfer with tracing on: ``infer_bytes`` plus the caller's W3C trace context."""
        try:
            return await self.dataplane.infer(
                raw,
                self.writer.write,
                context.time_remaining(),
                trace=trace_headers(context),
            )
        except Exception as exc:
            await abort(context, exc)
        raise AssertionError("unreachable: context.abort raises")

    async def stream_infer_bytes(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """ModelStreamInfer: each request's bytes to its ``ModelStreamInferResponse`` bytes.

        Requests on one stream are answered in order; a failed one is answered in-band with
        its status and the stream goes on. With tracing on, each request is traced as a child
        of the trace context the stream was opened with.
        """
        write = self.writer.write
        trace = None if self.dataplane.tracer is None else trace_headers(context)
        async for raw in requests:
            try:
                body = await self.dataplane.infer(raw, write, context.time_remaining(), trace=trace)
            except Exception as exc:
                yield _stream_error(raw, exc).SerializeToString()
            else:
                yield stream_frame(body)

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return self.dataplane.statistics(request.name, request.version)

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        async def work() -> pb.RepositoryIndexResponse:
            return self.dataplane.repository_index(request.ready)

        return await self._audited(context, "index", "", work)

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        name = request.model_name
        await self._audited(context, "load", name, lambda: self.dataplane.load_model(name))
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        name = request.model_name
        await self._audited(context, "unload", name, lambda: self.dataplane.unload_model(name))
        return pb.RepositoryModelUnloadResponse()

    async def _audited(
        self,
        context: grpc.aio.ServicerContext,
        action: str,
        model: str,
        work: Callable[[], Awaitable[T]],
    ) -> T:
        """Run a model-repository action, writing its audit line (serving/auth.py)."""
        return await audited(
            self.authorizer,
            given=metadata_token(context.invocation_metadata()),
            peer=context.peer(),
            action=action,
            model=model,
            work=work,
            versions=lambda: ready_versions(self.dataplane.repository.index(), model),
        )


def _stream_error(raw: bytes, exc: Exception) -> pb.ModelStreamInferResponse:
    """The in-band answer to a failed stream request, naming it as far as its bytes parse."""
    try:
        request = pb.ModelInferRequest.FromString(raw)
    except Exception:  # the error itself says the bytes do not parse
        request = pb.ModelInferRequest()
    return pb.ModelStreamInferResponse(
        error_message=stream_error_message(exc),
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )
