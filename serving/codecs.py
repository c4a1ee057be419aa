"""Requests in, answers out: every check a request must pass, and the answer it gets.

The data plane works on one transport-neutral request -- a ``ModelInferRequest`` message, the
protocol's data model, which the REST adapter builds from JSON too -- and returns an
:class:`Answer`; each transport writes the answer in its own framing.

Both KServe encodings are accepted: typed ``contents`` (one repeated field per datatype) and
``raw_input_contents`` (row-major little-endian bytes, BYTES elements as 4-byte length + data);
mixing them in one request is rejected. Answers are raw unless the request itself was typed, in
which case they are typed too (readable in grpcurl), FP16 excepted since it has no typed field.

Two extensions live here because they are encodings, not model logic:

* classification: a requested output with parameter ``classification = k`` comes back as
  ``[batch, k]`` BYTES ``"score:index:label"`` (Triton's format), labels from the ONNX metadata
  ``labels`` (or ``vocabulary`` for next-token models).
* text: a next-token model (metadata ``task = next-token``) also takes a BYTES tensor of raw text
  for its token-id input, tokenized as training did (serving/tokenizer.py), so clients can send
  a sentence.

Shortcuts (on with ``fast_paths``): :func:`_decode_fast` takes the common one-raw-input request in
a few steps before the full checks, and :class:`ResponseWriter` reuses the serialized header of
the common one-output answer. Both produce exactly what the plain path would.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from serving._proto import grpc_service_pb2 as pb
from serving.datatypes import LITTLE_ENDIAN, NUMPY_OF, datatype_of
from serving.errors import InvalidInputError
from serving.runtime import TensorSpec
from serving.signature import ModelSignature, RequestedOutput, element_count
from serving.wire import deserialize_bytes_tensor, raw_tensor, response_body

#: Typed-contents field per datatype. FP16 has none: it travels raw only.
CONTENTS_FIELD: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

CLASSIFICATION: Final = "classification"

# The fast path's finiteness test (x.x) may overflow on huge but finite inputs; the full path
# then decides, so numpy's warning about it says nothing useful.
warnings.filterwarnings("ignore", "overflow encountered in dot", RuntimeWarning, __name__)

#: Most dimensions a tensor may have (numpy's own ceiling; ONNX models use far fewer).
MAX_DIMS: Final = 64


@dataclass
class DecodedRequest:
    """A validated request: model feeds, batch size, requested outputs, answer encoding.

    ``raw`` is False for a typed request, whose answer is typed too where the transport can.
    """

    feeds: dict[str, np.ndarray]
    batch_size: int
    requested: list[RequestedOutput]
    raw: bool
    signature: tuple[Any, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's result, before any transport writes it.

    ``outputs`` is the request's slice of the model's outputs; :meth:`tensors` applies what the
    caller asked for (which outputs, classification). ``typed`` answers in typed contents where
    the transport has a choice (gRPC), because the request came typed.
    """

    signature: ModelSignature
    version: str
    request_id: str
    outputs: Mapping[str, np.ndarray]
    requested: Sequence[RequestedOutput]
    typed: bool = False

    @property
    def model_name(self) -> str:
        """The model that answered."""
        return self.signature.name

    def tensors(self) -> list[tuple[str, np.ndarray]]:
        """The requested outputs in request order, classification applied."""
        result: list[tuple[str, np.ndarray]] = []
        for want in self.requested:
            array = self.outputs[want.name]
            if want.classification:
                array = classify(array, want.classification, self.signature.labels)
            result.append((want.name, array))
        return result


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _param_int(param: pb.InferParameter) -> int | None:
    choice = param.WhichOneof("parameter_choice")
    if choice in {"int64_param", "uint64_param"}:
        return int(getattr(param, choice))
    text = param.string_param.strip()
    if choice == "string_param" and text.isascii() and text.isdigit():  # not '²' or '١'
        return int(text)
    return None


def _decode_values(
    model: str, tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> np.ndarray:
    """Turn one wire tensor into an array of its declared datatype and shape."""
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if datatype not in NUMPY_OF:
        raise InvalidInputError(
            model, "unsupported datatype", tensor=name, expected=sorted(NUMPY_OF), got=datatype
        )
    if shape and min(shape) < 0:
        raise InvalidInputError(model, "negative dimension in shape", tensor=name, got=shape)
    if len(shape) > MAX_DIMS:
        raise InvalidInputError(
            model, "too many dimensions", tensor=name, expected=f"<= {MAX_DIMS}", got=len(shape)
        )
    count = element_count(shape)
    if raw is not None:
        if datatype == "BYTES":
            try:
                items = deserialize_bytes_tensor(raw)
            except ValueError as exc:
                raise InvalidInputError(
                    model, f"malformed BYTES raw content: {exc}", tensor=name
                ) from exc
            if len(items) != count:
                raise InvalidInputError(
                    model, "BYTES element count does not match shape", tensor=name,
                    expected=f"{count} for shape {_shape_str(shape)}", got=len(items),
                )  # fmt: skip
            return np.array(items, dtype=object).reshape(shape)
        dtype = NUMPY_OF[datatype]
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInputError(
                model, "raw content byte size does not match shape and datatype", tensor=name,
                expected=f"{expected} bytes ({datatype} {_shape_str(shape)})",
                got=f"{len(raw)} bytes",
            )  # fmt: skip
        return np.frombuffer(raw, dtype=LITTLE_ENDIAN[datatype]).reshape(shape)
    if datatype == "FP16":
        raise InvalidInputError(
            model, "FP16 has no typed contents field; send it in raw_input_contents", tensor=name
        )
    values = getattr(tensor.contents, CONTENTS_FIELD[datatype])
    if len(values) != count:
        raise InvalidInputError(
            model, "typed contents element count does not match shape", tensor=name,
            expected=f"{count} for shape {_shape_str(shape)}", got=len(values),
        )  # fmt: skip
    if datatype == "BYTES":
        return np.array(list(values), dtype=object).reshape(shape)
    try:
        return np.array(values, dtype=NUMPY_OF[datatype]).reshape(shape)
    except OverflowError as exc:  # e.g. 300 in uint_contents for a UINT8 tensor
        raise InvalidInputError(
            model, f"typed contents value out of range for {datatype}", tensor=name
        ) from exc


def _check_shape(sig: ModelSignature, spec: TensorSpec, shape: Sequence[int]) -> None:
    ok = len(shape) == len(spec.shape)
    if ok:
        for want, got in zip(spec.shape, shape, strict=True):
            if want not in (-1, got):
                ok = False
                break
    if not ok:
        raise InvalidInputError(
            sig.name, "shape does not match the model", tensor=spec.name,
            expected=_shape_str(spec.shape), got=_shape_str(shape),
        )  # fmt: skip


def _decode_fast(request: pb.ModelInferRequest, sig: ModelSignature) -> DecodedRequest | None:
    """The common request (one raw input, exactly the model's shape) in few steps, or None.

    Full decoding is the server's largest Python cost per request after the session call (see
    bench/serving_load.py). Anything unusual -- and every mistake -- returns None and takes the
    full path, which finds and names the problem.
    """
    fast = sig.fast_input
    raw = request.raw_input_contents
    inputs = request.inputs
    if fast is None or len(raw) != 1 or len(inputs) != 1:
        return None
    tensor = inputs[0]
    if tensor.name != fast.name or tensor.datatype != fast.datatype or tensor.HasField("contents"):
        return None
    shape = tuple(tensor.shape)
    data = raw[0]
    if len(shape) != fast.rank or shape[1:] != fast.tail:
        return None
    size = shape[0]
    if not 0 < size <= sig.max_batch_size or len(data) != size * fast.row_bytes:
        return None
    flat = np.frombuffer(data, dtype=fast.dtype)
    # x.x (BLAS) is NaN or inf when any element is, at a third of np.isfinite's cost; huge
    # finite values can overflow it too, and then the full path counts exactly.
    if fast.check_finite and not math.isfinite(flat.dot(flat)):
        return None
    array = flat.reshape(shape)
    if not request.outputs:
        requested = sig.all_outputs
    else:
        plain = sig.plain_outputs
        requested = []
        for out in request.outputs:
            got = plain.get(out.name)
            if got is None or out.parameters:
                return None
            requested.append(got)
    return DecodedRequest({fast.name: array}, size, requested, raw=True, signature=fast.signature)


def decode_request(
    request: pb.ModelInferRequest, sig: ModelSignature, fast: bool = True
) -> DecodedRequest:
    """Validate a ModelInferRequest against a model and return its numpy feeds.

    Raises ``InvalidInputError`` naming the model, tensor, expectation and what came. ``fast``
    tries :func:`_decode_fast` first; whatever it cannot take goes through every check.
    """
    return (fast and _decode_fast(request, sig)) or _decode_full(request, sig)


def _decode_full(request: pb.ModelInferRequest, sig: ModelSignature) -> DecodedRequest:
    """Every check in order; the first failure raises ``InvalidInputError``."""
    model = sig.name
    raw_contents = request.raw_input_contents
    uses_raw = len(raw_contents) > 0
    inputs = request.inputs
    if uses_raw and any(t.HasField("contents") for t in inputs):
        raise InvalidInputError(
            model, "typed 'contents' and 'raw_input_contents' mixed in one request; use one"
        )
    if uses_raw and len(raw_contents) != len(inputs):
        raise InvalidInputError(
            model, "raw_input_contents must hold one entry per input",
            expected=len(inputs), got=len(raw_contents),
        )  # fmt: skip
    specs = sig.input_specs
    feeds: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidInputError(
                model, "unknown input", tensor=tensor.name,
                expected=f"inputs {sorted(specs)}", got=repr(tensor.name),
            )  # fmt: skip
        if tensor.name in feeds:
            raise InvalidInputError(model, "input given twice", tensor=tensor.name)
        text_input = (
            sig.tokenizer is not None and tensor.datatype == "BYTES" and spec.datatype == "INT64"
        )
        if tensor.datatype != spec.datatype and not text_input:
            accepted = spec.datatype + (" or BYTES text" if sig.tokenizer else "")
            raise InvalidInputError(
                model, "wrong datatype", tensor=tensor.name, expected=accepted, got=tensor.datatype
            )
        array = _decode_values(model, tensor, raw_contents[i] if uses_raw else None)
        if text_input:
            array = _tokenize(sig, spec, array)
        elif spec.datatype == "BYTES":
            _check_shape(sig, spec, array.shape)
            array = _utf8(sig.name, tensor.name, array)
        else:
            _check_shape(sig, spec, array.shape)
            if sig.tokenizer is not None and spec.datatype == "INT64" and array.size:
                vocab = len(sig.tokenizer.index)
                low, high = int(array.min()), int(array.max())
                if low < 0 or high >= vocab:
                    raise InvalidInputError(
                        model, "token id outside the vocabulary", tensor=tensor.name,
                        expected=f"ids in 0..{vocab - 1}", got=f"ids in {low}..{high}",
                    )  # fmt: skip
            # A sum is finite iff every element is (overflow aside): one cheap pass, and the
            # exact count only when something is off.
            if (
                array.dtype.kind == "f"
                and not sig.accepts_non_finite
                and not np.isfinite(np.add.reduce(array, axis=None, dtype=np.float64))
            ):
                bad = int(array.size - np.count_nonzero(np.isfinite(array)))
                if bad:
                    raise InvalidInputError(
                        model, "NaN or Inf values; this model cannot take non-finite inputs",
                        tensor=tensor.name, expected="finite values", got=f"{bad} non-finite",
                    )  # fmt: skip
        feeds[tensor.name] = array
    missing = [name for name in specs if name not in feeds] if len(feeds) < len(specs) else []
    if missing:
        raise InvalidInputError(
            model, "missing input(s)", tensor=", ".join(missing),
            expected=f"inputs {sorted(specs)}", got=f"inputs {sorted(feeds)}",
        )  # fmt: skip
    batch_size = _batch_size(sig, feeds)
    requested = _requested_outputs(sig, request)
    items = sorted(feeds.items()) if len(feeds) > 1 else feeds.items()
    signature = tuple((k, v.dtype.num, v.shape[1:]) for k, v in items)
    # A request without inputs has no encoding to mirror: it gets the raw default.
    return DecodedRequest(
        feeds, batch_size, requested, raw=uses_raw or not inputs, signature=signature
    )


def _utf8(model: str, name: str, array: np.ndarray) -> np.ndarray:
    """ONNX string tensors hold UTF-8 text: decode BYTES elements, refusing invalid ones."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        try:
            flat[i] = item if isinstance(item, str) else bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                model, "BYTES element is not UTF-8 text", tensor=name, got=f"element {i}"
            ) from exc
    return out


def _tokenize(sig: ModelSignature, spec: TensorSpec, texts: np.ndarray) -> np.ndarray:
    assert sig.tokenizer is not None
    if texts.ndim == 2 and texts.shape[1] == 1:
        texts = texts[:, 0]
    if texts.ndim != 1:
        raise InvalidInputError(
            sig.name, "text input must be one string per batch item", tensor=spec.name,
            expected="shape [batch] or [batch, 1]", got=_shape_str(texts.shape),
        )  # fmt: skip
    decoded = []
    for item in texts:
        try:
            decoded.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInputError(sig.name, "text is not UTF-8", tensor=spec.name) from exc
    fixed = spec.shape[1] if len(spec.shape) == 2 and spec.shape[1] > 0 else None
    ids = sig.tokenizer.encode(decoded, length=fixed)
    if ids.shape[1] == 0:
        raise InvalidInputError(sig.name, "text has no tokens", tensor=spec.name)
    return ids


def _batch_size(sig: ModelSignature, feeds: Mapping[str, np.ndarray]) -> int:
    if not sig.batchable or not feeds:
        return 1
    if len(feeds) == 1:  # the common case: nothing to agree on
        first, array = next(iter(feeds.items()))
        size = array.shape[0] if array.ndim else 1
    else:
        sizes = {name: array.shape[0] if array.ndim else 1 for name, array in feeds.items()}
        if len(set(sizes.values())) > 1:
            raise InvalidInputError(
                sig.name, "inputs disagree on the batch size (axis 0)", got=sizes
            )
        first, size = next(iter(sizes.items()))
    if size < 1:
        raise InvalidInputError(
            sig.name, "empty batch", tensor=first, expected="batch >= 1", got=size
        )
    if size > sig.max_batch_size:
        raise InvalidInputError(
            sig.name, "batch larger than max_batch_size", tensor=first,
            expected=f"<= {sig.max_batch_size}", got=size,
        )  # fmt: skip
    return size


def _requested_outputs(sig: ModelSignature, request: pb.ModelInferRequest) -> list[RequestedOutput]:
    known = sig.output_specs
    if not request.outputs:
        return sig.all_outputs
    requested: list[RequestedOutput] = []
    for out in request.outputs:
        if out.name not in known:
            raise InvalidInputError(
                sig.name, "unknown output requested", tensor=out.name,
                expected=f"outputs {sorted(known)}", got=repr(out.name),
            )  # fmt: skip
        k = 0
        if CLASSIFICATION in out.parameters:
            value = _param_int(out.parameters[CLASSIFICATION])
            if value is None or value < 1:
                raise InvalidInputError(
                    sig.name, "classification parameter must be a positive integer",
                    tensor=out.name, got=out.parameters[CLASSIFICATION],
                )  # fmt: skip
            if known[out.name].datatype in ("BYTES", "BOOL"):
                raise InvalidInputError(
                    sig.name, "classification needs a numeric output", tensor=out.name,
                    got=known[out.name].datatype,
                )  # fmt: skip
            k = value
        requested.append(RequestedOutput(out.name, k))
    return requested


def classify(array: np.ndarray, k: int, labels: Sequence[str] | None) -> np.ndarray:
    """Top-k ``"score:index[:label]"`` strings per batch row, best first (Triton's format)."""
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for c, index in enumerate(top[r]):
            text = f"{float(rows[r, index]):f}:{int(index)}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            out[r, c] = text.encode()
    return out


def set_typed(contents: pb.InferTensorContents, datatype: str, array: np.ndarray) -> None:
    flat = array.reshape(-1)
    target = getattr(contents, CONTENTS_FIELD[datatype])
    if datatype == "BYTES":
        target.extend(x.encode() if isinstance(x, str) else bytes(x) for x in flat)
    else:
        target.extend(flat.tolist())


def response_message(answer: Answer) -> pb.ModelInferResponse:
    """The ModelInferResponse for an answer (raw contents, or typed for a typed request)."""
    arrays = answer.tensors()
    typed = answer.typed and all(datatype_of(a) != "FP16" for _, a in arrays)
    response = pb.ModelInferResponse(
        model_name=answer.model_name, model_version=answer.version, id=answer.request_id
    )
    for name, array in arrays:
        datatype = datatype_of(array)
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if typed:
            set_typed(tensor.contents, datatype, array)
        else:
            response.raw_output_contents.append(raw_tensor(array))
    return response


#: Most distinct response headers one writer keeps (models x versions x outputs x shapes).
MAX_CACHED_HEADERS: Final = 4096


class ResponseWriter:
    """Writes answers as serialized ModelInferResponse bytes: the one encoder of gRPC answers.

    For the common answer (one plain raw output) everything but the request id and the tensor
    bytes repeats from one response to the next -- model name, version, output name, datatype and
    shape -- so with ``fast`` that part is serialized once per layout and kept; each response is
    that header followed by a small message holding the id and the raw bytes. Protobuf parses
    concatenated messages as one, so clients read exactly the message :func:`response_message`
    builds. Without ``fast`` (or for any other answer) the message is built and serialized.
    """

    def __init__(self, fast: bool = True) -> None:
        self.fast = fast
        self._headers: dict[tuple[Any, ...], bytes] = {}

    def __len__(self) -> int:
        """Response headers kept."""
        return len(self._headers)

    def write(self, answer: Answer) -> bytes:
        """The serialized ModelInferResponse for ``answer``."""
        requested = answer.requested
        if self.fast and not answer.typed and len(requested) == 1:
            want = requested[0]
            array = answer.outputs[want.name]
            if not want.classification and array.dtype.kind not in "OSU":
                key = (answer.model_name, answer.version, want.name, array.shape, array.dtype.num)
                header = self._headers.get(key)
                if header is None:
                    header = pb.ModelInferResponse(
                        model_name=answer.model_name,
                        model_version=answer.version,
                        outputs=[
                            pb.ModelInferResponse.InferOutputTensor(
                                name=want.name, datatype=datatype_of(array), shape=array.shape
                            )
                        ],
                    ).SerializeToString()
                    if len(self._headers) >= MAX_CACHED_HEADERS:
                        self._headers.clear()  # layouts of versions long gone; relearn
                    self._headers[key] = header
                return header + response_body(answer.request_id, array.tobytes())
        return response_message(answer).SerializeToString()
