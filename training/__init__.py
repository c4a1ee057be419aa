"""neuroserve training: data sets, FNN/CNN/RNN families, the loop, metrics, ONNX export.

The public surface is re-exported here; pipelines/ imports only these names::

    from training import TrainSpec, train, export_onnx

``training`` never imports Prefect, MLflow or gRPC; those plug in through ``Callback``.

The spec, its choices and the errors are imported eagerly (they need nothing heavy); everything
that needs torch, pandas or scikit-learn is imported on first use (PEP 562), so that
``import training.spec`` stays cheap and ``neuroserve --help`` can derive its help texts from the
spec's own tuples without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from training.catalog import BUILTIN_DATASETS
from training.errors import DataError, DeviceError, ExportError, SpecError, TrainingError
from training.spec import TrainSpec

if TYPE_CHECKING:
    from training.callbacks import Callback, EarlyStopping, RichProgress
    from training.data import DataSplit, load_dataset
    from training.export import ExportReport, export_onnx
    from training.metrics import evaluate, primary_metric
    from training.run import TrainResult, predict, train

#: Public names that live in a heavy module, and that module.
_LAZY: dict[str, str] = {
    "Callback": "training.callbacks",
    "EarlyStopping": "training.callbacks",
    "RichProgress": "training.callbacks",
    "DataSplit": "training.data",
    "load_dataset": "training.data",
    "ExportReport": "training.export",
    "export_onnx": "training.export",
    "evaluate": "training.metrics",
    "primary_metric": "training.metrics",
    "TrainResult": "training.run",
    "predict": "training.run",
    "train": "training.run",
}

__all__ = [
    "BUILTIN_DATASETS",
    "Callback",
    "DataError",
    "DataSplit",
    "DeviceError",
    "EarlyStopping",
    "ExportError",
    "ExportReport",
    "RichProgress",
    "SpecError",
    "TrainResult",
    "TrainSpec",
    "TrainingError",
    "evaluate",
    "export_onnx",
    "load_dataset",
    "predict",
    "primary_metric",
    "train",
]


def __getattr__(name: str) -> Any:
    """Import a heavy public name (or a submodule such as ``training.data``) on first use."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
