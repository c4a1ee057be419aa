"""Test and validation metrics, computed by scikit-learn from contract-shaped outputs.

``evaluate`` takes what the exported graph returns (probabilities ``[n, k]`` or values
``[n, 1]``), so the same function scores a torch model, an ONNX Runtime session, or a champion's
file re-run on a challenger's test split, and the numbers are comparable.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn import metrics as skm

from training.catalog import TASKS
from training.errors import DataError

__all__ = ["TOP_K", "confusion", "evaluate", "primary_metric"]

TOP_K = 5
_PRIMARY: dict[str, tuple[str, bool]] = {
    "regression": ("r2", True),
    "forecast": ("rmse", False),
    "binary": ("accuracy", True),
    "multiclass": ("accuracy", True),
    "next-token": ("perplexity", False),
}


def primary_metric(task: str) -> tuple[str, bool]:
    """The metric that ranks models of this task, and whether higher is better."""
    _check_task(task)
    return _PRIMARY[task]


def evaluate(task: str, y_true: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """All metrics of a task as plain floats.

    ``y_true``: 1-D class / token indices (classifiers, next-token) or values (regression,
    forecast). ``output``: ``[n, k]`` probabilities or ``[n, 1]`` values, as in docs/contracts.md.
    """
    _check_task(task)
    y = np.asarray(y_true).reshape(-1)
    out = np.asarray(output, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2 or out.shape[0] != y.shape[0]:
        raise DataError(
            f"output of shape {out.shape} does not match {y.shape[0]} true values; expected [n, k]"
        )
    if task in ("regression", "forecast"):
        return _regression(y.astype(np.float64), out[:, 0])
    labels = np.arange(out.shape[1])
    if y.size and (y.min() < 0 or y.max() >= out.shape[1]):
        raise DataError(
            f"true class index {int(y.max())} is outside the output's {out.shape[1]} columns"
        )
    y = y.astype(np.int64)
    if task == "next-token":
        return _next_token(y, out, labels)
    pred = out.argmax(axis=1)
    average = "binary" if task == "binary" else "macro"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision on an empty class -> 0, not noise
        result = {
            "accuracy": float(skm.accuracy_score(y, pred)),
            "precision": float(
                skm.precision_score(y, pred, labels=labels, average=average, zero_division=0)
            ),
            "recall": float(
                skm.recall_score(y, pred, labels=labels, average=average, zero_division=0)
            ),
            "f1": float(skm.f1_score(y, pred, labels=labels, average=average, zero_division=0)),
        }
    if task == "binary":
        result["roc_auc"] = (
            float(skm.roc_auc_score(y, out[:, 1])) if len(np.unique(y)) == 2 else math.nan
        )
    return result


def confusion(y_true: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Confusion matrix (rows: true class, columns: predicted) of a classifier's probabilities."""
    out = np.asarray(output)
    return skm.confusion_matrix(
        np.asarray(y_true).reshape(-1), out.argmax(axis=1), labels=np.arange(out.shape[1])
    )


def _regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE and R² (R² is NaN for fewer than two samples, as sklearn warns)."""
    mse = float(skm.mean_squared_error(y, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r2 = float(skm.r2_score(y, pred)) if len(y) >= 2 else math.nan
    return {
        "mse": mse,
        "rmse": float(skm.root_mean_squared_error(y, pred)),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": r2,
    }


def _next_token(y: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Perplexity (exp of mean cross-entropy), top-1 and top-k accuracy."""
    # Renormalise rows: float32 softmax sums drift by ~1e-7 and sklearn checks the sums.
    p = np.clip(probs, 1e-12, None)
    p /= p.sum(axis=1, keepdims=True)
    cross_entropy = float(skm.log_loss(y, p, labels=labels))
    k = min(TOP_K, len(labels))
    return {
        "perplexity": float(math.exp(cross_entropy)),
        "cross_entropy": cross_entropy,
        "accuracy": float(skm.accuracy_score(y, p.argmax(axis=1))),
        f"top{TOP_K}_accuracy": float(skm.top_k_accuracy_score(y, p, k=k, labels=labels)),
    }


def _check_task(task: str) -> None:
    """Reject a task name the contract does not define."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}")
