"""Batch scoring: a file in, the same rows with predictions out, through the model's ONNX file.

Inputs, by what the model takes (its ``input_kind`` metadata, else its input shape):

* tables: CSV or Parquet whose columns are the model's ``feature_names`` (any order), plus an
  optional id column kept in the output;
* series: a CSV/Parquet with one value column (plus an optional id column), scored as sliding
  windows of the model's look-back length; each output row is the forecast of the value after
  the window ending on that input row;
* images: an ``.npz`` (array ``x``/``images``, optional ``ids``) or a folder of image files (ids
  are the file names); ``.npz`` also works for tables.

The whole input is validated against the model before anything is scored: missing, extra or
misnamed columns, wrong image sizes, and bad rows (NaN, non-numeric) are reported with their row
numbers, never dropped. Chunks run as Prefect tasks; with a Dask address they run on that cluster.
"""

from __future__ import annotations

import difflib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines.errors import ScoringInputError

ID_COLUMNS = ("id", "row_id", "rowid", "key", "uid", "date", "time", "timestamp", "ds")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")
DEFAULT_CHUNK_SIZE = 1024
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


def _read_image_folder(path: Path, info: ModelInfo) -> ScoringInput:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ScoringInputError(
            f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder"
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
            f"{path}: {len(wrong)} image(s) are not {w}x{h} (width x height) as the model "
            f"expects: {', '.join(wrong[:MAX_REPORTED_ROWS])}"
        )
    return ScoringInput(
        x=np.stack(arrays).astype(info.dtype), ids=pd.Series([f.name for f in files], name="file")
    )


def read_input(path: str | Path, info: ModelInfo, id_column: str | None = None) -> ScoringInput:
    """Read and validate the whole input against the model; raise ScoringInputError if unfit."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ScoringInputError(f"input {p} does not exist")
    if p.is_dir():
        return _read_image_folder(p, info)
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
    raise ScoringInputError(
        f"{p.name}: unsupported input; expected .csv, .parquet, .npz or a folder of images"
    )


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


def write_output(frame: pd.DataFrame, path: str | Path) -> Path:
    """CSV or Parquet by suffix; written to a temporary name then renamed (no half files)."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ScoringInputError(f"output {p.name}: expected a .csv or .parquet file name")
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

_SESSIONS: dict[tuple[str, float], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(path: str) -> Any:
    """One ONNX Runtime session per file per process (Dask workers keep theirs between chunks)."""
    from serving.runtime import OnnxModel

    key = (path, Path(path).stat().st_mtime)
    with _SESSIONS_LOCK:
        model = _SESSIONS.get(key)
        if model is None:
            model = OnnxModel(path)
            _SESSIONS[key] = model
        return model


@task(name="score-chunk", cache_policy=NO_CACHE, retries=1)
def score_chunk(model_path: str, x: np.ndarray, index: int) -> tuple[int, np.ndarray]:
    """Run one chunk through the model; returns (chunk index, output)."""
    model = _session(model_path)
    name = model.input_names[0]
    return index, model.run({name: x})[model.output_names[0]]


@dataclass
class ScoreOutcome:
    """What was scored and how fast."""

    model: str
    rows: int
    chunks: int
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


@flow(name="score", log_prints=True)
def score_flow(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    id_column: str | None = None,
    model_label: str = "",
    show_progress: bool = True,
) -> ScoreOutcome:
    """Validate the whole input, score it in chunks (Prefect tasks), write ids + predictions.

    The flow's task runner decides where chunks run: threads here, or the Dask cluster when the
    caller sets ``task_runner=DaskTaskRunner(address=...)`` with ``with_options``.
    """
    from prefect.futures import as_completed

    if chunk_size < 1:
        raise ScoringInputError(f"--chunk-size must be at least 1, got {chunk_size}")
    start = time.perf_counter()
    info = model_info(model_path)
    inp = read_input(input_path, info, id_column)
    n = len(inp.x)
    bounds = [(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
    outputs: dict[int, np.ndarray] = {}
    with _progress(show_progress) as progress:
        bar = progress.add_task(f"scoring {model_label or Path(model_path).name}", total=n)
        futures = [score_chunk.submit(model_path, inp.x[a:b], k) for k, (a, b) in enumerate(bounds)]
        for fut in as_completed(futures):
            k, out = fut.result()
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
        output=str(written),
        seconds=seconds,
        rows_per_second=n / seconds if seconds > 0 else float("inf"),
    )


def check_dask(address: str, timeout: float = 10.0) -> None:
    """Connect to the Dask scheduler once, so a wrong address is one clear error up front."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ScoringInputError(
            f"Dask scheduler at {address!r} is unreachable ({exc}); expected the address of a "
            "running scheduler, e.g. tcp://127.0.0.1:8786"
        ) from None
    client.close()


def run_score(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dask_address: str | None = None,
    id_column: str | None = None,
    model_label: str = "",
    show_progress: bool = True,
) -> ScoreOutcome:
    """Run :func:`score_flow` locally, or with its chunks on the Dask cluster at an address."""
    from pipelines.settings import embedded_flow_settings

    runner_flow = score_flow
    if dask_address:
        from prefect_dask import DaskTaskRunner

        check_dask(dask_address)
        runner_flow = score_flow.with_options(
            task_runner=DaskTaskRunner(address=dask_address)  # type: ignore[arg-type]
        )
    with embedded_flow_settings():
        return runner_flow(
            model_path,
            input_path,
            output_path,
            chunk_size=chunk_size,
            id_column=id_column,
            model_label=model_label,
            show_progress=show_progress,
        )
