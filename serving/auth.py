"""Bearer-token authentication as a gRPC server interceptor.

When a token is configured, every RPC must carry ``authorization: Bearer <token>`` metadata,
except the ones a load balancer or orchestrator probes without credentials: the grpc.health.v1
service and ServerLive. Anything else without the right token is refused with
``UnauthenticatedError`` (its status decided in serving/status.py) before it reaches a servicer.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc

from serving.errors import ServingError, UnauthenticatedError
from serving.status import abort

OPEN_METHODS: Final = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/inference.GRPCInferenceService/ServerLive",
    }
)


def _deny_handler(handler: grpc.RpcMethodHandler, error: ServingError) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind that ends the call with ``error``'s status."""

    async def abort_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, error)

    async def abort_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, error)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort_stream)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_unary)
    return grpc.unary_unary_rpc_method_handler(abort_unary)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse RPCs (other than health and liveness) without the configured bearer token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty auth token would accept anyone; leave auth off instead")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass authorised calls through; answer the rest with UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in OPEN_METHODS:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if token_matches(given_bytes, self._expected):
            return handler
        return _deny_handler(handler, token_error(bool(given)))


def token_error(given: bool) -> UnauthenticatedError:
    """The refusal for a call without the right token (shared by every transport)."""
    problem = "invalid" if given else "missing"
    return UnauthenticatedError(
        f"{problem} bearer token: send header 'authorization: Bearer <token>'"
    )


def token_matches(given: bytes, expected: bytes) -> bool:
    """Constant-time comparison, so response timing reveals nothing about the token."""
    return hmac.compare_digest(given, expected)
