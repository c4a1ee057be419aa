"""Every error the serving package raises on purpose, rooted at ``ServingError``.

Hierarchy (the gRPC and HTTP status each maps to is decided in one place, ``serving/status.py``)::

    ServingError
    ├── InvalidInputError          a request that can never succeed as sent (shape, datatype, bytes)
    │   ├── InvalidNameError       a model/version name that could escape the repository
    │   └── MalformedRequestError  bytes or JSON that do not parse as the message they claim to be
    │       └── UnsupportedMediaTypeError  an HTTP body in an encoding REST does not read
    ├── ModelNotFoundError         no such model
    ├── RouteNotFoundError         an HTTP path that names no endpoint
    ├── MethodNotAllowedError      an HTTP method the path does not take
    ├── VersionNotFoundError       model exists, version is not loaded
    ├── ModelUnavailableError      model known but not ready (loading, failed, unloaded)
    ├── ServerUnavailableError     shutting down / not ready
    ├── QueueFullError             the model's batch queue is at its bound
    ├── RequestTooLargeError       an HTTP body over ``max_message_bytes``
    │   └── HeadersTooLargeError   an HTTP request line and headers over their bound
    ├── DeadlineExceededError      the caller's deadline passed before the work ran
    ├── UnauthenticatedError       missing or wrong bearer token
    ├── PermissionDeniedError      a valid token of another endpoint group (inference vs admin)
    ├── ModelLoadError             a model file could not be loaded
    └── InferenceFailedError       the engine raised on a valid request

Messages name the model, the tensor, what was expected and what came, so the caller can fix the
request without reading server logs.
"""

from __future__ import annotations

from collections.abc import Iterable


class ServingError(Exception):
    """Base of all deliberate serving errors; ``str(err)`` is the message sent to the caller."""

    #: Messages echo client input (names, datatypes); the gRPC status travels in a trailer that
    #: clients cap at 16 KiB, so an unbounded echo would turn NOT_FOUND into a transport error.
    MAX_MESSAGE_CHARS = 2000

    #: A traced request's trace id (serving/tracing.py sets it); serving/status.py appends it
    #: to the message the caller reads.
    trace_id: str | None = None

    def __str__(self) -> str:
        text = super().__str__()
        if len(text) <= self.MAX_MESSAGE_CHARS:
            return text
        return f"{text[: self.MAX_MESSAGE_CHARS]}... ({len(text)} characters, truncated)"


class InvalidInputError(ServingError):
    """The request is malformed for this model; sending it again will fail again."""

    def __init__(
        self,
        model: str,
        problem: str,
        *,
        tensor: str | None = None,
        expected: object = None,
        got: object = None,
    ) -> None:
        where = f"model '{model}'" + (f" tensor '{tensor}'" if tensor else "")
        detail = f"{where}: {problem}"
        if expected is not None or got is not None:
            detail += f" (expected {expected}, got {got})"
        super().__init__(detail)
        self.model = model
        self.tensor = tensor


class InvalidNameError(InvalidInputError):
    """A model or version name that is not a plain path component."""

    def __init__(self, kind: str, value: str) -> None:
        ServingError.__init__(
            self,
            f"invalid {kind} {value!r}: use letters, digits, '.', '_' or '-', not starting with "
            "'.'; versions are positive integers",
        )
        self.model = value
        self.tensor = None


#: The gRPC method whose unparseable bytes most callers send; the decode guard names any method.
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: What a caller hears when its request bytes do not parse.
UNDECODABLE = "request bytes are not a valid protobuf message for {}"


class MalformedRequestError(InvalidInputError):
    """The request's framing itself is broken: undecodable protobuf, invalid JSON, a short body."""

    def __init__(self, problem: str) -> None:
        ServingError.__init__(self, problem)
        self.model = ""
        self.tensor = None


class UnsupportedMediaTypeError(MalformedRequestError):
    """An HTTP body whose Content-Type or Content-Encoding REST cannot read."""


class ModelNotFoundError(ServingError):
    """No model of that name is known to the repository."""

    def __init__(self, model: str, available: Iterable[str] = ()) -> None:
        names = ", ".join(sorted(available)) or "none"
        super().__init__(f"model '{model}' not found; available models: {names}")
        self.model = model


class VersionNotFoundError(ServingError):
    """The model exists but the requested version is not loaded."""

    def __init__(self, model: str, version: str, loaded: Iterable[str] = ()) -> None:
        names = ", ".join(loaded) or "none"
        super().__init__(
            f"model '{model}' has no loaded version {version!r}; loaded versions: {names}"
        )
        self.model = model


class ModelUnavailableError(ServingError):
    """The model is known but has no ready version right now."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"model '{model}' is not ready: {reason}")
        self.model = model


class RouteNotFoundError(ServingError):
    """No REST endpoint has this path (HTTP only: gRPC answers unknown methods itself)."""


class MethodNotAllowedError(ServingError):
    """The REST endpoint exists but takes another method; ``allowed`` names it."""

    def __init__(self, method: str, path: str, allowed: str) -> None:
        super().__init__(f"{path} takes {allowed}, not {method}")
        self.allowed = allowed


class ServerUnavailableError(ServingError):
    """The server is not taking requests (starting up or shutting down)."""


class QueueFullError(ServingError):
    """The model's request queue is full; the caller should back off and retry."""

    def __init__(self, model: str, limit: int) -> None:
        super().__init__(
            f"model '{model}': request queue is full ({limit} waiting); retry with backoff"
        )
        self.model = model


class RequestTooLargeError(ServingError):
    """An HTTP request body over the size limit (gRPC enforces its own limit in the library)."""


class HeadersTooLargeError(RequestTooLargeError):
    """An HTTP request line and headers over their bound, refused before they are parsed."""


class DeadlineExceededError(ServingError):
    """The caller's deadline expired while the request waited."""

    def __init__(self, model: str, where: str = "in the batch queue") -> None:
        super().__init__(f"model '{model}': deadline exceeded {where}")
        self.model = model


class UnauthenticatedError(ServingError):
    """Missing or wrong bearer token."""


class PermissionDeniedError(ServingError):
    """A valid token, but of a group that may not call this endpoint (serving/auth.py)."""


class ModelLoadError(ServingError):
    """A model version could not be loaded (corrupt file, unsupported operator, ...)."""

    def __init__(self, model: str, version: str, reason: str) -> None:
        super().__init__(f"model '{model}' version {version} failed to load: {reason}")
        self.model = model
        self.version = version
        self.reason = reason


class InferenceFailedError(ServingError):
    """The engine raised while running a request that passed validation."""

    def __init__(self, model: str, version: str, reason: str) -> None:
        super().__init__(f"model '{model}' version {version}: inference failed: {reason}")
        self.model = model
