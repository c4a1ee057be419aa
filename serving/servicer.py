"""The gRPC servicer: proto in -> data plane call -> proto out, nothing else.

No rules live here; errors become statuses in ``serving/status.py``. The only logic is the
transport's own: reading the caller's deadline, and reporting streaming errors in-band (the stream
stays open after a bad request, as Triton's does).
"""

# ruff: noqa: N802  (method names are fixed by the proto service)
from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.dataplane import DataPlane
from serving.status import grpc_errors, status_of, stream_error_message

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: What a caller hears when its request bytes do not parse (shared with server.py's guard).
UNDECODABLE = "request bytes are not a valid protobuf message for {}"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` backed by a ``DataPlane``."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

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

    @grpc_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self.dataplane.infer(request, context.time_remaining())

    async def infer_bytes(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """ModelInfer from the wire's bytes to the wire's bytes, in one coroutine.

        The server routes ModelInfer here instead of through :meth:`ModelInfer`: parsing,
        error mapping and serialising in one frame saves the two wrapper coroutines (decode
        guard, ``grpc_errors``) every request would otherwise pass through, and lets the data
        plane skip parsing for request layouts it has seen. Same statuses, same messages.
        """
        try:
            return await self.dataplane.infer_raw(raw, context.time_remaining())
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE.format(MODEL_INFER))
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            try:
                response = await self.dataplane.infer(request, context.time_remaining())
            except Exception as exc:  # reported in-band; the stream goes on
                yield pb.ModelStreamInferResponse(
                    error_message=stream_error_message(exc),
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name,
                        model_version=request.model_version,
                        id=request.id,
                    ),
                )
            else:
                yield pb.ModelStreamInferResponse(infer_response=response)

    @grpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return self.dataplane.statistics(request.name, request.version)

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return self.dataplane.repository_index(request.ready)

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self.dataplane.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()
