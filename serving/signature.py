"""What the server knows about a loaded model that every request is checked against.

Built once per loaded version from the session's tensors and metadata; the derived views
(tensors by name, labels, the one-input fast layout) are computed on first use and never change,
so the dataclass stays frozen and holds no per-request state.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.datatypes import LITTLE_ENDIAN
from serving.runtime import TensorSpec
from serving.tokenizer import Tokenizer


@dataclass(frozen=True)
class RequestedOutput:
    """An output the caller asked for; ``classification > 0`` asks for top-k strings."""

    name: str
    classification: int = 0


def element_count(shape: Sequence[int]) -> int:
    """Elements in a tensor of this shape (1 for a scalar)."""
    return math.prod(shape) if shape else 1


@dataclass(frozen=True)
class ModelSignature:
    """What the codecs need to know about a model to validate a request against it."""

    name: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    metadata: Mapping[str, str]
    max_batch_size: int
    batchable: bool
    tokenizer: Tokenizer | None = None

    @functools.cached_property
    def input_specs(self) -> dict[str, TensorSpec]:
        """Inputs by name (computed once per loaded version, not per request)."""
        return {spec.name: spec for spec in self.inputs}

    @functools.cached_property
    def output_specs(self) -> dict[str, TensorSpec]:
        """Outputs by name."""
        return {spec.name: spec for spec in self.outputs}

    @functools.cached_property
    def all_outputs(self) -> list[RequestedOutput]:
        """What a request that names no outputs gets: every output, plain tensors."""
        return [RequestedOutput(spec.name) for spec in self.outputs]

    @functools.cached_property
    def labels(self) -> list[str] | None:
        """Class labels for classification answers (``labels``, else ``vocabulary``)."""
        for key in ("labels", "vocabulary"):
            if key in self.metadata:
                try:
                    values = json.loads(self.metadata[key])
                except json.JSONDecodeError:
                    continue
                if isinstance(values, list):
                    return [str(v) for v in values]
        return None

    @functools.cached_property
    def accepts_non_finite(self) -> bool:
        """Models opt in to NaN/Inf with metadata ``accepts_non_finite = true``."""
        return self.metadata.get("accepts_non_finite", "").lower() == "true"

    @functools.cached_property
    def plain_outputs(self) -> dict[str, RequestedOutput]:
        """A requested output without parameters, by name (built once, shared by requests)."""
        return {spec.name: RequestedOutput(spec.name) for spec in self.outputs}

    @functools.cached_property
    def fast_input(self) -> FastInput | None:
        """The one-input shape most models have, precomputed for :func:`_decode_fast`."""
        if len(self.inputs) != 1 or not self.batchable or self.tokenizer is not None:
            return None
        spec = self.inputs[0]
        tail = tuple(spec.shape[1:])
        if (
            spec.datatype not in LITTLE_ENDIAN
            or spec.datatype == "BYTES"
            or min(tail, default=0) < 0
        ):
            return None
        dtype = LITTLE_ENDIAN[spec.datatype]
        if dtype == np.float16 and not self.accepts_non_finite:
            return None  # FP16 squares overflow from 256 up: the full path checks those
        return FastInput(
            name=spec.name,
            datatype=spec.datatype,
            dtype=dtype,
            rank=len(spec.shape),
            tail=tail,
            row_bytes=element_count(tail) * dtype.itemsize,
            check_finite=dtype.kind == "f" and not self.accepts_non_finite,
            signature=((spec.name, dtype.num, tail),),
        )


@dataclass(frozen=True)
class FastInput:
    """What a well-formed request for a one-input model must look like, worked out once."""

    name: str
    datatype: str
    dtype: np.dtype
    rank: int
    tail: tuple[int, ...]  # the fixed non-batch dimensions
    row_bytes: int
    check_finite: bool
    signature: tuple[Any, ...]
