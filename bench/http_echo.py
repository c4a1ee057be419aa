"""A bare KServe v2 REST echo on uvicorn: the floor of the HTTP stack neuroserve serves REST on.

It runs no model. ``POST /v2/models/{name}/infer`` reads the request as any v2 server must (the
JSON header, then the tensors: JSON ``data`` or the binary tensor extension's bytes after
``Inference-Header-Content-Length``), checks the one input's name, type, shape and size against
the model's, and answers zeros of the output's shape in the form the request asked for
(``binary_data`` per output, or ``binary_data_output`` for the whole request). Besides that it
answers what perf_analyzer and ``tritonclient.http`` read first: ``GET /v2``,
``/v2/health/live|ready``, and per model (optionally under ``/versions/{v}``) the metadata,
``/ready`` and the Triton ``/config`` with ``max_batch_size``.

What neuroserve's REST endpoint costs on top of this, on the same uvicorn with the same HTTP
parser and event loop, is its own overhead; ``bench/peers.sh`` measures both in one run. It is a
plain ASGI callable, no framework, so no router or validation layer is in the floor either.

    python bench/http_echo.py --port 8121 --models-dir MODELS_DIR --models cnn mnist

``MODELS_DIR/manifest.json`` is the peer harness's (``models.<name>.input|output`` with
``name``, ``datatype`` and ``shape``, batch axis first as -1).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

try:  # the fastest JSON codec the environment has; the echo is a floor, not a reference design
    import orjson

    def _dumps(obj: object) -> bytes:
        return orjson.dumps(obj)

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is in the project's venv today

    def _dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads

HEADER_LENGTH = b"inference-header-content-length"
MAX_BODY_BYTES = 64 * 1024 * 1024  # the same default limit as neuroserve's gRPC messages
VERSION = "1"
_ITEM_BYTES = {"FP32": 4, "FP64": 8, "INT64": 8, "INT32": 4}


class BadRequestError(Exception):
    """A request the echo refuses; ``status`` is the HTTP status, the message goes in ``error``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Model:
    """One model's signature, and its answers cached per batch size (they never change)."""

    name: str
    in_name: str
    in_type: str
    in_shape: list[int]  # without the batch axis
    out_name: str
    out_type: str
    out_shape: list[int]
    max_batch_size: int = 32
    _zeros: dict[int, bytes] = field(default_factory=dict)

    @property
    def in_bytes(self) -> int:
        """Bytes of one sample of the input."""
        return math.prod(self.in_shape) * _ITEM_BYTES[self.in_type]

    def zeros(self, batch: int) -> bytes:
        """The output's bytes for ``batch`` samples, all zero."""
        data = self._zeros.get(batch)
        if data is None:
            data = self._zeros[batch] = bytes(batch * math.prod(self.out_shape) * 4)
        return data

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata body."""
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": self.in_name, "datatype": self.in_type, "shape": [-1, *self.in_shape]}
            ],
            "outputs": [
                {"name": self.out_name, "datatype": self.out_type, "shape": [-1, *self.out_shape]}
            ],
        }

    def config(self) -> dict[str, Any]:
        """Triton's model config body: dims without the batch axis, which max_batch_size implies."""
        return {
            "name": self.name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": self.max_batch_size,
            "input": [
                {"name": self.in_name, "data_type": f"TYPE_{self.in_type}", "dims": self.in_shape}
            ],
            "output": [
                {
                    "name": self.out_name,
                    "data_type": f"TYPE_{self.out_type}",
                    "dims": self.out_shape,
                }
            ],
        }


def load_models(models_dir: Path, names: list[str]) -> dict[str, Model]:
    """The named models' signatures from the harness's ``manifest.json``."""
    manifest = json.loads((models_dir / "manifest.json").read_text())["models"]
    missing = [n for n in names if n not in manifest]
    if missing:
        raise SystemExit(f"models {missing} are not in {models_dir / 'manifest.json'}")
    models = {}
    for name in names:
        spec_in, spec_out = manifest[name]["input"], manifest[name]["output"]
        models[name] = Model(
            name=name,
            in_name=spec_in["name"],
            in_type=spec_in["datatype"],
            in_shape=list(spec_in["shape"][1:]),
            out_name=spec_out["name"],
            out_type=spec_out["datatype"],
            out_shape=list(spec_out["shape"][1:]),
        )
    return models


def _count(data: Any) -> int:
    """Number of scalars in a JSON tensor's ``data``, flat or nested."""
    if isinstance(data, list):
        return sum(_count(x) for x in data)
    return 1


def infer(model: Model, header: dict[str, Any], binary: memoryview) -> tuple[bytes, bytes | None]:
    """Check one request and answer zeros: (JSON header, binary part or None if all JSON)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise BadRequestError(f"expected exactly one input '{model.in_name}', got {inputs!r:.80}")
    tensor = inputs[0]
    if tensor.get("name") != model.in_name or tensor.get("datatype") != model.in_type:
        raise BadRequestError(
            f"expected input '{model.in_name}' of type {model.in_type}, got "
            f"{tensor.get('name')!r} of type {tensor.get('datatype')!r}"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != len(model.in_shape) + 1
        or shape[1:] != model.in_shape
        or not isinstance(shape[0], int)
        or not 1 <= shape[0] <= model.max_batch_size
    ):
        raise BadRequestError(
            f"input '{model.in_name}' has shape {shape}, expected "
            f"[1..{model.max_batch_size}, {', '.join(map(str, model.in_shape))}]"
        )
    batch = shape[0]
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != batch * model.in_bytes or len(binary) != size:
            raise BadRequestError(
                f"input '{model.in_name}' declares {size} binary bytes and {len(binary)} follow "
                f"the header; shape {shape} needs {batch * model.in_bytes}"
            )
    elif _count(tensor.get("data", [])) != batch * math.prod(model.in_shape):
        raise BadRequestError(f"input '{model.in_name}' data does not hold {shape} values")

    as_binary = bool((header.get("parameters") or {}).get("binary_data_output", False))
    for requested in header.get("outputs") or []:
        if requested.get("name") != model.out_name:
            raise BadRequestError(
                f"unknown output {requested.get('name')!r}; expected '{model.out_name}'"
            )
        as_binary = bool((requested.get("parameters") or {}).get("binary_data", as_binary))

    out: dict[str, Any] = {
        "name": model.out_name,
        "datatype": model.out_type,
        "shape": [batch, *model.out_shape],
    }
    zeros = model.zeros(batch)
    if as_binary:
        out["parameters"] = {"binary_data_size": len(zeros)}
    else:
        out["data"] = [0.0] * (len(zeros) // 4)
    body: dict[str, Any] = {"model_name": model.name, "model_version": VERSION, "outputs": [out]}
    if "id" in header:
        body["id"] = header["id"]
    return _dumps(body), zeros if as_binary else None


class EchoApp:
    """The ASGI application: a handful of fixed routes, matched by splitting the path."""

    def __init__(self, models: dict[str, Model]) -> None:
        self.models = models
        self.server_metadata = _dumps(
            {"name": "http-echo", "version": "0", "extensions": ["binary_tensor_data"]}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request; anything else (lifespan is off) is ignored."""
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except BadRequestError as exc:
            await _respond(send, exc.status, _dumps({"error": str(exc)}))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        if parts[:1] != ["v2"]:
            raise BadRequestError(f"no route {method} {scope['path']}", 404)
        if len(parts) == 1 and method == "GET":
            return await _respond(send, 200, self.server_metadata)
        if parts[1] == "health" and len(parts) == 3 and parts[2] in ("live", "ready"):
            return await _respond(send, 200, b"")
        if parts[1] != "models" or len(parts) < 3:
            raise BadRequestError(f"no route {method} {scope['path']}", 404)
        model = self.models.get(parts[2])
        if model is None:
            raise BadRequestError(f"unknown model '{parts[2]}'; serving {sorted(self.models)}", 404)
        rest = parts[3:]
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != VERSION:
                raise BadRequestError(f"model '{model.name}' has only version {VERSION}", 404)
            rest = rest[2:]
        action = rest[0] if len(rest) == 1 else "" if not rest else None
        if method == "GET" and action == "":
            return await _respond(send, 200, _dumps(model.metadata()))
        if method == "GET" and action == "ready":
            return await _respond(send, 200, b"")
        if method == "GET" and action == "config":
            return await _respond(send, 200, _dumps(model.config()))
        if method == "POST" and action == "infer":
            return await self._infer(model, scope, receive, send)
        raise BadRequestError(f"no route {method} {scope['path']}", 404)

    async def _infer(self, model: Model, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        header_length: int | None = None
        for key, value in scope["headers"]:
            if key == HEADER_LENGTH:
                try:
                    header_length = int(value)
                except ValueError:
                    raise BadRequestError(
                        f"Inference-Header-Content-Length {value!r} is not a number"
                    ) from None
        if header_length is None:
            header_length = len(body)
        if not 0 < header_length <= len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length {header_length} does not fit "
                f"a {len(body)}-byte body"
            )
        try:
            header = _loads(body[:header_length])
        except ValueError as exc:
            raise BadRequestError(f"request header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise BadRequestError("request header must be a JSON object")
        head, tail = infer(model, header, memoryview(body)[header_length:])
        if tail is None:
            return await _respond(send, 200, head)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (HEADER_LENGTH, str(len(head)).encode()),
                    (b"content-length", str(len(head) + len(tail)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": head + tail})


async def _read_body(receive: Receive) -> bytes:
    """The whole request body, refused past ``MAX_BODY_BYTES``."""
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise BadRequestError(f"request body over {MAX_BODY_BYTES} bytes", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes) -> None:
    """A complete JSON (or empty) response."""
    headers = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Parse the flags and serve until SIGTERM or SIGINT (uvicorn's own handlers)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models-dir", type=Path, required=True, help="holds manifest.json")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument(
        "--http",
        default="auto",
        help="uvicorn HTTP parser: httptools, h11, auto (httptools if installed)",
    )
    parser.add_argument(
        "--loop", default="asyncio", help="uvicorn event loop; asyncio is the one grpc.aio runs on"
    )
    args = parser.parse_args()
    config = uvicorn.Config(
        EchoApp(load_models(args.models_dir, args.models)),
        host=args.host,
        port=args.port,
        http=args.http,
        loop=args.loop,
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    config.load()
    print(
        f"[http-echo] {args.host}:{args.port} models={args.models} "
        f"http={config.http_protocol_class.__name__} loop={args.loop} "
        f"uvicorn={uvicorn.__version__}",
        flush=True,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
