"""Protobuf and KServe wire bytes written by hand: varints, BYTES tensors, response bodies.

These are the few encodings the server writes without building a protobuf message, because they
sit on every request's path; each one produces exactly the bytes the message would serialize to.
"""

from __future__ import annotations

import struct

import numpy as np


def varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Encode a BYTES tensor raw: each element as uint32 little-endian length + its bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def raw_tensor(array: np.ndarray) -> bytes:
    """A tensor as KServe's raw contents: row-major bytes, or length-prefixed BYTES elements."""
    if array.dtype.kind in "OSU":  # what datatype_of calls BYTES
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array).tobytes()


def deserialize_bytes_tensor(raw: bytes) -> list[bytes]:
    """Decode raw BYTES elements; raise ``ValueError`` when the lengths do not add up."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError(f"truncated length prefix at byte {offset}")
        (size,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + size > len(raw):
            raise ValueError(f"element of {size} bytes overruns the buffer at byte {offset}")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    return items


def response_body(request_id: str, data: bytes) -> bytes:
    """``ModelInferResponse(id=request_id, raw_output_contents=[data])``, serialized.

    Written out by hand (fields 3 and 6, both length-delimited): building and serializing the
    message costs about three times as much, on every response.
    """
    body = b"\x32" + varint(len(data)) + data
    if request_id:
        rid = request_id.encode()
        return b"\x1a" + varint(len(rid)) + rid + body
    return body


def stream_frame(body: bytes) -> bytes:
    """``ModelStreamInferResponse(infer_response=<body>)``, serialized (field 2)."""
    return b"\x12" + varint(len(body)) + body
