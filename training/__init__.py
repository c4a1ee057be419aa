"""neuroserve training: data sets, FNN/CNN/RNN families, the loop, metrics, ONNX export.

The public surface is re-exported here; pipelines/ imports only these names::

    from training import TrainSpec, train, export_onnx

``training`` never imports Prefect, MLflow or gRPC; those plug in through ``Callback``.
"""

from training.callbacks import Callback, EarlyStopping, RichProgress
from training.data import BUILTIN_DATASETS, DataSplit, load_dataset
from training.errors import DataError, ExportError, SpecError, TrainingError
from training.export import ExportReport, export_onnx
from training.metrics import evaluate, primary_metric
from training.run import TrainResult, predict, train
from training.spec import TrainSpec

__all__ = [
    "BUILTIN_DATASETS",
    "Callback",
    "DataError",
    "DataSplit",
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
