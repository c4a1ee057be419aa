"""Small sync and async clients for the server (any KServe v2 / Triton gRPC server works).

``predict(model, array)`` returns the first output; ``top_k(model, array, k)`` returns labelled
predictions using the server's classification extension; text is accepted for next-token models.
A single example (no batch axis) is batched and unbatched for you. gRPC failures surface as
``ClientError`` subclasses named after what went wrong, carrying the server's message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.codecs import CLASSIFICATION, CONTENTS_FIELD, set_typed
from serving.datatypes import NUMPY_OF, datatype_of
from serving.settings import DEFAULT_MAX_MESSAGE_BYTES
from serving.wire import deserialize_bytes_tensor, raw_tensor


def encode_inputs(
    request: pb.ModelInferRequest, inputs: Mapping[str, np.ndarray], raw: bool = True
) -> pb.ModelInferRequest:
    """Add numpy inputs to a request (raw by default; typed with ``raw=False``)."""
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype.kind in {"U", "S"}:
            array = array.astype(object)
        datatype = datatype_of(array)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw or datatype == "FP16":
            request.raw_input_contents.append(raw_tensor(array))
        else:
            set_typed(tensor.contents, datatype, array)
    return request


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` from a response in either encoding."""
    result: dict[str, np.ndarray] = {}
    raw = response.raw_output_contents
    for i, tensor in enumerate(response.outputs):
        shape = list(tensor.shape)
        if i < len(raw):
            if tensor.datatype == "BYTES":
                result[tensor.name] = np.array(
                    deserialize_bytes_tensor(raw[i]), dtype=object
                ).reshape(shape)
            else:
                dtype = NUMPY_OF[tensor.datatype]
                result[tensor.name] = np.frombuffer(raw[i], dtype=dtype).reshape(shape)
        else:
            values = getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype])
            dtype = NUMPY_OF[tensor.datatype]
            result[tensor.name] = np.array(list(values), dtype=dtype).reshape(shape)
    return result


class ClientError(Exception):
    """A failed call; ``code`` is the gRPC status, ``str(err)`` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidRequestError(ClientError):
    """INVALID_ARGUMENT: fix the request (shape, datatype, names) before retrying."""


class NotFoundError(ClientError):
    """NOT_FOUND: no such model or version on the server."""


class UnavailableError(ClientError):
    """UNAVAILABLE: server or model not ready (or unreachable); retry later."""


class OverloadedError(ClientError):
    """RESOURCE_EXHAUSTED: queue full or message too large."""


class DeadlineError(ClientError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout."""


class AuthenticationError(ClientError):
    """UNAUTHENTICATED: missing or wrong token."""


_ERRORS: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
}


def _wrap(exc: grpc.RpcError) -> ClientError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return _ERRORS.get(code, ClientError)(code, details or "")


@dataclass(frozen=True)
class Prediction:
    """One top-k entry: class index, label (when the model has labels) and score."""

    index: int
    label: str | None
    score: float


def parse_classification(value: bytes) -> Prediction:
    """Parse Triton's ``"score:index[:label]"`` string."""
    parts = value.decode().split(":", 2)
    return Prediction(
        index=int(parts[1]), label=parts[2] if len(parts) > 2 else None, score=float(parts[0])
    )


def _read(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass
class _Options:
    url: str
    token: str | None
    timeout: float | None
    credentials: grpc.ChannelCredentials | None
    channel_options: list[tuple[str, Any]]

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []


def _options(
    url: str,
    *,
    token: str | None,
    timeout: float | None,
    root_certificates: bytes | str | Path | None,
    certificate_chain: bytes | str | Path | None,
    private_key: bytes | str | Path | None,
    max_message_bytes: int,
    server_name: str | None,
) -> _Options:
    credentials = None
    if root_certificates is not None or certificate_chain is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(root_certificates),
            private_key=_read(private_key),
            certificate_chain=_read(certificate_chain),
        )
    channel_options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if server_name:
        channel_options.append(("grpc.ssl_target_name_override", server_name))
    return _Options(url, token, timeout, credentials, channel_options)


def _as_batch(array: Any, spec_rank: int) -> tuple[np.ndarray, bool]:
    """Add a batch axis to a single example; return (array, whether one was added)."""
    if isinstance(array, str | bytes):
        return np.array([array], dtype=object), True
    arr = np.asarray(array)
    if arr.dtype.kind in {"U", "S"}:
        arr = arr.astype(object)
    if arr.dtype.kind != "O" and arr.ndim == spec_rank - 1:
        return arr[np.newaxis, ...], True
    return arr, False


def _prepare(meta: pb.ModelMetadataResponse, array: Any) -> tuple[dict[str, np.ndarray], bool, str]:
    if len(meta.inputs) != 1:
        names = [t.name for t in meta.inputs]
        raise ValueError(f"model '{meta.name}' has inputs {names}; pass a dict to infer()")
    spec = meta.inputs[0]
    arr, single = _as_batch(array, len(spec.shape))
    if arr.dtype.kind != "O" and spec.datatype in NUMPY_OF and spec.datatype != "BYTES":
        arr = arr.astype(NUMPY_OF[spec.datatype], copy=False)
    return {spec.name: arr}, single, meta.outputs[0].name


def _build(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None,
    version: str,
    request_id: str,
    classification: int,
    raw: bool,
) -> pb.ModelInferRequest:
    request = encode_inputs(
        pb.ModelInferRequest(model_name=model, model_version=version, id=request_id), inputs, raw
    )
    for name in outputs or ():
        out = request.outputs.add(name=name)
        if classification:
            out.parameters[CLASSIFICATION].int64_param = classification
    return request


def _top_k(result: np.ndarray, single: bool) -> list[list[Prediction]]:
    rows = [
        [parse_classification(bytes(v)) for v in row] for row in result.reshape(len(result), -1)
    ]
    return rows[:1] if single else rows


class InferenceClient:
    """Blocking client over one gRPC channel (use as a context manager or call ``close``)."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        *,
        token: str | None = None,
        timeout: float | None = 30.0,
        root_certificates: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        server_name: str | None = None,
    ) -> None:
        self._opts = _options(
            url,
            token=token,
            timeout=timeout,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            max_message_bytes=max_message_bytes,
            server_name=server_name,
        )
        if self._opts.credentials is not None:
            self._channel = grpc.secure_channel(
                url, self._opts.credentials, options=self._opts.channel_options
            )
        else:
            self._channel = grpc.insecure_channel(url, options=self._opts.channel_options)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._meta: dict[str, pb.ModelMetadataResponse] = {}

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(
                request, timeout=timeout or self._opts.timeout, metadata=self._opts.metadata
            )
        except grpc.RpcError as exc:
            raise _wrap(exc) from None

    def live(self) -> bool:
        """ServerLive."""
        return bool(self._call("ServerLive", pb.ServerLiveRequest()).live)

    def ready(self) -> bool:
        """ServerReady."""
        return bool(self._call("ServerReady", pb.ServerReadyRequest()).ready)

    def model_ready(self, model: str, version: str = "") -> bool:
        """ModelReady."""
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool(self._call("ModelReady", request).ready)

    def server_metadata(self) -> pb.ServerMetadataResponse:
        """ServerMetadata."""
        return self._call("ServerMetadata", pb.ServerMetadataRequest())

    def model_metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        """ModelMetadata (cached per model for ``predict``/``top_k``)."""
        meta = self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version))
        self._meta[model] = meta
        return meta

    def model_config(self, model: str, version: str = "") -> pb.ModelConfigResponse:
        """ModelConfig."""
        return self._call("ModelConfig", pb.ModelConfigRequest(name=model, version=version))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        version: str = "",
        request_id: str = "",
        classification: int = 0,
        raw: bool = True,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """ModelInfer with named inputs; returns ``{output name: array}``."""
        request = _build(
            model,
            inputs,
            outputs=outputs,
            version=version,
            request_id=request_id,
            classification=classification,
            raw=raw,
        )
        return decode_outputs(self._call("ModelInfer", request, timeout))

    def predict(self, model: str, array: Any, *, timeout: float | None = None) -> np.ndarray:
        """The model's first output for ``array`` (a batch, or one example)."""
        meta = self._meta.get(model) or self.model_metadata(model)
        feeds, single, output = _prepare(meta, array)
        result = self.infer(model, feeds, outputs=[output], timeout=timeout)[output]
        return result[0] if single else result

    def top_k(
        self, model: str, array: Any, k: int = 5, *, timeout: float | None = None
    ) -> list[list[Prediction]]:
        """Top-k predictions per example (one list for a single example)."""
        meta = self._meta.get(model) or self.model_metadata(model)
        feeds, single, output = _prepare(meta, array)
        result = self.infer(model, feeds, outputs=[output], classification=k, timeout=timeout)
        return _top_k(result[output], single)


class AsyncInferenceClient:
    """The asyncio twin of ``InferenceClient`` (grpc.aio channel)."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        *,
        token: str | None = None,
        timeout: float | None = 30.0,
        root_certificates: bytes | str | Path | None = None,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        server_name: str | None = None,
    ) -> None:
        self._opts = _options(
            url,
            token=token,
            timeout=timeout,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            max_message_bytes=max_message_bytes,
            server_name=server_name,
        )
        if self._opts.credentials is not None:
            self._channel = grpc.aio.secure_channel(
                url, self._opts.credentials, options=self._opts.channel_options
            )
        else:
            self._channel = grpc.aio.insecure_channel(url, options=self._opts.channel_options)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._meta: dict[str, pb.ModelMetadataResponse] = {}

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return await getattr(self.stub, method)(
                request, timeout=timeout or self._opts.timeout, metadata=self._opts.metadata
            )
        except grpc.RpcError as exc:
            raise _wrap(exc) from None

    async def live(self) -> bool:
        """ServerLive."""
        return bool((await self._call("ServerLive", pb.ServerLiveRequest())).live)

    async def ready(self) -> bool:
        """ServerReady."""
        return bool((await self._call("ServerReady", pb.ServerReadyRequest())).ready)

    async def model_ready(self, model: str, version: str = "") -> bool:
        """ModelReady."""
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool((await self._call("ModelReady", request)).ready)

    async def server_metadata(self) -> pb.ServerMetadataResponse:
        """ServerMetadata."""
        return await self._call("ServerMetadata", pb.ServerMetadataRequest())

    async def model_metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        """ModelMetadata (cached per model for ``predict``/``top_k``)."""
        request = pb.ModelMetadataRequest(name=model, version=version)
        meta = await self._call("ModelMetadata", request)
        self._meta[model] = meta
        return meta

    async def model_config(self, model: str, version: str = "") -> pb.ModelConfigResponse:
        """ModelConfig."""
        return await self._call("ModelConfig", pb.ModelConfigRequest(name=model, version=version))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        version: str = "",
        request_id: str = "",
        classification: int = 0,
        raw: bool = True,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """ModelInfer with named inputs; returns ``{output name: array}``."""
        request = _build(
            model,
            inputs,
            outputs=outputs,
            version=version,
            request_id=request_id,
            classification=classification,
            raw=raw,
        )
        return decode_outputs(await self._call("ModelInfer", request, timeout))

    async def predict(self, model: str, array: Any, *, timeout: float | None = None) -> np.ndarray:
        """The model's first output for ``array`` (a batch, or one example)."""
        meta = self._meta.get(model) or await self.model_metadata(model)
        feeds, single, output = _prepare(meta, array)
        result = (await self.infer(model, feeds, outputs=[output], timeout=timeout))[output]
        return result[0] if single else result

    async def top_k(
        self, model: str, array: Any, k: int = 5, *, timeout: float | None = None
    ) -> list[list[Prediction]]:
        """Top-k predictions per example (one list for a single example)."""
        meta = self._meta.get(model) or await self.model_metadata(model)
        feeds, single, output = _prepare(meta, array)
        result = await self.infer(model, feeds, outputs=[output], classification=k, timeout=timeout)
        return _top_k(result[output], single)
