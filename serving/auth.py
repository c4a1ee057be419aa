"""Who may call what: endpoint groups, their credentials, and the audit line per control action.

Every gRPC method and every REST route belongs to one of Triton's endpoint groups, decided here
once (``GRPC_GROUPS``; REST routes name their gRPC equivalent in ``REST_EQUIVALENT``):

* ``health`` -- grpc.health.v1, ServerLive, ServerReady (REST ``/v2/health/live|ready``): always
  open, since load balancers and orchestrators probe without credentials.
* ``inference`` -- ModelInfer, ModelStreamInfer, ModelMetadata, ModelConfig, ModelReady,
  ServerMetadata (and anything unlisted, such as reflection): the inference token.
* ``model-repository`` -- RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload.
* ``statistics`` -- ModelStatistics (REST ``.../stats``).

The last two are the control plane. They take the admin token when one is set; without one they
follow the inference token exactly as before, and the server says so once at start-up.
Statistics is control, as Triton restricts it as a group of its own: it is an operator's view
(which models are used, how much, how fast), not something an application needs to call a model.

Refusals: no or a wrong token gets UNAUTHENTICATED (401); a valid token of the other group gets
PERMISSION_DENIED (403). The admin token does not call inference unless the operator asks for it
(``admin_can_infer``): the admin token is meant to live in few places (an operator's shell, a
deployment job); if it also ran inference it would end up in application configs, and the
split would be gone. Every token is compared in constant time (both are always compared, so
timing does not say which matched) and never logged.

Each model-repository call -- allowed or refused, over either transport -- writes one
``event=control_action`` line (``audit``): credential name, peer, action, model, outcome.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc

from serving._proto import grpc_service_pb2 as pb
from serving.errors import PermissionDeniedError, ServingError, UnauthenticatedError
from serving.logs import log_event
from serving.repository import READY
from serving.status import abort, status_of

if TYPE_CHECKING:
    from serving.settings import Settings

T = TypeVar("T")

_SERVICE: Final = "/inference.GRPCInferenceService/"


class Group(enum.StrEnum):
    """Triton's endpoint groups (its ``--grpc-restricted-protocol`` names)."""

    HEALTH = "health"
    INFERENCE = "inference"
    MODEL_REPOSITORY = "model-repository"
    STATISTICS = "statistics"


#: The groups the admin token guards (when set).
CONTROL: Final = frozenset({Group.MODEL_REPOSITORY, Group.STATISTICS})

#: gRPC method -> its group: the one table every transport asks. Unlisted methods are inference.
GRPC_GROUPS: Final[dict[str, Group]] = {
    "/grpc.health.v1.Health/Check": Group.HEALTH,
    "/grpc.health.v1.Health/Watch": Group.HEALTH,
    "/grpc.health.v1.Health/List": Group.HEALTH,
    _SERVICE + "ServerLive": Group.HEALTH,
    _SERVICE + "ServerReady": Group.HEALTH,
    _SERVICE + "ServerMetadata": Group.INFERENCE,
    _SERVICE + "ModelReady": Group.INFERENCE,
    _SERVICE + "ModelMetadata": Group.INFERENCE,
    _SERVICE + "ModelConfig": Group.INFERENCE,
    _SERVICE + "ModelInfer": Group.INFERENCE,
    _SERVICE + "ModelStreamInfer": Group.INFERENCE,
    _SERVICE + "ModelStatistics": Group.STATISTICS,
    _SERVICE + "RepositoryIndex": Group.MODEL_REPOSITORY,
    _SERVICE + "RepositoryModelLoad": Group.MODEL_REPOSITORY,
    _SERVICE + "RepositoryModelUnload": Group.MODEL_REPOSITORY,
}

#: REST endpoint (serving/http.py's ``resolve``) -> the gRPC method it stands for.
REST_EQUIVALENT: Final[dict[str, str]] = {
    "live": _SERVICE + "ServerLive",
    "ready": _SERVICE + "ServerReady",
    "server_metadata": _SERVICE + "ServerMetadata",
    "model_ready": _SERVICE + "ModelReady",
    "model_metadata": _SERVICE + "ModelMetadata",
    "config": _SERVICE + "ModelConfig",
    "infer": _SERVICE + "ModelInfer",
    "stats": _SERVICE + "ModelStatistics",
    "index": _SERVICE + "RepositoryIndex",
    "load": _SERVICE + "RepositoryModelLoad",
    "unload": _SERVICE + "RepositoryModelUnload",
}

#: Model-repository method -> the action its audit line names.
AUDITED: Final[dict[str, str]] = {
    _SERVICE + "RepositoryIndex": "index",
    _SERVICE + "RepositoryModelLoad": "load",
    _SERVICE + "RepositoryModelUnload": "unload",
}

#: Model-repository method -> its request type: a refused call's bytes are decoded only for
#: the audit line (the decode guard in serving/server.py leaves handlers bytes-in).
_REQUEST_TYPES: Final[dict[str, Callable[[bytes], Any]]] = {
    _SERVICE + "RepositoryModelLoad": pb.RepositoryModelLoadRequest.FromString,
    _SERVICE + "RepositoryModelUnload": pb.RepositoryModelUnloadRequest.FromString,
}


def group_of(method: str) -> Group:
    """The group of a gRPC method (inference when unlisted: closed by default)."""
    return GRPC_GROUPS.get(method, Group.INFERENCE)


def rest_group(endpoint: str | None) -> Group:
    """The group of a REST endpoint; ``None`` (no such route) is inference, so an unknown path
    tells a caller without a token nothing but 401."""
    method = REST_EQUIVALENT.get(endpoint or "")
    return Group.INFERENCE if method is None else group_of(method)


def _bearer(token: str | None, what: str) -> bytes | None:
    if token is None:
        return None
    if not token:
        raise ValueError(f"an empty {what} would accept anyone; leave it unset instead")
    return f"Bearer {token}".encode()


class Authorizer:
    """The credentials of one server and the rule that checks them, for both transports."""

    def __init__(
        self,
        auth_token: str | None,
        admin_token: str | None = None,
        *,
        admin_can_infer: bool = False,
    ) -> None:
        self._inference = _bearer(auth_token, "auth token")
        self._admin = _bearer(admin_token, "admin token")
        both = self._admin is not None and self._inference is not None
        if both and hmac.compare_digest(self._admin or b"", self._inference or b""):
            raise ValueError(
                "the admin token equals the auth token, so every application could change "
                "what is served; choose a different admin token"
            )
        self.admin_can_infer = admin_can_infer

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (without one, every call is let through)."""
        return self._inference is not None or self._admin is not None

    @property
    def control_follows_inference(self) -> bool:
        """True when the control plane takes the inference token (no admin token set)."""
        return self._admin is None

    def credential(self, given: bytes) -> str:
        """Which configured credential ``given`` is: ``admin``, ``inference`` or ``none``
        (absent or wrong). Both tokens are always compared, in constant time."""
        is_admin = self._admin is not None and hmac.compare_digest(given, self._admin)
        is_inference = self._inference is not None and hmac.compare_digest(given, self._inference)
        return "admin" if is_admin else "inference" if is_inference else "none"

    def check(self, group: Group, given: bytes) -> str:
        """The credential name if ``given`` may call ``group``; else raise the refusal."""
        credential = self.credential(given)
        if group is Group.HEALTH:
            return credential
        if group in CONTROL and self._admin is not None:
            allowed = credential == "admin"
        elif self._inference is None:  # inference open (only an admin token is set)
            return credential
        else:
            allowed = credential == "inference" or (credential == "admin" and self.admin_can_infer)
        if allowed:
            return credential
        if credential != "none":
            raise PermissionDeniedError(
                f"the {credential} token may not call the {group} endpoints; "
                f"send the {'admin' if group in CONTROL else 'inference'} token"
            )
        raise token_error(bool(given))

    def log_start(self) -> None:
        """Say once, at start-up, who may change what is served."""
        if self._inference is not None and self._admin is None:
            log_event(
                "auth_control_plane",
                logging.WARNING,
                admin_token=False,
                detail="model-repository and statistics take the inference token: any client "
                "that may infer may load and unload models; set --admin-token to separate them",
            )
        elif self._admin is not None:
            log_event(
                "auth_control_plane",
                admin_token=True,
                inference_token=self._inference is not None,
                admin_can_infer=self.admin_can_infer,
            )


def audit(
    *, credential: str, peer: str, action: str, model: str, outcome: str, versions: str = "-"
) -> None:
    """One audit line for a model-repository action (never a token: only its name)."""
    log_event(
        "control_action",
        credential=credential,
        peer=peer or "-",
        action=action,
        model=model or "-",
        versions=versions,
        outcome=outcome,
    )


def ready_versions(index: Iterable[tuple[str, str, Any, str]], model: str) -> str:
    """The model's ready versions from a repository index, for the audit line."""
    found = [str(v) for n, v, state, _ in index if n == model and state == READY]
    return ",".join(found) or "-"


def _deny_handler(
    handler: grpc.RpcMethodHandler,
    error: ServingError,
    on_deny: Callable[[Any, grpc.aio.ServicerContext], None] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind that ends the call with ``error``'s status;
    ``on_deny`` sees the (decoded) request first, for the audit line."""

    async def abort_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if on_deny is not None:
            on_deny(request, context)
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


def request_model(request: Any, decode: Callable[[bytes], Any] | None = None) -> str:
    """The model a repository request names (RepositoryIndex names none); a refused request
    arrives as bytes and is decoded here, so bytes that do not parse still get the refusal."""
    if decode is not None and isinstance(request, bytes):
        try:
            request = decode(request)
        except Exception:  # the audit line says "-"; the caller gets the auth refusal
            return ""
    return str(getattr(request, "model_name", "") or "")


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse RPCs their group's credential does not allow (health is always open)."""

    def __init__(self, authorizer: Authorizer | str) -> None:
        self.authorizer = Authorizer(authorizer) if isinstance(authorizer, str) else authorizer
        if not self.authorizer.enabled:
            raise ValueError("no token configured: leave the interceptor out instead")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass authorised calls through; answer the rest with their refusal."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        group = group_of(method)
        if handler is None or group is Group.HEALTH:
            return handler
        given_bytes = metadata_token(handler_call_details.invocation_metadata)
        try:
            self.authorizer.check(group, given_bytes)
        except ServingError as exc:
            action = AUDITED.get(method)
            if action is None:
                return _deny_handler(handler, exc)
            credential = self.authorizer.credential(given_bytes)
            outcome = status_of(exc).label
            decode = handler.request_deserializer or _REQUEST_TYPES.get(method)

            def on_deny(request: Any, context: grpc.aio.ServicerContext) -> None:
                audit(
                    credential=credential,
                    peer=context.peer(),
                    action=action,
                    model=request_model(request, decode),
                    outcome=outcome,
                )

            return _deny_handler(handler, exc, on_deny)
        return handler


def token_error(given: bool) -> UnauthenticatedError:
    """The refusal for a call without a configured token (shared by every transport)."""
    problem = "invalid" if given else "missing"
    return UnauthenticatedError(
        f"{problem} bearer token: send header 'authorization: Bearer <token>'"
    )


def token_matches(given: bytes, expected: bytes) -> bool:
    """Constant-time comparison, so response timing reveals nothing about the token."""
    return hmac.compare_digest(given, expected)


def authorizer_of(settings: Settings) -> Authorizer:
    """The server's Authorizer, from its settings (both transports build the same one)."""
    auth, admin = settings.auth_token, settings.admin_token
    return Authorizer(
        None if auth is None else auth.get_secret_value(),
        None if admin is None else admin.get_secret_value(),
        admin_can_infer=settings.admin_can_infer,
    )


def metadata_token(metadata: Iterable[tuple[str, Any]] | None) -> bytes:
    """The ``authorization`` value of gRPC metadata, as bytes (empty without one)."""
    for key, value in metadata or ():
        if key == "authorization":
            return value.encode() if isinstance(value, str) else bytes(value)
    return b""


async def audited(
    authorizer: Authorizer | None,
    *,
    given: bytes,
    peer: str,
    action: str,
    model: str,
    work: Callable[[], Awaitable[T]],
    versions: Callable[[], str] | None = None,
) -> T:
    """Run a model-repository action and write its audit line, whatever its outcome."""
    credential = "none" if authorizer is None else authorizer.credential(given)
    outcome = "OK"
    try:
        return await work()
    except BaseException as exc:
        outcome = status_of(exc, log=False).label
        raise
    finally:
        audit(
            credential=credential,
            peer=peer,
            action=action,
            model=model,
            outcome=outcome,
            versions=versions() if versions is not None and model else "-",
        )
