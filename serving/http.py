"""The REST adapter: KServe v2 (Triton's HTTP/REST API) on uvicorn, in grpc.aio's event loop.

Like the gRPC servicer, this module only reads its framing, calls :class:`DataPlane` and writes
its framing; every rule and every status lives elsewhere (errors become statuses in
``serving/status.py``). An inference request's JSON -- and the bytes the binary tensor extension
appends after it -- becomes the same ``ModelInferRequest`` a gRPC client would send (typed
``contents`` for JSON ``data``, ``raw_input_contents`` for binary tensors), so decoding,
validation, batching and the messages of every error are shared with gRPC.

Why this stack: uvicorn's ``httptools`` protocol parses HTTP/1.1 in C (llhttp, Node's parser),
``uvicorn.Server.serve`` runs as a task on the asyncio loop the process already runs for
grpc.aio (one loop, one process, the same batcher and sessions), and both are widely used and
actively maintained. The application is a plain ASGI callable -- no web framework, router or
validation layer between the parser and the data plane.

Endpoints (Triton's paths and bodies; ``{m}`` may be followed by ``/versions/{v}``)::

    GET  /v2                      server metadata       GET  /v2/health/live | ready
    GET  /v2/models/{m}           model metadata        GET  /v2/models/{m}/ready
    GET  /v2/models/{m}/config    Triton model config   GET  /v2/models/{m}/stats
    GET  /v2/models/stats         every model's stats   POST /v2/models/{m}/infer
    POST /v2/repository/index     POST /v2/repository/models/{m}/load | unload

Errors are ``{"error": "<message>"}`` with the status ``status_of(exc).http``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from functools import partial
from http import HTTPStatus
from typing import Any, Final

import numpy as np
import uvicorn
from google.protobuf.message import Message
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving._proto import grpc_service_pb2 as pb
from serving.auth import (
    AUDITED,
    REST_EQUIVALENT,
    Authorizer,
    Group,
    audit,
    audited,
    authorizer_of,
    ready_versions,
    rest_group,
)
from serving.codecs import CONTENTS_FIELD, Answer
from serving.dataplane import DataPlane
from serving.datatypes import datatype_of
from serving.errors import (
    HeadersTooLargeError,
    InvalidInputError,
    MalformedRequestError,
    MethodNotAllowedError,
    ModelUnavailableError,
    RequestTooLargeError,
    RouteNotFoundError,
    ServerUnavailableError,
    ServingError,
    UnsupportedMediaTypeError,
)
from serving.settings import Settings
from serving.status import status_of
from serving.wire import raw_tensor

Scope = MutableMapping[str, Any]
AsgiMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]

#: The binary tensor extension's header: how many bytes of the body are the JSON header.
HEADER_LENGTH: Final = b"inference-header-content-length"

#: Most bytes a request line plus headers may take. Refused before they are buffered, since the
#: C parser itself sets no bound; far above what any v2 client sends.
MAX_HEAD_BYTES: Final = 64 * 1024

#: Seconds a refused connection keeps reading (and dropping) what the client still sends, so the
#: client reads the refusal instead of a connection reset.
LINGER_S: Final = 1.0

#: Content types whose bytes are the v2 JSON (plus binary tensors) as sent. curl's ``-d`` and
#: libcurl's POST default to form-urlencoded while sending the body verbatim, so it is read too.
READABLE_TYPES: Final = frozenset(
    {b"application/json", b"application/octet-stream", b"application/x-www-form-urlencoded"}
)

#: Content encodings a body may come in (tritonclient's ``request_compression_algorithm``), as
#: zlib window bits: gzip framing, or zlib framing for HTTP's "deflate".
ENCODINGS: Final = {b"gzip": 31, b"deflate": 15, b"identity": 0}

#: REST endpoint -> the audit line's action, for the model-repository endpoints.
AUDITED_REST: Final = {e: AUDITED[m] for e, m in REST_EQUIVALENT.items() if m in AUDITED}

_JSON: Final = (b"content-type", b"application/json")
_OCTETS: Final = (b"content-type", b"application/octet-stream")


# ---------------------------------------------------------------------------------------- JSON
def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton's REST JSON: field names as in the .proto, 64-bit integers
    as JSON numbers (``json_format`` writes them as strings, Triton's REST does not), enums by
    name, scalars and lists always present, unset sub-messages and oneof members left out."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and message.WhichOneof(oneof.name) != field.name:
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _field_json(entry, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_field_json(field, v) for v in value]
        elif field.message_type is not None and not message.HasField(field.name):
            continue
        else:
            out[field.name] = _field_json(field, value)
    return out


def _field_json(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        return message_json(value)
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    return value


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    """``body`` parsed as one JSON object, or MalformedRequestError naming what was wrong."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedRequestError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedRequestError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------ request JSON
def _flatten(name: str, data: object) -> list[Any]:
    """A tensor's ``data``, flat or nested row-major, as one flat list."""
    if not isinstance(data, list):
        raise MalformedRequestError(
            f"input '{name}': 'data' must be a JSON array, got {type(data).__name__}"
        )
    if not data or not isinstance(data[0], list):
        return data  # flat already (a list nested further on is refused by the field's type)
    flat: list[Any] = []
    stack: list[Iterator[Any]] = [iter(data)]
    while stack:  # iterative: nesting as deep as JSON allows must not exhaust the stack
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _set_data(model: str, tensor: pb.ModelInferRequest.InferInputTensor, data: object) -> None:
    """JSON ``data`` into the typed contents gRPC would carry; the decoder checks the rest."""
    values = _flatten(tensor.name, data)
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        return  # no typed field (FP16, unknown names): the decoder names the problem
    if tensor.datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise InvalidInputError(
                model, "BYTES data must be JSON strings (send other bytes as binary data)",
                tensor=tensor.name,
            )  # fmt: skip
        values = [v.encode() for v in values]
    target = getattr(tensor.contents, field)
    try:
        target.extend(values)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            model, f"JSON data are not {tensor.datatype} values ({exc})", tensor=tensor.name
        ) from None
    tensor.contents.SetInParent()  # present even when empty, as a typed gRPC tensor is


def _set_parameter(param: pb.InferParameter, where: str, value: object) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        try:
            param.int64_param = value
        except ValueError:
            raise MalformedRequestError(f"{where}: {value} does not fit in 64 bits") from None
    elif isinstance(value, str):
        param.string_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        raise MalformedRequestError(f"{where}: expected a number, string or boolean")


def _parameters(where: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedRequestError(f"{where}: 'parameters' must be a JSON object")
    if "shared_memory_region" in value:
        raise MalformedRequestError(
            f"{where}: shared memory is not supported; send tensors in the body"
        )
    return value


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def infer_request(
    model: str, version: str, header: dict[str, Any], binary: memoryview
) -> tuple[pb.ModelInferRequest, bool, dict[str, bool] | None, float | None]:
    """The ``ModelInferRequest`` a v2 JSON request (plus its binary tensors) stands for.

    Returns the message, whether outputs default to binary (``binary_data_output``), each
    named output's own ``binary_data`` choice, and the ``timeout`` parameter in seconds.
    Only the framing is checked here; the data plane validates the tensors against the model.
    """
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request_id = header.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise MalformedRequestError("'id' must be a JSON string")
        request.id = request_id
    params = _parameters("request", header.get("parameters"))
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise MalformedRequestError(
            "'inputs' must be a JSON array of tensors ({name, datatype, shape, data})"
        )
    offset = 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise MalformedRequestError(f"input {i} must be a JSON object")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise MalformedRequestError(f"input {i}: 'name' and 'datatype' must be JSON strings")
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise MalformedRequestError(f"input '{name}': 'shape' must be a JSON array of integers")
        try:
            tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        except ValueError:
            raise MalformedRequestError(
                f"input '{name}': a dimension does not fit in 64 bits"
            ) from None
        size = _parameters(f"input '{name}'", item.get("parameters")).get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise MalformedRequestError(
                    f"input '{name}' has neither 'data' nor a 'binary_data_size' parameter"
                )
            _set_data(model, tensor, item["data"])
            continue
        if not _is_count(size):
            raise MalformedRequestError(
                f"input '{name}': 'binary_data_size' must be a byte count, got {size!r}"
            )
        if offset + size > len(binary):
            raise MalformedRequestError(
                f"input '{name}' declares {size} bytes of binary data at byte {offset} after "
                f"the JSON header, but only {len(binary) - offset} bytes follow there"
            )
        request.raw_input_contents.append(binary[offset : offset + size].tobytes())
        offset += size
    if offset != len(binary):
        raise MalformedRequestError(
            f"{len(binary) - offset} bytes follow the JSON header that no input's "
            "'binary_data_size' accounts for"
        )
    binary_all = params.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise MalformedRequestError("'binary_data_output' must be true or false")
    binary_by_name = _outputs(request, header.get("outputs"))
    timeout_us = params.get("timeout")
    if timeout_us is not None and not _is_count(timeout_us):
        raise MalformedRequestError("'timeout' must be a count of microseconds")
    timeout = None if not timeout_us else timeout_us / 1e6
    return request, binary_all, binary_by_name, timeout


def _outputs(request: pb.ModelInferRequest, outputs: object) -> dict[str, bool] | None:
    """Requested outputs into the message (classification only: ``binary_data`` is framing,
    and a plain output keeps the data plane's shortcuts); each one's ``binary_data`` choice."""
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise MalformedRequestError("'outputs' must be a JSON array of {name, parameters}")
    binary: dict[str, bool] = {}
    for i, item in enumerate(outputs):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise MalformedRequestError(f"output {i} must be a JSON object with a string 'name'")
        out = request.outputs.add(name=name)
        params = _parameters(f"output '{name}'", item.get("parameters"))
        k = params.get("classification")
        if k is not None:
            _set_parameter(out.parameters["classification"], f"output '{name}'", k)
        as_binary = params.get("binary_data")
        if as_binary is not None:
            if not isinstance(as_binary, bool):
                raise MalformedRequestError(f"output '{name}': 'binary_data' must be true/false")
            binary[name] = as_binary
    return binary


# -------------------------------------------------------------------------------- answer
def _json_data(model: str, name: str, array: np.ndarray, datatype: str) -> list[Any]:
    flat = array.reshape(-1)
    if datatype != "BYTES":
        return flat.tolist()
    try:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    except UnicodeDecodeError:
        raise InvalidInputError(
            model, "output is not UTF-8 text; ask for it as binary data", tensor=name
        ) from None


def write_answer(
    binary_all: bool, binary_by_name: Mapping[str, bool] | None, answer: Answer
) -> tuple[bytes, list[bytes]]:
    """The response's JSON header and the binary tensors that follow it (none: JSON only)."""
    outputs: list[dict[str, Any]] = []
    tails: list[bytes] = []
    for name, array in answer.tensors():
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": array.shape}
        as_binary = binary_all if binary_by_name is None else binary_by_name.get(name, binary_all)
        if as_binary:
            data = raw_tensor(array)
            entry["parameters"] = {"binary_data_size": len(data)}
            tails.append(data)
        else:
            entry["data"] = _json_data(answer.model_name, name, array, datatype)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": answer.model_name, "model_version": answer.version}
    if answer.request_id:
        body["id"] = answer.request_id
    body["outputs"] = outputs
    return _dumps(body), tails


# -------------------------------------------------------------------------------- routing
def resolve(path: str) -> tuple[str, str, str, str]:
    """``(method, endpoint, model, version)`` for a path, or RouteNotFoundError."""
    parts = path.split("/")
    n = len(parts)
    if n >= 2 and not parts[0] and parts[1] == "v2":
        if n == 2:
            return "GET", "server_metadata", "", ""
        kind = parts[2]
        if kind == "models" and n >= 4:
            if n == 4 and parts[3] == "stats":
                return "GET", "stats", "", ""
            rest, version = parts[4:], ""
            if rest[:1] == ["versions"] and len(rest) >= 2:
                version, rest = rest[1], rest[2:]
            if not rest:
                return "GET", "model_metadata", parts[3], version
            if len(rest) == 1 and rest[0] in _MODEL_ENDPOINTS:
                method, endpoint = _MODEL_ENDPOINTS[rest[0]]
                return method, endpoint, parts[3], version
        elif kind == "health" and n == 4 and parts[3] in ("live", "ready"):
            return "GET", parts[3], "", ""
        elif kind == "repository":
            if n == 4 and parts[3] == "index":
                return "POST", "index", "", ""
            if n == 6 and parts[3] == "models" and parts[5] in ("load", "unload"):
                return "POST", parts[5], parts[4], ""
    raise RouteNotFoundError(
        f"no endpoint at {path}; KServe v2 paths start /v2, /v2/health, /v2/models/{{name}} "
        "or /v2/repository"
    )


_MODEL_ENDPOINTS: Final = {
    "infer": ("POST", "infer"),
    "ready": ("GET", "model_ready"),
    "config": ("GET", "config"),
    "stats": ("GET", "stats"),
}


class RestApp:
    """The ASGI application: KServe v2 REST over a :class:`DataPlane`."""

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.dataplane = dataplane
        self.max_body = settings.max_message_bytes
        authorizer = authorizer_of(settings)
        self.authorizer: Authorizer | None = authorizer if authorizer.enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request (lifespan and websockets are off in the server's config)."""
        if scope["type"] != "http":
            return
        headers: dict[bytes, bytes] = dict(scope["headers"])
        try:
            try:
                method, endpoint, model, version = resolve(scope["path"])
            except RouteNotFoundError:
                if self.authorizer is not None:  # no route is inference: 401 before 404
                    self.authorizer.check(Group.INFERENCE, headers.get(b"authorization", b""))
                raise
            action = AUDITED_REST.get(endpoint)
            if self.authorizer is not None:
                self._authorize(scope, headers, endpoint, action, model)
            if scope["method"] != method:
                raise MethodNotAllowedError(scope["method"], scope["path"], method)
            if endpoint == "infer":
                await self._infer(model, version, headers, receive, send)
            else:
                body = await self._control(
                    scope, headers, receive, endpoint=endpoint, model=model, version=version
                )
                await _respond(send, 200, body, [_JSON] if body else [])
        except Exception as exc:  # every failure becomes its status and {"error": message}
            await _respond_error(send, exc)
        except asyncio.CancelledError as exc:
            # Shutdown's grace period ran out with this request in flight: it gets its status
            # like any other failure (uvicorn would log a traceback and answer a bare 500). The
            # task ends here either way; nothing awaits it.
            await _respond_error(send, exc)

    def _authorize(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        endpoint: str,
        action: str | None,
        model: str,
    ) -> None:
        """Refuse a request its group's credential does not allow (serving/auth.py decides);
        a refused model-repository request gets its audit line."""
        assert self.authorizer is not None
        given = headers.get(b"authorization", b"")
        try:
            self.authorizer.check(rest_group(endpoint), given)
        except ServingError as exc:
            if action is not None:
                audit(
                    credential=self.authorizer.credential(given),
                    peer=_peer(scope),
                    action=action,
                    model=model,
                    outcome=status_of(exc).label,
                )
            raise

    async def _control(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        receive: Receive,
        *,
        endpoint: str,
        model: str,
        version: str,
    ) -> bytes:
        """``_endpoint``, with an audit line when it is a model-repository action."""
        action = AUDITED_REST.get(endpoint)
        if action is None:
            return await self._endpoint(endpoint, model, version, headers, receive)
        return await audited(
            self.authorizer,
            given=headers.get(b"authorization", b""),
            peer=_peer(scope),
            action=action,
            model=model,
            work=lambda: self._endpoint(endpoint, model, version, headers, receive),
            versions=lambda: ready_versions(self.dataplane.repository.index(), model),
        )

    async def _infer(
        self, model: str, version: str, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> None:
        body = await self._read_body(headers, receive)
        length = headers.get(HEADER_LENGTH)
        if length is None:
            header, binary = _json_object(body, "the request body"), memoryview(b"")
        else:
            split = _header_length(length, len(body))
            header = _json_object(body[:split], "the request's JSON header")
            binary = memoryview(body)[split:]
        request, binary_all, binary_by_name, timeout = infer_request(model, version, header, binary)
        trace = None
        parent = headers.get(b"traceparent")
        if parent is not None:
            trace = {"traceparent": parent.decode("latin-1")}
            state = headers.get(b"tracestate")
            if state is not None:
                trace["tracestate"] = state.decode("latin-1")
        head, tails = await self.dataplane.infer(
            request,
            partial(write_answer, binary_all, binary_by_name),
            timeout=timeout,
            protocol="http",
            trace=trace,
        )
        if not tails:
            await _respond(send, 200, head, [_JSON])
            return
        await _respond(
            send,
            200,
            b"".join([head, *tails]),
            [_OCTETS, (HEADER_LENGTH, str(len(head)).encode())],
        )

    async def _endpoint(
        self,
        endpoint: str,
        model: str,
        version: str,
        headers: dict[bytes, bytes],
        receive: Receive,
    ) -> bytes:
        """Every endpoint but infer: the JSON body of its answer (empty for a bare 200)."""
        dp = self.dataplane
        if endpoint == "server_metadata":
            return _dumps(message_json(dp.server_metadata()))
        if endpoint == "live":
            if not dp.live():
                raise ServerUnavailableError("server is not live")
            return b""
        if endpoint == "ready":
            if not dp.ready():
                dp.check_ready()  # raises the reason (starting, or shutting down)
            return b""
        if endpoint == "model_ready":
            if not dp.model_ready(model, version):
                dp.check_ready()
                dp.repository.get(model, version)  # raises why: unknown, or not loaded
                raise ModelUnavailableError(model, "not ready")
            return b""
        if endpoint == "model_metadata":
            return _dumps(message_json(dp.model_metadata(model, version)))
        if endpoint == "config":
            return _dumps(message_json(dp.model_config(model, version).config))
        if endpoint == "stats":
            return _dumps(message_json(dp.statistics(model, version)))
        body = await self._read_body(headers, receive)
        params = _json_object(body, "the request body") if body.strip() else {}
        if endpoint == "index":
            ready = params.get("ready", False)
            if not isinstance(ready, bool):
                raise MalformedRequestError("'ready' must be true or false")
            index = dp.repository_index(ready)
            return _dumps([message_json(m) for m in index.models])
        overrides = set(_parameters(endpoint, params.get("parameters"))) - {"unload_dependents"}
        if overrides:
            raise MalformedRequestError(
                f"{endpoint}: parameters {sorted(overrides)} are not supported; models load from "
                "the repository as they are"
            )
        await (dp.load_model(model) if endpoint == "load" else dp.unload_model(model))
        return b""

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        """The whole request body, decompressed, within ``max_message_bytes``."""
        limit = self.max_body
        declared = headers.get(b"content-length")
        if declared is not None and int(declared) > limit:  # the parser checked it is a number
            raise RequestTooLargeError(
                f"request body of {int(declared)} bytes is over the limit of {limit} bytes"
            )
        kind = headers.get(b"content-type")
        if kind is not None and kind.split(b";", 1)[0].strip().lower() not in READABLE_TYPES:
            raise UnsupportedMediaTypeError(
                f"Content-Type {kind.decode('latin-1')!r} is not read here; send "
                "application/json, or application/octet-stream with the binary tensor extension"
            )
        message = await receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            chunks, total = [body], len(body)
            while message.get("more_body", False):
                message = await receive()
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    raise RequestTooLargeError(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
            body = b"".join(chunks)
        if message["type"] == "http.disconnect":
            raise MalformedRequestError("the client closed the connection before the body ended")
        encoding = headers.get(b"content-encoding")
        if encoding is not None:
            body = _decompress(body, encoding, limit)
        return body


def _peer(scope: Scope) -> str:
    """The client's address as gRPC's ``context.peer()`` writes it (``ipv4:host:port``)."""
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client[0], client[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _header_length(value: bytes, body_length: int) -> int:
    try:
        length = int(value)
    except ValueError:
        raise MalformedRequestError(
            f"Inference-Header-Content-Length {value.decode('latin-1')!r} is not a byte count"
        ) from None
    if not 0 < length <= body_length:
        raise MalformedRequestError(
            f"Inference-Header-Content-Length is {length} but the body holds {body_length} "
            "bytes; it counts the JSON header at the start of the body"
        )
    return length


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    name = encoding.strip().lower()
    wbits = ENCODINGS.get(name)
    if wbits is None:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding.decode('latin-1')!r} is not read here; send gzip, "
            "deflate or identity"
        )
    if not wbits:
        return body
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)  # bounded: a small bomb stays small
    except zlib.error as exc:
        raise MalformedRequestError(f"the body is not valid {name.decode()} data: {exc}") from None
    if len(data) > limit:
        raise RequestTooLargeError(f"request body inflates to over the limit of {limit} bytes")
    return data


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_error(send: Send, exc: BaseException) -> None:
    status = status_of(exc)
    headers = [_JSON]
    if isinstance(exc, MethodNotAllowedError):
        headers.append((b"allow", exc.allowed.encode()))
    if isinstance(exc, RequestTooLargeError):
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await _respond(send, status.http, _dumps({"error": status.message}), headers)


# -------------------------------------------------------------------------------- transport
class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request head, and JSON refusals.

    llhttp buffers a request line and headers of any length before uvicorn sees them, so the
    bytes of each head are counted as they arrive and a head over ``MAX_HEAD_BYTES`` is refused
    without parsing further.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""  # the last bytes of a head split across reads: "\r\n\r\n" may straddle
        self._refused = False

    def data_received(self, data: bytes) -> None:
        """Count head bytes up to the blank line that ends the head, then parse as uvicorn does."""
        if self._refused:
            return  # lingering: drop what the client still sends
        if self._in_head:
            probe = self._tail + data if self._tail else data
            end = probe.find(b"\r\n\r\n")
            if end < 0:
                self._head_bytes += len(data)
                self._tail = probe[-3:]
            else:
                self._head_bytes += end + 4 - len(self._tail)
                self._in_head, self._tail = False, b""
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(
                    HeadersTooLargeError(
                        f"request line and headers are over {MAX_HEAD_BYTES} bytes"
                    )
                )
                return
        super().data_received(data)

    def on_message_complete(self) -> None:
        """The next bytes on this connection start a new head."""
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def send_400_response(self, msg: str) -> None:
        """Bytes that are not HTTP/1.1 get the same JSON error as every other refusal."""
        self._refuse(MalformedRequestError("the request is not valid HTTP/1.1"))

    def _refuse(self, exc: Exception) -> None:
        status = status_of(exc)
        body = _dumps({"error": status.message})
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s"
            % (status.http, HTTPStatus(status.http).phrase.encode(), len(body), body)
        )
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


class _UvicornServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: serving/server.py owns SIGTERM/SIGINT and
    stops gRPC and REST together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the process's signal handlers alone."""
        yield


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening socket, bound now so a taken port fails at construction as gRPC's does;
    with SO_REUSEPORT when several worker processes share the port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        # proto=IPPROTO_TCP, as getaddrinfo gives it, matters: asyncio turns Nagle's algorithm
        # off only on connections whose socket says TCP, and with it on, a response written
        # as headers then body waits for the client's delayed ACK.
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"could not bind HTTP port {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"could not bind HTTP port {host}:{port}: {exc}") from exc
    return sock


class RestServer:
    """The REST endpoint of one server process: bound at construction, served from ``start``."""

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.socket = _bind(settings.host, settings.http_port, settings.workers > 1)
        self.port: int = self.socket.getsockname()[1]
        tls: dict[str, Any] = {}
        if settings.tls_enabled():
            tls = {
                "ssl_certfile": settings.tls_cert_file,
                "ssl_keyfile": settings.tls_key_file,
                "ssl_ca_certs": settings.tls_ca_file,
                "ssl_cert_reqs": ssl.CERT_REQUIRED if settings.tls_ca_file else ssl.CERT_NONE,
            }
        self.config = uvicorn.Config(
            RestApp(dataplane, settings),
            http=_Protocol,
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            **tls,
        )
        try:
            self.config.load()  # builds the TLS context now: a bad file fails here, not later
        except BaseException:
            self.socket.close()
            raise
        self._server = _UvicornServer(self.config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve on the running loop; return once the socket is being served."""
        self._task = asyncio.create_task(
            self._server.serve(sockets=[self.socket]), name="neuroserve-rest"
        )
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raise why it stopped
                raise RuntimeError("the REST server stopped while starting")
            await asyncio.sleep(0.001)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish within ``grace`` seconds, close."""
        if self._task is None:
            self.socket.close()
            return
        # A floor above zero: uvicorn's wait with a zero timeout reports a timeout even when
        # nothing is in flight.
        self.config.timeout_graceful_shutdown = max(grace, 0.01)  # type: ignore[assignment]
        self._server.should_exit = True
        await self._task
