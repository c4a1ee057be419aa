"""Inference capture: a sampled record of what each model version sees and answers, in Parquet.

With ``--capture-rate`` above 0 the server samples successful inference requests (per model) and
writes one Parquet row per batch item: the inputs as the model received them (decoded, text
already tokenized), the outputs, and who/when. Off (the default) this module is not even
imported: no pyarrow, no thread, and the request path pays one attribute test.

Off the request path
    The request path (``DataPlane._infer``) calls :meth:`Capture.offer` after the answer is
    written: a sampling decision and, if sampled, an append of *references* to the already
    decoded arrays to a bounded buffer (bytes counted, never copied). A writer thread drains the
    buffer every ``POLL_S``, turns the records of one model version into columns in a few
    vectorized numpy/Arrow calls, and writes them. A full buffer drops the sample and counts it
    (``neuroserve_capture_dropped_total{model, reason="buffer_full"}``); a failing write drops
    the rows it held (``reason="write_failed"``) and is logged once when the outage begins and
    once when it ends. Requests never wait for the writer.

Files
    ``<location>/model=<model>/version=<version>/date=<YYYY-MM-DD>/<first>_<last>_<writer>.parquet``

    ``<location>`` is a directory or ``s3://bucket/prefix``; partition values are URI-quoted (Hive
    style, so ``pyarrow.dataset`` reads the tree too); ``<first>``/``<last>`` are the UTC times of
    the file's first and last row (``20250101T120000123456Z``), so names sort by time and a reader
    skips files older than it wants without opening them; ``<writer>`` is host, process, a
    random per-process token and a sequence number, so several workers or replicas share a
    location. A file is written under a hidden temporary name (``.<writer>.parquet.tmp``) and
    renamed when it is rolled: by size (``capture_roll_size_mb``), by age
    (``capture_roll_interval_s``) or at shutdown. Every visible file is therefore complete
    Parquet; a crash loses the open file, at most one roll interval, and the next server on
    that host deletes the temporary file its dead writer left. On S3 the file is assembled in
    memory and uploaded whole when rolled (an object appears complete or not at all).

Layout (one row per batch item; the Parquet schema's metadata ``neuroserve.capture`` holds the
same description as JSON)

    ==================  =============================  ============================================
    column              type                           meaning
    ==================  =============================  ============================================
    ``model``           string                         model name (the registered model)
    ``version``         string                         model version that answered
    ``source``          string                         ``serving``; a training-time reference
                                                       writes its own (``train``, ``test``)
    ``request_id``      string, null                   the request's ``id``, when it sent one
    ``trace_id``        string, null                   W3C trace id (32 hex), when there is one
    ``timestamp``       timestamp[us, UTC]             when the request arrived
    ``latency_ms``      float64, null                  arrival to answer written, in ms
    ``row``             int32                          the item's index in its request's batch
    ==================  =============================  ============================================

Then the tensors. A model with one input names its columns ``input...``, one output ``output...``;
with several, ``input.<tensor>...`` / ``output.<tensor>...``. How a tensor becomes columns
depends on its kind: the model's ``input_kind`` metadata (docs/contracts.md), else its shape
(per item: 1 axis a table, 2 a series, 3 an image), as pipelines/score.py decides it:

    ======  ===================================================================================
    kind    columns (``B`` = the tensor's base name)
    ======  ===================================================================================
    table   ``B.<feature>`` per feature (``feature_names`` metadata, else ``0``, ``1``, ...), the
            tensor's dtype: per-feature tests on tables read these directly. Outputs of up to
            ``MAX_COLUMNS`` values are tables too: ``output.<label>`` for a classifier's
            probabilities, ``output.0`` for a regressor.
    series  ``B`` list of the window's values (oldest first), and ``B.mean``, ``B.std``,
            ``B.min``, ``B.max``, ``B.last``, ``B.change_mean``, ``B.change_std`` (the
            step-to-step changes): value and change distributions.
    image   ``B.mean``, ``B.std``, ``B.min``, ``B.max``, ``B.p05``, ``B.p50``, ``B.p95`` of the
            image's pixels, ``B.c<i>.mean`` per channel when there are several; with
            ``--capture-images pixels`` also ``B``, the list of every pixel (C*H*W, row-major).
    text    ``B`` list of token ids as the model received them, ``B.length`` (tokens that are not
            padding) and, when the vocabulary names an unknown token, ``B.unk_rate`` (the share
            of unknown tokens among them): token distributions and out-of-vocabulary rate.
    tensor  anything else: ``B`` as a list of the item's values (flattened), or a scalar column
            when the item is one value.
    ======  ===================================================================================

And, for models whose task says what they predict, the prediction distribution:

* classifiers (``binary``, ``multiclass``, ``next-token``, or a model with ``labels``):
  ``prediction`` (string: the top label, or its index without labels) and ``prediction.score``
  (float32: its probability). A classifier output wider than ``MAX_COLUMNS`` (a vocabulary) is
  kept only as these two columns.
* ``regression``, ``forecast`` (or any one-value output): ``prediction`` (float64).

API: :class:`CaptureLayout` (``of``, ``from_signature``, ``from_onnx``) decides the columns of a
model version, and its ``rows`` turns input and output arrays into rows of that layout (the
training side writes its reference profile with it, in exactly this layout);
:func:`write_captures` stores such rows as one complete file in the tree above;
:func:`read_captures` reads a model's rows back; :func:`captured_models` lists what a location
holds. :class:`Capture` is the server's sampler and writer.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Protocol
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from serving.datatypes import NUMPY_OF
from serving.logs import log_event
from serving.settings import ALL_MODELS, CaptureImages

if TYPE_CHECKING:
    from serving.metrics import CaptureMetrics
    from serving.repository import ServedVersion
    from serving.settings import Settings
    from serving.signature import ModelSignature

logger = logging.getLogger("serving.capture")

#: Layout version, stored in every file's schema metadata.
LAYOUT_VERSION: Final = 1
#: The schema metadata key holding the layout description (JSON).
SCHEMA_KEY: Final = b"neuroserve.capture"
#: The schema metadata key :func:`read_captures` lists skipped files under (JSON list).
SKIPPED_KEY: Final = b"neuroserve.skipped"
#: ``source`` of the rows the server captures.
SERVING: Final = "serving"
#: Every row's first columns, in order.
META_SCHEMA: Final = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("request_id", pa.string()),
        pa.field("trace_id", pa.string()),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("latency_ms", pa.float64()),
        pa.field("row", pa.int32(), nullable=False),
    ]
)
Kind = Literal["table", "series", "image", "text", "tensor", "omitted"]
#: What a model's ``input_kind`` metadata may say (docs/contracts.md).
INPUT_KINDS: Final = ("table", "series", "image", "text")
#: Kind by the number of axes of one item, without ``input_kind`` (as pipelines/score.py).
KIND_OF_RANK: Final[dict[int, Kind]] = {1: "table", 2: "series", 3: "image"}
#: Tasks whose output is a probability per class.
CATEGORICAL_TASKS: Final = frozenset({"binary", "multiclass", "next-token"})
#: Tasks whose output is a value.
NUMERICAL_TASKS: Final = frozenset({"regression", "forecast"})
#: Widest table written as one column per value (wider: a list column).
MAX_COLUMNS: Final = 256
IMAGE_PERCENTILES: Final = (5, 50, 95)
SERIES_STATS: Final = ("mean", "std", "min", "max", "last", "change_mean", "change_std")
IMAGE_STATS: Final = ("mean", "std", "min", "max", *(f"p{p:02d}" for p in IMAGE_PERCENTILES))

#: How often the writer thread drains the buffer, in seconds.
POLL_S: Final = 0.1
#: Records converted in one go: the writer thread holds the GIL while it converts, and yields
#: it between chunks so requests on the event loop never wait long for it.
CONVERT_CHUNK: Final = 128
#: What one buffered record costs beyond its arrays (the tuple, ids, references), in bytes.
RECORD_OVERHEAD: Final = 512
#: Row groups hold at most this many rows, and at most ``ROW_GROUP_BYTES`` of Arrow data (or
#: half the roll size when that is smaller): pending rows wait in memory up to that much.
ROW_GROUP_ROWS: Final = 65_536
ROW_GROUP_BYTES: Final = 8 << 20
#: How long :meth:`Capture.close` waits for the writer to write what it holds, in seconds.
CLOSE_TIMEOUT_S: Final = 60.0

_TIME_FORMAT: Final = "%Y%m%dT%H%M%S%fZ"
_FILE_NAME: Final = re.compile(r"^(\d{8}T\d{12}Z)_(\d{8}T\d{12}Z)_([A-Za-z0-9._-]+)\.parquet$")
_TRACEPARENT: Final = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


class CaptureError(Exception):
    """A capture location that cannot be read or written; the message is one line naming it."""


class TensorLike(Protocol):
    """What a layout needs of a tensor: serving.runtime.TensorSpec has it."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> Sequence[int]: ...


# =============================================================================== the layout
@dataclasses.dataclass(frozen=True)
class TensorColumns:
    """How one tensor becomes columns: its kind, column prefix and one item's shape."""

    name: str
    base: str
    kind: Kind
    datatype: str
    item_shape: tuple[int, ...]
    #: Column name suffixes of a table (features, labels or indices).
    names: tuple[str, ...] = ()

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of the tensor's values (BYTES: object)."""
        return NUMPY_OF.get(self.datatype, np.dtype(np.float32))


def _arrow_type(datatype: str) -> pa.DataType:
    """The column type of a tensor's values: its own, FP16 widened, BYTES as text."""
    if datatype == "BYTES":
        return pa.string()
    if datatype == "FP16":
        return pa.float32()
    return pa.from_numpy_dtype(NUMPY_OF.get(datatype, np.dtype(np.float32)))


def _json_list(metadata: Mapping[str, str], key: str) -> list[str] | None:
    try:
        values = json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError):
        return None
    return [str(v) for v in values] if isinstance(values, list) else None


@dataclasses.dataclass(frozen=True)
class CaptureLayout:
    """The columns of one model version's captured rows (the module docstring's layout).

    Decided once per version from its tensors and metadata; :meth:`rows` turns arrays into rows.
    """

    model: str
    version: str
    task: str
    input_kind: str
    images: CaptureImages
    batched: bool
    inputs: tuple[TensorColumns, ...]
    outputs: tuple[TensorColumns, ...]
    #: ``categorical``, ``numerical`` or ``""`` (no prediction columns).
    prediction: str
    labels: tuple[str, ...] | None
    pad_id: int | None
    unk_id: int | None

    # ----------------------------------------------------------------------- building
    @classmethod
    def of(
        cls,
        model: str,
        version: str,
        inputs: Sequence[TensorLike],
        outputs: Sequence[TensorLike],
        metadata: Mapping[str, str],
        *,
        images: CaptureImages = "summary",
        batched: bool | None = None,
    ) -> CaptureLayout:
        """The layout of a model from its tensors (name, KServe datatype, shape with -1 for
        dynamic axes) and ONNX metadata. ``batched`` (default: every tensor's first axis is
        dynamic, as serving decides) says whether axis 0 is the batch."""
        if batched is None:
            batched = all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))
        skip = 1 if batched else 0
        task = metadata.get("task", "")
        declared = metadata.get("input_kind", "")
        vocabulary = _json_list(metadata, "vocabulary")
        labels = _json_list(metadata, "labels") or vocabulary
        pad_id = unk_id = None
        if vocabulary is not None:
            index = {token: i for i, token in enumerate(vocabulary)}
            unk_id = index.get(metadata.get("unk_token", "<unk>"))
            pad_id = index.get("<pad>")
        features = _json_list(metadata, "feature_names")
        in_cols = tuple(
            _input_columns(
                t, tuple(t.shape[skip:]), "input" if len(inputs) == 1 else f"input.{t.name}",
                declared if len(inputs) == 1 else "",
                features if len(inputs) == 1 else None,
            )
            for t in inputs
        )  # fmt: skip
        prediction = ""
        out_cols: list[TensorColumns] = []
        for i, t in enumerate(outputs):
            item = tuple(t.shape[skip:])
            base = "output" if len(outputs) == 1 else f"output.{t.name}"
            numeric = t.datatype not in ("BYTES", "BOOL")
            if i == 0 and numeric and len(item) == 1:
                width = item[0]
                if (task in CATEGORICAL_TASKS or (not task and labels)) and width != 1:
                    prediction = "categorical"
                elif task in NUMERICAL_TASKS or width == 1:
                    prediction = "numerical"
            names = (
                labels if i == 0 and labels and len(item) == 1 and item[0] == len(labels) else None
            )
            col = _table_or_tensor(t, item, base, names)
            if col.kind == "tensor" and prediction == "categorical" and i == 0:
                col = dataclasses.replace(col, kind="omitted")  # a vocabulary: predictions only
            out_cols.append(col)
        return cls(
            model=model,
            version=str(version),
            task=task,
            input_kind=declared,
            images=images,
            batched=batched,
            inputs=in_cols,
            outputs=tuple(out_cols),
            prediction=prediction,
            labels=tuple(labels) if labels else None,
            pad_id=pad_id,
            unk_id=unk_id,
        )

    @classmethod
    def from_signature(
        cls, signature: ModelSignature, version: str, images: CaptureImages = "summary"
    ) -> CaptureLayout:
        """The layout of a loaded version (what the server checks requests against)."""
        return cls.of(
            signature.name,
            version,
            signature.inputs,
            signature.outputs,
            signature.metadata,
            images=images,
            batched=signature.batchable,
        )

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        model: str,
        version: str,
        images: CaptureImages = "summary",
    ) -> CaptureLayout:
        """The layout of an ONNX file, read as the server reads it (ONNX Runtime, CPU)."""
        import onnxruntime as ort

        from serving.runtime import _specs

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return cls.of(
            model,
            version,
            _specs(session.get_inputs()),
            _specs(session.get_outputs()),
            dict(session.get_modelmeta().custom_metadata_map),
            images=images,
        )

    # ----------------------------------------------------------------------- schema
    @functools.cached_property
    def schema(self) -> pa.Schema:
        """The Parquet schema of this version's rows, with the layout in its metadata."""
        fields = list(META_SCHEMA)
        for col in (*self.inputs, *self.outputs):
            fields += [pa.field(name, array.type) for name, array in self._tensor(col, None, 0)]
        fields += [pa.field(name, array.type) for name, array in self._prediction(None, 0)]
        return pa.schema(fields, metadata={SCHEMA_KEY: json.dumps(self.describe()).encode()})

    def describe(self) -> dict[str, Any]:
        """The layout as JSON-able data (stored in every file's schema metadata)."""

        def tensor(col: TensorColumns, direction: str) -> dict[str, Any]:
            return {
                "tensor": col.name,
                "direction": direction,
                "kind": col.kind,
                "datatype": col.datatype,
                "item_shape": list(col.item_shape),
                "columns": [name for name, _ in self._tensor(col, None, 0)],
            }

        return {
            "layout": LAYOUT_VERSION,
            "model": self.model,
            "version": self.version,
            "task": self.task,
            "input_kind": self.input_kind,
            "images": self.images,
            "prediction": self.prediction,
            "tensors": [tensor(c, "input") for c in self.inputs]
            + [tensor(c, "output") for c in self.outputs],
        }

    # ----------------------------------------------------------------------- rows
    def rows(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        *,
        source: str = SERVING,
        timestamp: datetime | None = None,
        latency_ms: float | None = None,
        request_id: str | None = None,
        trace_id: str | None = None,
    ) -> pa.Table:
        """Rows of this layout for one batch: ``inputs`` and ``outputs`` map tensor names to
        arrays with the batch on axis 0 (as the model takes and gives them); a tensor left out
        gets nulls, so a reference profile may hold inputs without outputs or the reverse.
        ``source`` labels the rows (``serving`` for the server's; e.g. ``train``/``test`` for a
        reference profile); ``timestamp`` defaults to now. The table carries the layout in its
        schema metadata."""
        n = self._items(inputs, outputs)
        when = timestamp or datetime.now(UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ns = int(when.timestamp() * 1e6) * 1000
        meta = _Meta(
            request_ids=[request_id or None],
            trace_ids=[trace_id],
            start_ns=np.array([ns], np.int64),
            latency_ms=[latency_ms],
            counts=np.array([n], np.int64),
        )
        return pa.Table.from_batches([self._batch(meta, inputs, outputs, source)], self.schema)

    def _items(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> int:
        arrays = [np.asarray(a) for a in (*inputs.values(), *outputs.values())]
        if not arrays:
            raise ValueError("capture rows need at least one input or output array")
        if not self.batched:
            return 1
        sizes = {a.shape[0] if a.ndim else 1 for a in arrays}
        if len(sizes) != 1:
            raise ValueError(f"inputs and outputs disagree on the batch size: {sorted(sizes)}")
        return sizes.pop()

    def _batch(
        self,
        meta: _Meta,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        source: str,
        stacked: bool = False,
    ) -> pa.RecordBatch:
        """Columns for the items of several requests (their arrays already concatenated;
        ``stacked``: axis 0 is the item even for a model without a batch axis)."""
        counts = meta.counts
        n = int(counts.sum())
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        arrays: list[pa.Array] = [
            pa.repeat(pa.scalar(self.model, pa.string()), n),
            pa.repeat(pa.scalar(self.version, pa.string()), n),
            pa.repeat(pa.scalar(source, pa.string()), n),
            _repeat(meta.request_ids, counts, pa.string()),
            _repeat(meta.trace_ids, counts, pa.string()),
            pa.array(np.repeat(meta.start_ns // 1000, counts), pa.timestamp("us", tz="UTC")),
            _repeat(meta.latency_ms, counts, pa.float64()),
            pa.array((np.arange(n) - starts).astype(np.int32), pa.int32()),
        ]
        for col in self.inputs:
            x = self._items_of(col, inputs, n, stacked)
            arrays += [a for _, a in self._tensor(col, x, n)]
        for col in self.outputs:
            arrays += [a for _, a in self._tensor(col, self._items_of(col, outputs, n, stacked), n)]
        primary = self._items_of(self.outputs[0], outputs, n, stacked) if self.outputs else None
        arrays += [a for _, a in self._prediction(primary, n)]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _items_of(
        self, col: TensorColumns, arrays: Mapping[str, np.ndarray], n: int, stacked: bool
    ) -> np.ndarray | None:
        """The tensor's values, one item per row (None when not given)."""
        array = arrays.get(col.name)
        if array is None:
            return None
        array = np.asarray(array)
        if not self.batched and not stacked:
            array = array[np.newaxis]
        if array.shape[0] != n:
            raise ValueError(f"tensor {col.name!r} has {array.shape[0]} items, expected {n}")
        return array

    # ----------------------------------------------------------------------- columns by kind
    def _tensor(
        self, col: TensorColumns, x: np.ndarray | None, n: int
    ) -> list[tuple[str, pa.Array]]:
        """The (name, array) columns of one tensor; nulls when ``x`` is None (also how the
        schema is derived: one place decides each column's name and type)."""
        base, kind = col.base, col.kind
        if kind == "omitted":
            return []
        if kind == "table":
            value_type = _arrow_type(col.datatype)
            return [
                (f"{base}.{name}", _values(None if x is None else x[:, j], value_type, n))
                for j, name in enumerate(col.names)
            ]
        if kind == "series":
            return [
                (base, _list(x, _arrow_type(col.datatype), n)),
                *_stats(base, SERIES_STATS, None if x is None else _series_stats(x), n),
            ]
        if kind == "image":
            channels = col.item_shape[0] if col.item_shape and col.item_shape[0] > 1 else 0
            stats = None if x is None else _image_stats(x, channels)
            names = (*IMAGE_STATS, *(f"c{i}.mean" for i in range(channels)))
            columns = _stats(base, names, stats, n)
            if self.images == "pixels":
                columns.insert(0, (base, _list(x, _arrow_type(col.datatype), n)))
            return columns
        if kind == "text":
            pad, unk = self.pad_id, self.unk_id
            length = rate = None
            if x is not None:
                length = (x != pad).sum(axis=1) if pad is not None else np.full(n, x.shape[1])
                if unk is not None:
                    rate = (x == unk).sum(axis=1) / np.maximum(length, 1)
            columns = [
                (base, _list(x, pa.int64(), n)),
                (f"{base}.length", _values(length, pa.int32(), n)),
            ]
            if unk is not None:
                columns.append((f"{base}.unk_rate", _values(rate, pa.float64(), n)))
            return columns
        value_type = _arrow_type(col.datatype)
        if not col.item_shape:  # one value per item
            return [(base, _values(None if x is None else x.reshape(n), value_type, n))]
        return [(base, _list(x, value_type, n))]

    def _prediction(self, y: np.ndarray | None, n: int) -> list[tuple[str, pa.Array]]:
        if self.prediction == "categorical":
            label = score = None
            if y is not None:
                scores = y.reshape(n, -1)
                index = scores.argmax(axis=1)
                score = scores[np.arange(n), index]
                names = self.labels
                if names is not None and len(names) == scores.shape[1]:
                    label = np.asarray(names, dtype=object)[index]
                else:
                    label = index.astype(str).astype(object)
            return [
                ("prediction", _values(label, pa.string(), n)),
                ("prediction.score", _values(score, pa.float32(), n)),
            ]
        if self.prediction == "numerical":
            value = None if y is None else y.reshape(n, -1)[:, 0]
            return [("prediction", _values(value, pa.float64(), n))]
        return []


def _input_columns(
    t: TensorLike,
    item: tuple[int, ...],
    base: str,
    declared: str,
    features: list[str] | None,
) -> TensorColumns:
    numeric = t.datatype not in ("BYTES",)
    kind: Kind = "tensor"
    if numeric:
        if declared == "text" and len(item) == 1 and t.datatype.startswith(("INT", "UINT")):
            kind = "text"
        elif declared in INPUT_KINDS and declared != "text":
            kind = declared  # type: ignore[assignment]
        elif not declared:
            kind = KIND_OF_RANK.get(len(item), "tensor")
    wants = {"table": 1, "series": 2, "image": 3}.get(kind)
    if wants is not None and len(item) != wants:
        kind = "tensor"  # the metadata and the shape disagree: keep the values as they are
    if kind == "table":
        return _table_or_tensor(t, item, base, features)
    return TensorColumns(t.name, base, kind, t.datatype, item)


def _table_or_tensor(
    t: TensorLike, item: tuple[int, ...], base: str, names: Sequence[str] | None
) -> TensorColumns:
    """A one-axis item of known, modest width is a table (a column per value); else a list."""
    if len(item) == 1 and 0 < item[0] <= MAX_COLUMNS and t.datatype != "BYTES":
        width = item[0]
        chosen = list(names) if names is not None and len(names) == width else None
        if chosen is None or len(set(chosen)) != width:
            chosen = [str(j) for j in range(width)]
        return TensorColumns(t.name, base, "table", t.datatype, item, tuple(chosen))
    return TensorColumns(t.name, base, "tensor", t.datatype, item)


def _values(x: np.ndarray | Sequence[Any] | None, type_: pa.DataType, n: int) -> pa.Array:
    """One value per row (nulls when ``x`` is None)."""
    if x is None:
        return pa.nulls(n, type_)
    if isinstance(x, np.ndarray):
        if x.dtype == np.float16:
            x = x.astype(np.float32)
        elif x.dtype == object and pa.types.is_string(type_):
            x = np.array([_text(v) for v in x], dtype=object)
    return pa.array(x, type_)


def _list(x: np.ndarray | None, value_type: pa.DataType, n: int) -> pa.Array:
    """One list of the item's values (flattened, row-major) per row."""
    list_type = pa.list_(value_type)
    if x is None:
        return pa.nulls(n, list_type)
    width = math.prod(x.shape[1:])
    flat = x.reshape(-1)
    if flat.dtype == object:
        flat = np.array([_text(v) for v in flat], dtype=object)
    elif flat.dtype == np.float16:
        flat = flat.astype(np.float32)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width, pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(flat, value_type), type=list_type)


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _stats(
    base: str, names: Sequence[str], stats: Sequence[np.ndarray] | None, n: int
) -> list[tuple[str, pa.Array]]:
    return [
        (f"{base}.{name}", _values(None if stats is None else stats[i], pa.float64(), n))
        for i, name in enumerate(names)
    ]


def _series_stats(x: np.ndarray) -> list[np.ndarray]:
    """SERIES_STATS per item of ``x`` [n, time, channels]."""
    values = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
    flat = values.reshape(values.shape[0], -1)
    n = values.shape[0]
    if values.shape[1] >= 2:
        changes = np.diff(values, axis=1).reshape(n, -1)
        change_mean, change_std = changes.mean(axis=1), changes.std(axis=1)
    else:
        change_mean = change_std = np.full(n, np.nan)
    if flat.shape[1] == 0:
        empty = np.full(n, np.nan)
        return [empty] * 5 + [change_mean, change_std]
    return [
        flat.mean(axis=1),
        flat.std(axis=1),
        flat.min(axis=1),
        flat.max(axis=1),
        values[:, -1, :].mean(axis=1),
        change_mean,
        change_std,
    ]


def _image_stats(x: np.ndarray, channels: int) -> list[np.ndarray]:
    """IMAGE_STATS (then per-channel means) per item of ``x`` [n, channels, height, width].

    Percentiles interpolate linearly between sorted pixels, as ``np.percentile`` does, but
    from one ``np.sort`` per batch: numpy's vectorized sort is an order of magnitude faster
    than the selection ``np.percentile`` runs per row, and this runs for every captured image.
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    size = flat.shape[1]
    if size == 0:
        return [np.full(n, np.nan)] * (len(IMAGE_STATS) + channels)
    ordered = np.sort(flat, axis=1)
    position = np.asarray(IMAGE_PERCENTILES, np.float64) / 100 * (size - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    weight = position - low
    percentiles = ordered[:, low] * (1 - weight) + ordered[:, high] * weight
    per_channel = flat.reshape(n, channels, -1).mean(axis=2) if channels else np.empty((n, 0))
    return [
        flat.mean(axis=1, dtype=np.float64),
        flat.std(axis=1, dtype=np.float64),
        ordered[:, 0],
        ordered[:, -1],
        *percentiles.T,
        *per_channel.T,
    ]


def _repeat(values: Sequence[Any], counts: np.ndarray, type_: pa.DataType) -> pa.Array:
    """Per-request values, one per item."""
    if all(v is None for v in values):
        return pa.nulls(int(counts.sum()), type_)
    return pa.array(np.repeat(np.asarray(values, dtype=object), counts), type_)


class _Meta(NamedTuple):
    """Who and when, per request, for a group of requests written together."""

    request_ids: Sequence[str | None]
    trace_ids: Sequence[str | None]
    start_ns: np.ndarray  # epoch ns
    latency_ms: Sequence[float | None]
    counts: np.ndarray  # items per request


# =============================================================================== locations
class _Location:
    """A capture location through ``pyarrow.fs``: a local directory or an S3 prefix."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        text = str(location)
        self.text = text
        self.s3 = text.startswith("s3://")
        if self.s3:
            self.fs: pafs.FileSystem = s3_filesystem()
            self.root = text[len("s3://") :].strip("/")
            if not self.root:
                raise CaptureError(f"capture location {text!r} names no bucket")
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(text).expanduser().resolve())

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def describe(self, path: str) -> str:
        """A path as the user knows it (``s3://...`` for S3)."""
        return f"s3://{path}" if self.s3 else path


def s3_filesystem() -> pafs.FileSystem:
    """S3 with the endpoint and credentials boto3 and MLflow users already set: ``AWS_*``
    credentials and region, and an endpoint from ``AWS_ENDPOINT_URL_S3``,
    ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL`` (MinIO in the compose stack). Public:
    the one rule for reaching the bucket, which ``neuroserve score`` (pipelines/objects.py)
    follows too."""
    env = os.environ
    options: dict[str, Any] = {"connect_timeout": 5.0, "request_timeout": 30.0}
    endpoint = next(
        (
            env[key]
            for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
            if env.get(key)
        ),
        None,
    )
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parts.netloc
        options["scheme"] = parts.scheme
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region or endpoint:
        options["region"] = region or "us-east-1"
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        options["access_key"] = env["AWS_ACCESS_KEY_ID"]
        options["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            options["session_token"] = env["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**options)


def _partition(model: str, version: str | None = None, day: date | None = None) -> list[str]:
    parts = [f"model={quote(model, safe='')}"]
    if version is not None:
        parts.append(f"version={quote(version, safe='')}")
        if day is not None:
            parts.append(f"date={day.isoformat()}")
    return parts


def _stamp(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime(_TIME_FORMAT)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _writer_token() -> str:
    """Host, process and a random token: unique per server process, safe in a file name."""
    return f"{_host()}-{os.getpid()}-{secrets.token_hex(3)}"


#: A temporary file's name: ``.<host>-<pid>-<token>-<seq>.parquet.tmp``.
_TEMP_NAME: Final = re.compile(r"^\.(.+)-(\d+)-([0-9a-f]{6})-\d{6}\.parquet\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _stale(name: str, token: str) -> bool:
    """True for a temporary file that a dead writer on this host left behind (a crash): its
    process is gone, or its pid is ours but its token is not (a container's pid 1 restarted)."""
    match = _TEMP_NAME.match(name)
    if match is None:
        return False
    host, pid, their_token = match.group(1), int(match.group(2)), match.group(3)
    if host != _host():
        return False  # another machine's writer: not ours to judge
    if pid == os.getpid():
        return not token.endswith(their_token)
    return not _alive(pid)


class _File:
    """One capture file being written: a temporary name (local) or memory (S3) until closed."""

    def __init__(
        self, where: _Location, directory: list[str], name: str, schema: pa.Schema
    ) -> None:
        self.where = where
        self.directory = where.path(*directory)
        self.temp: str | None = None
        self.sink: Any
        if where.s3:
            self.sink = pa.BufferOutputStream()
        else:
            where.fs.create_dir(self.directory, recursive=True)
            self.temp = f"{self.directory}/.{name}.parquet.tmp"
            self.sink = where.fs.open_output_stream(self.temp)
        self.writer = pq.ParquetWriter(self.sink, schema, compression="zstd")
        self.rows = 0
        self.first_ns = 2**63 - 1
        self.last_ns = 0
        self.name = name

    def write(self, table: pa.Table, first_ns: int, last_ns: int) -> None:
        self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.rows += table.num_rows
        self.first_ns = min(self.first_ns, first_ns)
        self.last_ns = max(self.last_ns, last_ns)

    @property
    def size(self) -> int:
        return int(self.sink.tell())

    def publish(self) -> str:
        """Finish the file and give it its final name; returns that path."""
        self.writer.close()
        final = (
            f"{self.directory}/{_stamp(self.first_ns)}_{_stamp(self.last_ns)}_{self.name}.parquet"
        )
        if self.temp is None:
            data = self.sink.getvalue()
            with self.where.fs.open_output_stream(final) as out:
                out.write(data)
        else:
            self.sink.close()
            self.where.fs.move(self.temp, final)
        return final

    def discard(self) -> None:
        """Drop the unfinished file (after a failure); never raises."""
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            self.sink.close()
        if self.temp is not None:
            with contextlib.suppress(Exception):
                self.where.fs.delete_file(self.temp)


def _time_range(table: pa.Table) -> tuple[int, int]:
    """The first and last row times of a table of captured rows, in ns since the epoch."""
    bounds = pc.min_max(table.column("timestamp").cast(pa.int64()))
    return bounds["min"].as_py() * 1000, bounds["max"].as_py() * 1000


def write_captures(table: pa.Table, location: str | os.PathLike[str]) -> str:
    """Store rows of one model version (from :meth:`CaptureLayout.rows`) as one complete file in
    the capture tree at ``location`` (a directory or ``s3://bucket/prefix``); returns its path.

    The training side writes its reference profile this way, so :func:`read_captures` reads it
    exactly like the server's captures.
    """
    models = set(table.column("model").unique().to_pylist())
    versions = set(table.column("version").unique().to_pylist())
    if len(models) != 1 or len(versions) != 1:
        raise ValueError(
            f"write_captures takes rows of one model version, got models {sorted(models)} "
            f"and versions {sorted(versions)}"
        )
    if table.num_rows == 0:
        raise ValueError("write_captures got no rows")
    (model,), (version,) = models, versions
    first, last = _time_range(table)
    where = _Location(location)
    day = datetime.fromtimestamp(first / 1e9, UTC).date()
    out = _File(where, _partition(model, version, day), f"{_writer_token()}-000000", table.schema)
    try:
        out.write(table, first, last)
        return where.describe(out.publish())
    except BaseException:
        out.discard()
        raise


# =============================================================================== reading
def _since_ns(since: datetime | timedelta | None) -> int | None:
    if since is None:
        return None
    if isinstance(since, timedelta):
        since = datetime.now(UTC) - since
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return int(since.timestamp() * 1e6) * 1000


def _parse_stamp(text: str) -> int:
    when = datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    return int(when.timestamp() * 1e6) * 1000


def _listing(where: _Location, path: str) -> list[pafs.FileInfo]:
    """Every file below ``path`` (none when it does not exist)."""
    try:
        root = where.fs.get_file_info(path)
        if root.type == pafs.FileType.NotFound:
            return []
        return [
            info
            for info in where.fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if info.type == pafs.FileType.File
        ]
    except OSError as exc:
        raise CaptureError(
            f"capture location {where.text} could not be read: {_one_line(exc)}"
        ) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_root(where: _Location) -> None:
    """Raise CaptureError unless the location exists: the directory, or on S3 the bucket (a
    prefix exists only once something is written below it)."""
    root = where.root.split("/", 1)[0] if where.s3 else where.root
    try:
        info = where.fs.get_file_info(root)
    except OSError as exc:
        raise CaptureError(
            f"capture location {where.text} could not be read: {_one_line(exc)}"
        ) from None
    if info.type == pafs.FileType.NotFound:
        missing = f" (bucket {root!r} is missing)" if where.s3 else ""
        raise CaptureError(f"capture location {where.text} does not exist{missing}")


def captured_models(location: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The models with captures at ``location`` and, for each, the versions captured."""
    where = _Location(location)
    _check_root(where)
    found: dict[str, set[str]] = collections.defaultdict(set)
    for info in _listing(where, where.root):
        parts = info.path[len(where.root) :].strip("/").split("/")
        if len(parts) >= 2 and parts[0].startswith("model=") and parts[1].startswith("version="):
            found[unquote(parts[0][6:])].add(unquote(parts[1][8:]))
    return {model: sorted(versions) for model, versions in sorted(found.items())}


def empty_table() -> pa.Table:
    """What :func:`read_captures` returns for a model without captures: no rows, the common
    columns."""
    return META_SCHEMA.empty_table()


def read_captures(
    location: str | os.PathLike[str],
    model: str,
    version: str | None = None,
    since: datetime | timedelta | None = None,
) -> pa.Table:
    """A model's captured rows at ``location`` (a directory or ``s3://bucket/prefix``), oldest
    first: every version, or ``version``; rows from ``since`` on (a time, naive means UTC, or
    a span back from now). ``.to_pandas()`` gives a DataFrame.

    No captures for the model yet: an empty table. Files that are not captures (foreign
    names) or cannot be read (corrupt, truncated) are skipped, each named in a warning on the
    ``serving.capture`` logger and listed in the result's schema metadata under
    ``neuroserve.skipped`` (JSON). Versions written with different layouts are combined, a
    column missing from one version's rows reading as null. A location that does not exist or
    does not answer raises :class:`CaptureError` (one line).
    """
    where = _Location(location)
    _check_root(where)
    since_ns = _since_ns(since)
    top = where.path(*_partition(model, None if version is None else str(version)))
    tables: list[pa.Table] = []
    skipped: list[str] = []
    for info in sorted(_listing(where, top), key=lambda i: i.base_name):
        name = info.base_name
        if name.startswith("."):
            continue  # a file still being written (or left by a crash): not a capture yet
        match = _FILE_NAME.match(name)
        if match is None:
            skipped.append(where.describe(info.path))
            logger.warning("skipped %s: not a capture file name", where.describe(info.path))
            continue
        if since_ns is not None and _parse_stamp(match.group(2)) < since_ns:
            continue
        try:
            table = pq.read_table(info.path, filesystem=where.fs)
        except (OSError, pa.ArrowException) as exc:
            skipped.append(where.describe(info.path))
            logger.warning("skipped %s: unreadable (%s)", where.describe(info.path), _one_line(exc))
            continue
        if SCHEMA_KEY not in (table.schema.metadata or {}):
            skipped.append(where.describe(info.path))
            logger.warning("skipped %s: Parquet, but not a capture", where.describe(info.path))
            continue
        tables.append(table)
    if not tables:
        result = empty_table()
    else:
        layout = tables[-1].schema.metadata[SCHEMA_KEY]
        result = pa.concat_tables(
            [t.replace_schema_metadata(None) for t in tables], promote_options="permissive"
        )
        if since_ns is not None:
            cutoff = pa.scalar(since_ns // 1000, pa.timestamp("us", tz="UTC"))
            result = result.filter(pc.greater_equal(result.column("timestamp"), cutoff))
        result = result.sort_by("timestamp").replace_schema_metadata({SCHEMA_KEY: layout})
    if skipped:
        metadata = dict(result.schema.metadata or {})
        metadata[SKIPPED_KEY] = json.dumps(skipped).encode()
        result = result.replace_schema_metadata(metadata)
    return result


# =============================================================================== the server's
class _Record(NamedTuple):
    """One sampled request, as the request path hands it over: references only."""

    served: ServedVersion
    request_id: str
    headers: Mapping[str, str] | None
    trace: object
    feeds: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]
    items: int
    start_ns: int  # perf_counter_ns
    end_ns: int
    size: int


class _Pending:
    """One model version's rows on their way to a file."""

    __slots__ = ("batches", "bytes", "file", "model", "rows", "since")

    def __init__(self, model: str) -> None:
        self.model = model
        self.batches: list[pa.RecordBatch] = []
        self.rows = 0
        self.bytes = 0
        self.file: _File | None = None
        #: monotonic time of the oldest row not yet in a published file
        self.since: float | None = None


def _trace_id(trace: object, headers: Mapping[str, str] | None) -> str | None:
    """The request's trace id: its span's (tracing on), else the caller's ``traceparent``."""
    context = getattr(trace, "context", None)
    trace_id = getattr(context, "trace_id", 0)
    if trace_id:
        return f"{trace_id:032x}"
    if headers:
        match = _TRACEPARENT.match(headers.get("traceparent", ""))
        if match is not None and match.group(1) != "0" * 32:
            return match.group(1)
    return None


class Capture:
    """The server's inference capture: sampling on the request path, a writer thread off it.

    :meth:`offer` runs on the event loop for every answered request; everything else runs on
    the writer thread between :meth:`start` and :meth:`close`.
    """

    def __init__(self, settings: Settings, metrics: CaptureMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.location = settings.resolved_capture_dir()
        self.where = _Location(self.location)
        self.roll_bytes = int(settings.capture_roll_size_mb * (1 << 20))
        self.roll_s = settings.capture_roll_interval_s
        self.limit = int(settings.capture_buffer_mb * (1 << 20))
        self.group_bytes = max(1, min(ROW_GROUP_BYTES, self.roll_bytes // 2))
        self._rates: dict[str, float] = {}
        self._random = random.Random().random
        self._queue: collections.deque[_Record] = collections.deque()
        # Buffered bytes = accepted - released. Each counter has one writer (the event loop,
        # the writer thread), so neither needs a lock.
        self._accepted = 0
        self._released = 0
        self._layouts: dict[tuple[str, str], CaptureLayout] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._token = _writer_token()
        self._seq = 0
        self._failing: str | None = None  # the outage's first error, while writes fail
        self._lost = 0  # rows lost in the current outage
        self._broken: set[tuple[str, str]] = set()  # versions whose rows could not be converted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neuroserve-capture", daemon=True)
        # perf_counter_ns -> ns since the epoch (re-read every cycle: the clocks drift apart).
        self._epoch_ns = time.time_ns() - time.perf_counter_ns()

    # ----------------------------------------------------------------------- request path
    def offer(  # noqa: PLR0917 - one call site, on every answered request
        self,
        served: ServedVersion,
        request_id: str,
        headers: Mapping[str, str] | None,
        trace: object,
        feeds: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        items: int,
        start_ns: int,
        end_ns: int,
    ) -> None:
        """Sample an answered request; if sampled, buffer references to its arrays, or drop
        and count it when the buffer is full. Never blocks."""
        rate = self._rates.get(served.name)
        if rate is None:
            rate = self._rates[served.name] = self.settings.capture_rate_of(served.name)
        if rate < 1.0 and (rate <= 0.0 or self._random() >= rate):
            return
        size = RECORD_OVERHEAD
        for array in feeds.values():
            size += array.nbytes
        for array in outputs.values():
            size += array.nbytes
        if self._accepted - self._released + size > self.limit:
            self.metrics.drop(served.name, self.metrics.BUFFER_FULL, items)
            return
        self._accepted += size
        self._queue.append(
            _Record(
                served, request_id, headers, trace, feeds, outputs, items, start_ns, end_ns, size
            )
        )

    @property
    def buffered_bytes(self) -> int:
        """Bytes of sampled requests waiting for the writer (what the buffer bound limits)."""
        return self._accepted - self._released

    # ----------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the writer thread; an unwritable location is reported now (and retried)."""
        log_event(
            "capture_started",
            location=self.location,
            rate=",".join(f"{k}={v:g}" for k, v in sorted(self.settings.capture_rate.items())),
            images=self.settings.capture_images,
            roll_size_mb=f"{self.settings.capture_roll_size_mb:g}",
            roll_interval_s=f"{self.roll_s:g}",
            buffer_mb=f"{self.settings.capture_buffer_mb:g}",
        )
        if not self.where.s3:
            try:
                self.where.fs.create_dir(self.where.root, recursive=True)
            except Exception as exc:
                self._failed(exc, "", 0)
        self._thread.start()

    def close(self) -> None:
        """Write what is buffered, close the open files (complete Parquet), stop the thread."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            log_event(
                "capture_close_timeout", logging.WARNING, location=self.location,
                timeout_s=CLOSE_TIMEOUT_S,
            )  # fmt: skip

    # ----------------------------------------------------------------------- writer thread
    def _run(self) -> None:
        self._sweep()
        logged = False
        while True:
            stopping = self._stop.wait(POLL_S)
            try:
                self._cycle(closing=stopping)
            except Exception:  # a bug must not end capture silently, nor spin the log
                if not logged:
                    logged = True
                    logger.exception("capture writer cycle failed (logged once)")
            if stopping:
                return

    def _sweep(self) -> None:
        """Delete temporary files that crashed writers on this host left (local directories
        only: S3 files are never visible before they are complete), so a crash loop cannot
        fill the disk with them."""
        if self.where.s3:
            return
        try:
            infos = self.where.fs.get_file_info(
                pafs.FileSelector(self.where.root, recursive=True, allow_not_found=True)
            )
            removed = 0
            for info in infos:
                if info.type == pafs.FileType.File and _stale(info.base_name, self._token):
                    self.where.fs.delete_file(info.path)
                    removed += 1
        except Exception as exc:  # never worth stopping capture for
            log_event("capture_sweep_failed", logging.WARNING, error=_one_line(exc))
            return
        if removed:
            log_event("capture_stale_removed", location=self.location, files=removed)

    def warn_unknown_models(self, served: Iterable[str]) -> None:
        """Log once for each ``MODEL=RATE`` override that names no model served now (a typo
        there silently captures nothing)."""
        names = set(served)
        for model in sorted(self.settings.capture_rate):
            if model != ALL_MODELS and model not in names:
                log_event(
                    "capture_rate_unknown_model", logging.WARNING, model=model,
                    served=",".join(sorted(names)) or "-",
                )  # fmt: skip

    def _cycle(self, closing: bool) -> None:
        self._epoch_ns = time.time_ns() - time.perf_counter_ns()
        records: list[_Record] = []
        queue = self._queue
        for _ in range(len(queue)):
            records.append(queue.popleft())
        if records:
            self._convert(records)
        now = time.monotonic()
        for key, pending in self._pending.items():
            due = pending.since is not None and now - pending.since >= self.roll_s
            if (
                pending.bytes >= self.group_bytes
                or pending.rows >= ROW_GROUP_ROWS
                or due
                or closing
            ):
                self._flush(key, pending)
            if pending.file is not None and (due or closing):
                self._publish(key, pending)
        self.metrics.buffered.set(self.buffered_bytes)

    def _layout(self, served: ServedVersion) -> CaptureLayout:
        key = (served.name, served.version)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = CaptureLayout.from_signature(
                served.signature, served.version, self.settings.capture_images
            )
        return layout

    def _convert(self, records: list[_Record]) -> None:
        """Turn records into row batches, one vectorized batch per version and item shape."""
        groups: dict[tuple[Any, ...], list[_Record]] = {}
        for record in records:
            shapes = tuple(a.shape[1:] for a in record.feeds.values())
            shapes += tuple(a.shape[1:] for a in record.outputs.values())
            key = (record.served.name, record.served.version, shapes)
            groups.setdefault(key, []).append(record)
        released = 0
        chunks = [
            (key, group[start : start + CONVERT_CHUNK])
            for key, group in groups.items()
            for start in range(0, len(group), CONVERT_CHUNK)
        ]
        for i, ((name, version, _), group) in enumerate(chunks):
            if i:
                time.sleep(0)  # let the event loop have the GIL between chunks
            released += sum(r.size for r in group)
            try:
                batch = self._rows(self._layout(group[0].served), group)
            except Exception as exc:
                if (name, version) not in self._broken:
                    self._broken.add((name, version))
                    log_event(
                        "capture_rows_failed", logging.ERROR, model=name, version=version,
                        error=_one_line(exc),
                    )  # fmt: skip
                    logger.debug("capture rows failed", exc_info=True)
                self.metrics.drop(name, self.metrics.WRITE_FAILED, sum(r.items for r in group))
                continue
            pending = self._pending.get((name, version))
            if pending is None:
                pending = self._pending[name, version] = _Pending(name)
            pending.batches.append(batch)
            pending.rows += batch.num_rows
            pending.bytes += batch.nbytes
            if pending.since is None:
                pending.since = time.monotonic()
        # Only now: the arrays are no longer referenced once their groups are converted.
        del records, groups, chunks
        self._released += released

    def _rows(self, layout: CaptureLayout, group: list[_Record]) -> pa.RecordBatch:
        first = group[0]
        epoch = self._epoch_ns
        meta = _Meta(
            request_ids=[r.request_id or None for r in group],
            trace_ids=[_trace_id(r.trace, r.headers) for r in group],
            start_ns=np.array([r.start_ns for r in group], np.int64) + epoch,
            latency_ms=[(r.end_ns - r.start_ns) / 1e6 for r in group],
            counts=np.array([r.items for r in group], np.int64),
        )

        def joined(pick: str) -> dict[str, np.ndarray]:
            names = getattr(first, pick).keys()
            if len(group) == 1 or not layout.batched:
                if not layout.batched:
                    return {n: np.stack([getattr(r, pick)[n] for r in group]) for n in names}
                return dict(getattr(first, pick))
            return {n: np.concatenate([getattr(r, pick)[n] for r in group]) for n in names}

        # Stacked when the model has no batch axis: axis 0 is then the request.
        return layout._batch(meta, joined("feeds"), joined("outputs"), SERVING, stacked=True)

    def _flush(self, key: tuple[str, str], pending: _Pending) -> None:
        """Write the pending rows into the version's open file (opened if needed) in row
        groups of about ``group_bytes``, rolling the file whenever it reaches the roll size."""
        if not pending.batches:
            return
        table = pa.Table.from_batches(pending.batches)
        pending.batches, pending.rows, pending.bytes = [], 0, 0
        per_row = max(1, table.nbytes // max(table.num_rows, 1))
        step = max(1, min(ROW_GROUP_ROWS, self.group_bytes // per_row))
        offset = 0
        while offset < table.num_rows:
            part = table.slice(offset, step)
            offset += part.num_rows
            first, last = _time_range(part)
            try:
                if pending.file is None:
                    self._seq += 1
                    day = datetime.fromtimestamp(first / 1e9, UTC).date()
                    pending.file = _File(
                        self.where,
                        _partition(key[0], key[1], day),
                        f"{self._token}-{self._seq:06d}",
                        table.schema,
                    )
                pending.file.write(part, first, last)
            except Exception as exc:
                lost = part.num_rows + (table.num_rows - offset)
                if pending.file is not None:
                    lost += pending.file.rows
                    pending.file.discard()
                    pending.file = None
                pending.since = None
                self._failed(exc, key[0], lost)
                return
            if pending.file.size >= self.roll_bytes:
                self._publish(key, pending)
                if pending.file is not None:  # publishing failed: rows counted as lost
                    return
                if offset < table.num_rows:
                    pending.since = time.monotonic()

    def _publish(self, key: tuple[str, str], pending: _Pending) -> None:
        file, pending.file = pending.file, None
        if file is None:
            return
        pending.since = None if not pending.batches else time.monotonic()
        try:
            file.publish()
        except Exception as exc:
            file.discard()
            self._failed(exc, key[0], file.rows)
            return
        self.metrics.rows.labels(key[0]).inc(file.rows)
        if self._failing is not None:
            log_event(
                "capture_write_recovered", location=self.location, rows_lost=self._lost,
                first_error=self._failing,
            )  # fmt: skip
            self._failing, self._lost = None, 0

    def _failed(self, exc: BaseException, model: str, rows: int) -> None:
        """Count rows a failed write lost; log the first failure of an outage only."""
        if rows:
            self.metrics.drop(model, self.metrics.WRITE_FAILED, rows)
        self._lost += rows
        if self._failing is None:
            self._failing = _one_line(exc)
            log_event(
                "capture_write_failed", logging.WARNING, location=self.location,
                error=self._failing, note="dropping captured rows until writes succeed again",
            )  # fmt: skip
