"""The three names of every tensor data type: KServe/Triton wire name, numpy dtype, ONNX type.

One table so the codecs, the runtime and ModelConfig never disagree about what "FP32" means.
"""

from __future__ import annotations

from typing import Final

import numpy as np

#: KServe v2 datatype -> numpy dtype. BYTES travels as numpy object arrays of ``bytes``.
NUMPY_OF: Final[dict[str, np.dtype]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

#: Wire dtypes (raw contents are little-endian), built once instead of per request.
LITTLE_ENDIAN: Final[dict[str, np.dtype]] = {
    name: dtype.newbyteorder("<") for name, dtype in NUMPY_OF.items()
}

#: ONNX Runtime's type strings (``NodeArg.type``) -> KServe datatype.
FROM_ONNX: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

#: KServe datatype -> Triton ``inference.DataType`` enum name (ModelConfig uses the enum).
CONFIG_TYPE: Final[dict[str, str]] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


_NAME_OF: Final[dict[np.dtype, str]] = {
    dtype: name for name, dtype in NUMPY_OF.items() if name != "BYTES"
}


def datatype_of(array: np.ndarray) -> str:
    """Return the KServe datatype of a numpy array (object/str/bytes arrays are BYTES)."""
    name = _NAME_OF.get(array.dtype)
    if name is not None:
        return name
    if array.dtype.kind in {"O", "S", "U"}:
        return "BYTES"
    raise TypeError(f"no KServe datatype for numpy dtype {array.dtype}")
