"""The one place that decides what status every error gets, on every transport.

Known ``ServingError`` subclasses map to a gRPC status code; the HTTP status follows from the
gRPC code by Triton's own table, so the two transports can never disagree. The only exceptions
are errors of the HTTP framing itself (``HTTP_OVERRIDE``: 405, 413, 415, 431), which gRPC never
raises. Anything else is INTERNAL and is logged with its traceback (the caller gets a generic
message, never a stack trace).
The servicer, the gRPC decode guard, authentication and the REST adapter all ask here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc

from serving import errors

logger = logging.getLogger("serving")

#: Error class -> gRPC status. The most specific class in an error's MRO wins.
GRPC_CODE: Final[dict[type[errors.ServingError], grpc.StatusCode]] = {
    errors.InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.VersionNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.ModelUnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.ServerUnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InferenceFailedError: grpc.StatusCode.INTERNAL,
    # Errors only the REST adapter raises (its framing: path, method, size, encoding).
    errors.RouteNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.MethodNotAllowedError: grpc.StatusCode.UNIMPLEMENTED,
    errors.RequestTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

#: HTTP framing errors whose HTTP status is more precise than their gRPC code's (a body over the
#: limit is RESOURCE_EXHAUSTED, as gRPC's own limit answers, but 413, not 429 "slow down").
HTTP_OVERRIDE: Final[dict[type[errors.ServingError], int]] = {
    errors.MethodNotAllowedError: 405,
    errors.RequestTooLargeError: 413,
    errors.HeadersTooLargeError: 431,
    errors.UnsupportedMediaTypeError: 415,
}

#: gRPC status -> HTTP status, as Triton's HTTP front end maps them.
HTTP_STATUS: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
}


@dataclass(frozen=True, slots=True)
class Status:
    """What a caller is told about a failed request, in both transports' terms."""

    code: grpc.StatusCode
    message: str
    http_override: int | None = None

    @property
    def http(self) -> int:
        """The HTTP status: Triton's for this gRPC code (500 for any code it does not map),
        unless the error is one of the few HTTP framing errors with a status of their own."""
        return self.http_override or HTTP_STATUS.get(self.code, 500)

    @property
    def label(self) -> str:
        """The code's name, as metrics and in-band stream errors show it."""
        return self.code.name


def status_of(exc: BaseException, *, log: bool = True) -> Status:
    """The status for an exception; unknown ones are INTERNAL and logged with a traceback
    (``log=False``: bookkeeping after the transport's own call, which logged it once).

    A traced request's error carries its trace id (serving/tracing.py sets ``trace_id``); the
    message then ends with `` (trace_id=<32 hex>)`` and the log line carries it too.
    """
    trace_id = getattr(exc, "trace_id", None)
    traced = "" if trace_id is None else f" (trace_id={trace_id})"
    if isinstance(exc, errors.ServingError):
        mro = type(exc).__mro__
        for cls in mro:
            code = GRPC_CODE.get(cls)
            if code is not None:
                http = next((HTTP_OVERRIDE[c] for c in mro if c in HTTP_OVERRIDE), None)
                return Status(code, str(exc) + traced, http)
        return Status(grpc.StatusCode.INTERNAL, str(exc) + traced)
    if isinstance(exc, asyncio.CancelledError):
        return Status(grpc.StatusCode.CANCELLED, "request cancelled")
    if log:
        logger.error(
            "event=unhandled_error type=%s trace_id=%s",
            type(exc).__name__,
            trace_id or "-",
            exc_info=exc,
        )
    return Status(
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(exc).__name__}); see server log{traced}",
    )


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End a gRPC call with the status ``exc`` maps to (``context.abort`` raises)."""
    status = status_of(exc)
    await context.abort(status.code, status.message)


def grpc_errors(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Decorate a unary servicer method: turn raised errors into an aborted RPC."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except Exception as exc:  # every failure becomes a clean status
            await abort(context, exc)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def stream_error_message(exc: BaseException) -> str:
    """Render an error for ModelStreamInfer, which reports errors in-band per request."""
    status = status_of(exc)
    return f"[{status.label}] {status.message}"
