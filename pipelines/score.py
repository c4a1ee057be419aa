"""Batch scoring: a file in, the same rows with predictions out, through the model's ONNX file.

Inputs, by what the model takes (its ``input_kind`` metadata, else its input shape):

* tables: CSV or Parquet whose columns are the model's ``feature_names`` (any order), plus an
  optional id column kept in the output;
* series: a CSV/Parquet with one value column (plus an optional id column), scored as sliding
  windows of the model's look-back length; each output row is the forecast of the value after
  the window ending on that input row;
* images: an ``.npz`` (array ``x``/``images``, optional ``ids``) or a folder of image files (ids
  are the file names); ``.npz`` also works for tables.

Inputs and outputs may be ``s3://bucket/key`` paths, and an image folder an ``s3://bucket/prefix/``
(``pipelines/objects.py``): inputs are fetched to a temporary folder and read like local files,
outputs are put whole once written.

The whole input is validated against the model before anything is scored: missing, extra or
misnamed columns, wrong image sizes, and bad rows (NaN, non-numeric) are reported with their row
numbers, never dropped. Chunks run as Prefect tasks; with a Dask address they run on that cluster.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import difflib
import json
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pipelines import objects
from pipelines.errors import ScoringInputError
from pipelines.settings import DEFAULT_BATCH_SIZE
from serving.runtime import usable_cores

ID_COLUMNS = ("id", "row_id", "rowid", "key", "uid", "date", "time", "timestamp", "ds")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
INPUT_SUFFIXES = (*TABLE_SUFFIXES, ".npz")
OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")
MAX_CHUNK_BATCHES = 16
MAX_REPORTED_ROWS = 10


@dataclass(frozen=True)
class ModelInfo:
    """What the scorer needs to know about a model, read once from its ONNX file."""

    path: str
    input_name: str
    output_name: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]  # -1 for dynamic axes
    input_kind: str
    task: str
    labels: tuple[str, ...]
    feature_names: tuple[str, ...]
    window: int | None

    @property
    def is_classifier(self) -> bool:
        """Binary and multiclass models output per-class probabilities."""
        return self.task in ("binary", "multiclass")


def model_info(path: str | Path) -> ModelInfo:
    """Read inputs, outputs and contract metadata from an ONNX file."""
    from serving.datatypes import NUMPY_OF

    model = _session(str(path))
    meta = model.metadata
    spec = model.inputs[0]
    shape = tuple(int(d) for d in spec.shape)
    input_kind = meta.get("input_kind") or {2: "table", 3: "series", 4: "image"}.get(len(shape), "")
    window = meta.get("window")
    return ModelInfo(
        path=str(path),
        input_name=spec.name,
        output_name=model.output_names[0],
        dtype=np.dtype(NUMPY_OF.get(spec.datatype, np.float32)).name,
        shape=shape,
        input_kind=input_kind,
        task=meta.get("task", ""),
        labels=tuple(json.loads(meta["labels"])) if meta.get("labels") else (),
        feature_names=tuple(json.loads(meta["feature_names"])) if meta.get("feature_names") else (),
        window=int(window) if window and str(window).isdigit() else None,
    )


# --------------------------------------------------------------------------------------------
# reading and validating


@dataclass
class ScoringInput:
    """Validated model input plus the ids the output keeps."""

    x: np.ndarray
    ids: pd.Series


def _fmt_rows(rows: np.ndarray, offset: int, what: str) -> str:
    shown = ", ".join(str(int(r) + offset) for r in rows[:MAX_REPORTED_ROWS])
    what = what + "s" if len(rows) > 1 else what
    more = f" and {len(rows) - MAX_REPORTED_ROWS} more" if len(rows) > MAX_REPORTED_ROWS else ""
    return f"{what} {shown}{more}"


def _read_frame(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_parquet(path)


def _id_column(frame: pd.DataFrame, features: set[str], id_column: str | None) -> str | None:
    if id_column:
        if id_column not in frame.columns:
            raise ScoringInputError(
                f"id column {id_column!r} is not in the file; columns: {', '.join(frame.columns)}"
            )
        return id_column
    for col in frame.columns:
        if str(col).lower() in ID_COLUMNS and col not in features:
            return str(col)
    return None


def _numeric(frame: pd.DataFrame, columns: list[str], path: Path) -> np.ndarray:
    """Columns as float64; every non-numeric or missing cell is reported with its row number."""
    line_offset = 2 if path.suffix.lower() == ".csv" else 1  # header line / 1-based rows
    where = "line" if line_offset == 2 else "row"
    values = np.empty((len(frame), len(columns)), dtype=np.float64)
    problems = []
    for j, col in enumerate(columns):
        raw = frame[col]
        as_text = raw.astype(str).str.strip() if raw.dtype == object else raw
        num = pd.to_numeric(as_text, errors="coerce")
        bad = np.flatnonzero(~np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan)))
        if len(bad):
            sample = repr(raw.iloc[int(bad[0])])
            problems.append(
                f"column {col!r}: {len(bad)} bad value(s) (NaN, empty or non-numeric, e.g. "
                f"{sample}) at {_fmt_rows(bad, line_offset, where)}"
            )
        values[:, j] = num.to_numpy(dtype=np.float64, na_value=np.nan)
    if problems:
        raise ScoringInputError(
            f"{path.name}: bad rows, nothing scored: " + "; ".join(problems[:5])
        )
    return values


def _read_table(path: Path, info: ModelInfo, id_column: str | None) -> ScoringInput:
    frame = _read_frame(path)
    width = info.shape[1] if len(info.shape) > 1 else -1
    features = list(info.feature_names)
    id_col = _id_column(frame, set(features), id_column)
    present = [str(c) for c in frame.columns if c != id_col]
    if features:
        missing = [f for f in features if f not in present]
        extra = [c for c in present if c not in features]
        if missing or extra:
            hints = []
            for col in extra:
                close = difflib.get_close_matches(col, missing, n=1)
                if close:
                    hints.append(f"{col!r} -> {close[0]!r}?")
            raise ScoringInputError(
                f"{path.name}: columns do not match model features. "
                + (f"Missing: {', '.join(missing)}. " if missing else "")
                + (f"Unexpected: {', '.join(extra)}. " if extra else "")
                + (f"Misnamed? {'; '.join(hints)}. " if hints else "")
                + f"Expected the {len(features)} features {', '.join(features)}"
                + " plus an optional id column ("
                + ", ".join(ID_COLUMNS)
                + " or --id-column)."
            )
        columns = features
    else:
        if width > 0 and len(present) != width:
            raise ScoringInputError(
                f"{path.name}: model takes {width} features, the file has {len(present)} "
                f"value columns ({', '.join(present)})"
            )
        columns = present
    if frame.empty:
        raise ScoringInputError(f"{path.name}: no rows to score")
    x = _numeric(frame, columns, path).astype(info.dtype)
    ids = frame[id_col] if id_col else pd.Series(np.arange(len(frame)), name="row")
    return ScoringInput(x=x, ids=ids.reset_index(drop=True))


def _read_series(path: Path, info: ModelInfo, id_column: str | None) -> ScoringInput:
    frame = _read_frame(path)
    id_col = _id_column(frame, set(), id_column)
    values_cols = [str(c) for c in frame.columns if c != id_col]
    if len(values_cols) != 1:
        raise ScoringInputError(
            f"{path.name}: a series file has one value column (plus an optional id column); "
            f"found {len(values_cols)}: {', '.join(values_cols)}"
        )
    window = info.window or (info.shape[1] if len(info.shape) > 1 and info.shape[1] > 0 else None)
    if not window:
        raise ScoringInputError(f"model {info.path} does not say its window length")
    values = _numeric(frame, values_cols, path)[:, 0]
    if len(values) < window:
        raise ScoringInputError(
            f"{path.name}: {len(values)} values, the model needs at least its window of {window}"
        )
    x = np.lib.stride_tricks.sliding_window_view(values, window)[:, :, None].astype(info.dtype)
    ids_all = frame[id_col] if id_col else pd.Series(np.arange(len(frame)), name="row")
    return ScoringInput(
        x=np.ascontiguousarray(x), ids=ids_all.iloc[window - 1 :].reset_index(drop=True)
    )


def _images_to_model(x: np.ndarray, info: ModelInfo, source: str) -> np.ndarray:
    """Accept NCHW, NHW (one channel) or NHWC; anything else is an error naming both shapes."""
    want = info.shape[1:]
    if len(want) != 3:
        raise ScoringInputError(f"model {info.path} takes {list(info.shape)}, not images")
    c, h, w = want
    if x.ndim == 3 and c in (1, -1):
        x = x[:, None, :, :]
    elif x.ndim == 4 and x.shape[1] != c and x.shape[3] == c:
        x = np.transpose(x, (0, 3, 1, 2))
    if x.ndim != 4 or any(d not in (-1, got) for d, got in zip(want, x.shape[1:], strict=True)):
        raise ScoringInputError(
            f"{source}: images of shape {list(x.shape[1:])}; the model expects "
            f"{c} channel(s) x {h} x {w} (array [N, {c}, {h}, {w}], [N, {h}, {w}] or "
            f"[N, {h}, {w}, {c}])"
        )
    return x


def _check_finite(x: np.ndarray, source: str, ids: pd.Series) -> None:
    if not np.issubdtype(x.dtype, np.floating):
        return
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
        names = ", ".join(str(ids.iloc[int(i)]) for i in bad[:MAX_REPORTED_ROWS])
        raise ScoringInputError(
            f"{source}: {len(bad)} row(s) hold NaN or infinite values (rows {names}); "
            "nothing scored"
        )


def _stored_member(path: Path, key: str) -> np.ndarray | None:
    """The array ``key`` of an uncompressed ``.npz`` (``np.savez``) mapped from the file, no copy.

    ``np.load`` reads a member into a buffer and copies it out: for 50,000 MNIST images that is
    157 MB and ~70 ms (up to 0.3 s when the pages are cold) before anything is scored, and the
    file's size again in memory. A member stored without compression is a plain ``.npy`` inside
    the zip, so it can be memory-mapped in place. Returns None for compressed members, object
    arrays or anything unusual; the caller then loads it the ordinary way.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            member = archive.getinfo(f"{key}.npy")
        if member.compress_type != zipfile.ZIP_STORED:
            return None
        with path.open("rb") as fh:
            fh.seek(member.header_offset)
            local = fh.read(30)  # the local file header; name and extra field lengths at 26
            if local[:4] != b"PK\x03\x04":
                return None
            skip = int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            fh.seek(member.header_offset + 30 + skip)
            version = np.lib.format.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                return None
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
        if fortran or dtype.hasobject or not shape:
            return None
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None


def _read_npz(path: Path, info: ModelInfo) -> ScoringInput:
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.keys())
        key = next((k for k in ("x", "X", "images", "inputs", "input") if k in keys), None)
        if key is None:
            arrays = [k for k in keys if k not in ("ids", "y")]
            if len(arrays) != 1:
                raise ScoringInputError(
                    f"{path.name}: expected an array named 'x' (and optionally 'ids'); "
                    f"found {', '.join(keys)}"
                )
            key = arrays[0]
        x = _stored_member(path, key)
        if x is None:
            x = np.asarray(npz[key])
        ids = pd.Series(
            npz["ids"] if "ids" in keys else np.arange(len(x)),
            name="id" if "ids" in keys else "row",
        )
    if len(ids) != len(x):
        raise ScoringInputError(f"{path.name}: {len(ids)} ids for {len(x)} rows")
    if not np.issubdtype(x.dtype, np.number):
        raise ScoringInputError(f"{path.name}: array {key!r} is {x.dtype}, not numeric")
    if info.input_kind == "image":
        x = _images_to_model(x, info, path.name)
    elif x.ndim != len(info.shape) or any(
        d not in (-1, got) for d, got in zip(info.shape[1:], x.shape[1:], strict=True)
    ):
        raise ScoringInputError(
            f"{path.name}: array of shape {list(x.shape)}; the model expects {list(info.shape)}"
        )
    _check_finite(x, path.name, ids)
    return ScoringInput(x=np.ascontiguousarray(x.astype(info.dtype, copy=False)), ids=ids)


def _read_image_folder(path: Path, info: ModelInfo, source: str) -> ScoringInput:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ScoringInputError(
            f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder"
        )
    if info.input_kind != "image":
        raise ScoringInputError(f"model takes {info.input_kind} input, not images")
    c, h, w = info.shape[1:]
    mode = "L" if c == 1 else "RGB"
    arrays = []
    wrong = []
    for file in files:
        with Image.open(file) as img:
            if (w, h) != (-1, -1) and img.size != (w, h):
                wrong.append(f"{file.name} is {img.size[0]}x{img.size[1]}")
                continue
            arr = np.asarray(img.convert(mode), dtype=np.float32)
        arrays.append(arr[None, :, :] if arr.ndim == 2 else np.transpose(arr, (2, 0, 1)))
    if wrong:
        raise ScoringInputError(
            f"{source}: {len(wrong)} image(s) are not {w}x{h} (width x height) as the model "
            f"expects: {', '.join(wrong[:MAX_REPORTED_ROWS])}"
        )
    return ScoringInput(
        x=np.stack(arrays).astype(info.dtype), ids=pd.Series([f.name for f in files], name="file")
    )


def _unsupported_input(name: str) -> ScoringInputError:
    return ScoringInputError(
        f"{name}: unsupported input; expected .csv, .parquet, .npz or a folder of images"
    )


def read_input(
    path: str | Path, info: ModelInfo, id_column: str | None = None, source: str | None = None
) -> ScoringInput:
    """Read and validate the whole input against the model; raise ScoringInputError if unfit.

    ``source`` is the input as the user named it (an ``s3://`` prefix fetched to ``path``).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ScoringInputError(f"input {p} does not exist")
    if p.is_dir():
        return _read_image_folder(p, info, source or str(p))
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _read_npz(p, info)
    if suffix in TABLE_SUFFIXES:
        if info.input_kind == "series":
            return _read_series(p, info, id_column)
        if info.input_kind == "table":
            return _read_table(p, info, id_column)
        raise ScoringInputError(
            f"{p.name}: a table file cannot feed a model that takes {info.input_kind} input "
            "(images: .npz or a folder of image files)"
        )
    raise _unsupported_input(p.name)


def _check_scheme(path: str, what: str) -> None:
    """A ``scheme://`` path other than ``s3://`` is refused by name (not "does not exist")."""
    scheme, sep, _ = str(path).partition("://")
    if sep and scheme.isalnum() and not objects.is_uri(path):
        raise ScoringInputError(
            f"{what} {path}: {scheme}:// paths are not supported; expected a local path or "
            "s3://BUCKET/KEY"
        )


@contextlib.contextmanager
def staged_input(path: str) -> Iterator[tuple[Path, str]]:
    """(local path to read, the input as the user named it), for as long as scoring needs it.

    A local path is itself. An ``s3://`` object is fetched to a temporary folder (removed on
    exit), and an ``s3://`` prefix has its image objects fetched into one; a missing bucket,
    key or prefix, or an endpoint that does not answer, is an error before anything is read.
    """
    _check_scheme(path, "input")
    if not objects.is_uri(path):
        yield Path(path).expanduser(), str(path)
        return
    uri = objects.ObjectUri.parse(path)
    store = objects.ObjectStore()
    kind = store.kind(uri)
    if kind == "object" and PurePosixPath(uri.key).suffix.lower() not in INPUT_SUFFIXES:
        raise _unsupported_input(str(uri))
    with tempfile.TemporaryDirectory(prefix="neuroserve-score-") as tmp:
        if kind == "object":
            yield store.download(uri, Path(tmp)), str(uri)
        else:
            folder = Path(tmp) / "images"
            store.download_prefix(uri, folder, IMAGE_SUFFIXES)
            yield folder, str(uri)


def output_target(path: str) -> objects.ObjectUri | None:
    """Refuse an output name the scorer could not write, before anything is fetched: a suffix
    other than .csv/.parquet, or an ``s3://`` path without a bucket or a key. Returns the
    ``s3://`` target (None for a local file)."""
    _check_scheme(path, "output")
    uri = objects.ObjectUri.parse(path, "output") if objects.is_uri(path) else None
    name = uri.name if uri is not None else Path(path).name
    if (uri is not None and uri.prefix) or Path(name).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ScoringInputError(f"output {path}: expected a .csv or .parquet file name")
    return uri


def format_output(inp: ScoringInput, output: np.ndarray, info: ModelInfo) -> pd.DataFrame:
    """Ids, then predictions: label + per-class probabilities for classifiers, values otherwise."""
    frame = pd.DataFrame({inp.ids.name or "row": inp.ids.to_numpy()})
    if info.is_classifier:
        labels = list(info.labels) or [str(i) for i in range(output.shape[1])]
        frame["label"] = np.asarray(labels, dtype=object)[output.argmax(axis=1)]
        for j, label in enumerate(labels):
            frame[f"prob_{label}"] = output[:, j]
    elif info.task == "forecast":
        frame["forecast_next"] = output[:, 0]
    elif output.shape[1] == 1:
        frame["prediction"] = output[:, 0]
    else:
        for j in range(output.shape[1]):
            frame[f"output_{j}"] = output[:, j]
    return frame


def write_output(frame: pd.DataFrame, path: str | Path) -> str:
    """CSV or Parquet by suffix; returns where it went.

    A local file is written to a temporary name then renamed (no half files); an ``s3://``
    object is written to a local temporary file and then put whole.
    """
    uri = output_target(str(path))
    if uri is not None:
        with tempfile.TemporaryDirectory(prefix="neuroserve-score-") as tmp:
            local = _write_local(frame, Path(tmp) / uri.name)
            objects.ObjectStore().upload(local, uri)
        return str(uri)
    return str(_write_local(frame, path))


def _write_local(frame: pd.DataFrame, path: str | Path) -> Path:
    """CSV or Parquet by suffix (checked by :func:`output_target`), renamed into place."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if suffix == ".csv":
        # Arrow's C++ writer: ~7x faster than pandas for float columns, same values.
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="needed"))
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, tmp)
    tmp.replace(p)
    return p


# --------------------------------------------------------------------------------------------
# scoring

_SESSIONS: dict[tuple[str, float, int], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(path: str, threads: int = 1) -> Any:
    """One ONNX Runtime session per file and thread count per process (Dask workers keep theirs).

    Chunks run side by side, so each session gets one intra-op thread by default: on this
    2-core machine two single-threaded calls score MNIST ~1.25x faster than one call spread
    over both cores. A lone chunk gets a session with every core instead.
    """
    from serving.runtime import OnnxModel

    key = (path, Path(path).stat().st_mtime, threads)
    with _SESSIONS_LOCK:
        model = _SESSIONS.get(key)
        if model is None:
            model = OnnxModel(path, intra_op_threads=threads)
            _SESSIONS[key] = model
        return model


def plan_chunks(
    rows: int, batch_size: int, chunk_size: int | None, workers: int
) -> list[tuple[int, int]]:
    """Row ranges, one Prefect task each.

    Without an explicit ``chunk_size``, chunks hold at most ``MAX_CHUNK_BATCHES`` batches, there
    are no more of them than batches, their count is a multiple of ``workers`` and their sizes
    are even, so every worker stays busy to the end. Large files still split finely enough to
    spread over a Dask cluster and move the progress bar.
    """
    if chunk_size is None:
        workers = max(1, workers)
        batches = -(-rows // batch_size)
        chunks = -(-batches // MAX_CHUNK_BATCHES)
        chunks = min(batches, -(-chunks // workers) * workers)
        chunk_size = -(-rows // max(1, chunks))
    return [(a, min(a + chunk_size, rows)) for a in range(0, rows, chunk_size)]


@task(name="score-chunk", cache_policy=NO_CACHE, retries=1)
def score_chunk(
    model_path: str, x: np.ndarray, index: int, batch_size: int, threads: int = 1
) -> tuple[int, np.ndarray]:
    """Run one chunk through the model, ``batch_size`` rows per call; (chunk index, output)."""
    model = _session(model_path, threads)
    name, out = model.input_names[0], model.output_names[0]
    parts = [
        model.run({name: x[a : a + batch_size]}, [out])[out] for a in range(0, len(x), batch_size)
    ]
    return index, parts[0] if len(parts) == 1 else np.concatenate(parts)


def _chunk_results(  # noqa: PLR0917 - private, called once
    model_path: str,
    x: np.ndarray,
    bounds: list[tuple[int, int]],
    batch_size: int,
    threads: int,
    as_tasks: bool,
) -> Iterator[tuple[int, np.ndarray]]:
    """(chunk index, output) as chunks finish, from Prefect tasks or from plain threads."""
    if as_tasks:
        from prefect.futures import as_completed

        futures = [
            score_chunk.submit(model_path, x[a:b], k, batch_size, threads)
            for k, (a, b) in enumerate(bounds)
        ]
        for fut in as_completed(futures):
            yield fut.result()
        return
    with ThreadPoolExecutor(max_workers=len(bounds), thread_name_prefix="score") as pool:
        jobs = [
            pool.submit(score_chunk.fn, model_path, x[a:b], k, batch_size, threads)
            for k, (a, b) in enumerate(bounds)
        ]
        for job in concurrent.futures.as_completed(jobs):
            yield job.result()


@dataclass
class ScoreOutcome:
    """What was scored and how fast (``seconds``: the flow's own work, read to write)."""

    model: str
    rows: int
    chunks: int
    as_tasks: bool  # chunks ran as Prefect tasks (else on the flow's own threads)
    batch_size: int
    output: str
    seconds: float
    rows_per_second: float


def _progress(show: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show,
        transient=False,
    )


#: One chunk per core at a time: more would only share the cores (and multiply sessions).
_LOCAL_RUNNER: Any = ThreadPoolTaskRunner(max_workers=usable_cores())


@flow(name="score", log_prints=True, task_runner=_LOCAL_RUNNER)
def score_flow(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int | None = None,
    workers: int | None = None,
    id_column: str | None = None,
    model_label: str = "",
    show_progress: bool = True,
) -> ScoreOutcome:
    """Validate the whole input, score it in chunks (Prefect tasks), write ids + predictions.

    The flow's task runner decides where chunks run: local threads (one per core), or the Dask
    cluster when :func:`run_score` sets a ``DaskTaskRunner`` and passes the cluster's thread
    count as ``workers``.
    """
    if batch_size < 1:
        raise ScoringInputError(f"--batch-size must be at least 1, got {batch_size}")
    if chunk_size is not None and chunk_size < 1:
        raise ScoringInputError(f"--chunk-size must be at least 1, got {chunk_size}")
    start = time.perf_counter()
    info = model_info(model_path)
    target = output_target(output_path)
    # A fetched s3:// input stays on disk until the output is written: .npz inputs are mapped.
    with staged_input(input_path) as (local_input, source):
        if target is not None:  # a missing bucket found now, not after scoring
            objects.ObjectStore().require_bucket(target)
        inp = read_input(local_input, info, id_column, source)
        n = len(inp.x)
        local = workers is None
        bounds = plan_chunks(n, batch_size, chunk_size, workers or usable_cores())
        # Local chunks share the cores; a lone chunk gets them all. Dask workers run one per
        # thread.
        threads = max(1, usable_cores() // len(bounds)) if local else 1
        # One round of chunks (a small file) runs on the flow's own threads: Prefect's per-task
        # bookkeeping (~7 ms each plus its server's CPU on these same cores) would cost more
        # than scoring 5,000 images. Files needing several rounds, and every Dask run, use
        # tasks.
        as_tasks = not local or len(bounds) > usable_cores()
        outputs: dict[int, np.ndarray] = {}
        with _progress(show_progress) as progress:
            bar = progress.add_task(f"scoring {model_label or Path(model_path).name}", total=n)
            for k, out in _chunk_results(model_path, inp.x, bounds, batch_size, threads, as_tasks):
                outputs[k] = np.asarray(out)
                a, b = bounds[k]
                progress.update(bar, advance=b - a)
        output = np.concatenate([outputs[k] for k in range(len(bounds))])
        written = write_output(format_output(inp, output, info), output_path)
    seconds = time.perf_counter() - start
    return ScoreOutcome(
        model=model_label or model_path,
        rows=n,
        chunks=len(bounds),
        as_tasks=as_tasks,
        batch_size=batch_size,
        output=written,
        seconds=seconds,
        rows_per_second=n / seconds if seconds > 0 else float("inf"),
    )


def check_dask(address: str, timeout: float = 10.0) -> int:
    """Connect to the Dask scheduler once (a wrong address is one clear error up front).

    Returns the cluster's worker thread count, which sizes the chunks.
    """
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ScoringInputError(
            f"Dask scheduler at {address!r} is unreachable ({exc}); expected the address of a "
            "running scheduler, e.g. tcp://127.0.0.1:8786"
        ) from None
    try:
        return max(1, sum(client.nthreads().values()))
    finally:
        client.close()


def run_score(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int | None = None,
    dask_address: str | None = None,
    id_column: str | None = None,
    model_label: str = "",
    show_progress: bool = True,
) -> ScoreOutcome:
    """Run :func:`score_flow` locally, or with its chunks on the Dask cluster at an address."""
    from pipelines.settings import flow_settings

    runner_flow = score_flow
    workers = None
    if dask_address:
        from prefect_dask import DaskTaskRunner

        workers = check_dask(dask_address)
        runner_flow = score_flow.with_options(
            task_runner=DaskTaskRunner(address=dask_address)  # type: ignore[arg-type]
        )
    with flow_settings():
        return runner_flow(
            model_path,
            input_path,
            output_path,
            batch_size=batch_size,
            chunk_size=chunk_size,
            workers=workers,
            id_column=id_column,
            model_label=model_label,
            show_progress=show_progress,
        )
