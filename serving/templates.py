"""Request templates: the bytes a client repeats in every ModelInfer request, checked once.

A client calling one model sends the same request again and again with new tensor bytes: the
model name, version, input name, datatype and shape, requested outputs and parameters are the same
bytes each time. Protobuf writes fields in field-number order, and ``raw_input_contents`` (field
7) is the last field, so such a request is a fixed *header* followed by the tensor bytes. Once one
request has been parsed and validated in full, later requests whose bytes start with exactly that
header and have exactly the same length are the same request with other tensor values: they skip
parsing and validation and go straight to a numpy view of their own bytes.

Parsing and validating cost more per request than anything but the session call itself; a
template match is a prefix comparison and a numpy view. This is a ``fast_paths`` shortcut.

Only what is provably the same is matched: the header must be byte-identical to one whose parse
was checked, the remainder must be exactly one ``raw_input_contents`` entry of the expected
length, and the model version the template was validated against must still be the one serving.
Values are still checked (NaN/Inf) on every request. Requests with an ``id`` are not learned
(ids usually differ per request, so their headers never repeat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from serving._proto import grpc_service_pb2 as pb
from serving.codecs import DecodedRequest
from serving.repository import ServedVersion
from serving.signature import RequestedOutput
from serving.wire import varint

#: Field 7 (raw_input_contents), wire type 2 (length-delimited).
RAW_INPUT_TAG = b"\x3a"
#: Distinct request shapes remembered per server (one per client request layout in practice).
MAX_TEMPLATES = 256


@dataclass(frozen=True)
class RequestTemplate:
    """One validated request layout: everything but the tensor bytes."""

    header: bytes  # the message up to and including the tensor's tag and length
    served: ServedVersion  # the version the header was validated against
    input_name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    count: int  # elements in the tensor
    check_finite: bool
    requested: list[RequestedOutput]
    signature: tuple[object, ...]  # the batcher's merge key (DecodedRequest.signature)


class RequestTemplates:
    """The templates learned so far, by message length."""

    def __init__(self) -> None:
        self._by_size: dict[int, list[RequestTemplate]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def match(self, raw: bytes) -> tuple[RequestTemplate, DecodedRequest] | None:
        """The template ``raw`` fills in and its decoded request, or None (parse it instead)."""
        for template in self._by_size.get(len(raw), ()):
            if not raw.startswith(template.header):
                continue
            flat = np.frombuffer(raw, template.dtype, template.count, len(template.header))
            # NaN/Inf make x.x non-finite (as in codecs._decode_fast); the full path then
            # finds and names them.
            if template.check_finite and not math.isfinite(flat.dot(flat)):
                return None
            decoded = DecodedRequest(
                {template.input_name: flat.reshape(template.shape)},
                template.shape[0],
                template.requested,
                raw=True,
                signature=template.signature,
            )
            return template, decoded
        return None

    def learn(
        self,
        raw: bytes,
        request: pb.ModelInferRequest,
        decoded: DecodedRequest,
        served: ServedVersion,
    ) -> None:
        """Remember ``raw``'s layout if ``request`` (parsed from it) qualifies; else nothing."""
        fast = served.signature.fast_input
        if (
            fast is None
            or request.id
            or not decoded.raw
            or len(request.raw_input_contents) != 1
            or len(decoded.feeds) != 1
        ):
            return
        data = request.raw_input_contents[0]
        lead = RAW_INPUT_TAG + varint(len(data))
        cut = len(raw) - len(data)
        if raw[cut - len(lead) : cut] != lead or not raw.endswith(data):
            return  # not serialized in field order: nothing to match against
        header = raw[:cut]
        same_size = self._by_size.get(len(raw), [])
        # A template of a version no longer serving can never match again: the new one replaces
        # it (even when the store is full, so a hot reload never leaves a layout unmatched).
        kept = [t for t in same_size if t.header != header]
        if len(kept) == len(same_size) and self._count >= MAX_TEMPLATES:
            return
        prefix = pb.ModelInferRequest.FromString(header[: -len(lead)])
        if prefix.raw_input_contents:
            return  # other raw entries earlier in the message: not the simple layout
        prefix.raw_input_contents.append(data)
        if prefix != request:
            return
        ((name, array),) = decoded.feeds.items()
        if (
            name != fast.name
            or array.dtype != fast.dtype
            or array.shape[1:] != fast.tail
            or array.nbytes != len(data)
        ):
            return
        template = RequestTemplate(
            header=header,
            served=served,
            input_name=name,
            dtype=array.dtype,
            shape=array.shape,
            count=array.size,
            check_finite=fast.check_finite,
            requested=decoded.requested,
            signature=decoded.signature,
        )
        self._by_size[len(raw)] = [*kept, template]
        self._count += len(kept) + 1 - len(same_size)
