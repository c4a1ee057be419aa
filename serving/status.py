"""The one place that maps serving errors to gRPC status codes.

Servicer methods are wrapped with ``grpc_errors``; known ``ServingError`` subclasses become their
status with the error's message, anything else becomes INTERNAL and is logged with its traceback
(the caller gets a generic message, never a stack trace).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc

from serving import errors

logger = logging.getLogger("serving")

STATUS_OF: Final[dict[type[errors.ServingError], grpc.StatusCode]] = {
    errors.InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.VersionNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.ModelUnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.ServerUnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InferenceFailedError: grpc.StatusCode.INTERNAL,
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Return (status code, message) for an exception; unknown ones are INTERNAL and logged."""
    if isinstance(exc, errors.ServingError):
        for cls in type(exc).__mro__:
            if cls in STATUS_OF:
                return STATUS_OF[cls], str(exc)
        return grpc.StatusCode.INTERNAL, str(exc)
    logger.error("event=unhandled_error type=%s", type(exc).__name__, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see server log"


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def grpc_errors(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Decorate a unary servicer method: turn raised errors into an aborted RPC."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except errors.ServingError as exc:
            code, message = status_of(exc)
        except Exception as exc:  # every unknown failure still becomes a clean status
            code, message = status_of(exc)
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def stream_error_message(exc: BaseException) -> str:
    """Render an error for ModelStreamInfer, which reports errors in-band per request."""
    code, message = status_of(exc)
    return f"[{code.name}] {message}"


__all__ = ["STATUS_OF", "AsyncIterator", "grpc_errors", "status_of", "stream_error_message"]
