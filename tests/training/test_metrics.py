"""Metrics agree with scikit-learn on known arrays, for every task."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from training import evaluate, primary_metric
from training.errors import DataError
from training.metrics import confusion


def test_regression_matches_sklearn() -> None:
    y = np.array([3.0, -0.5, 2.0, 7.0])
    pred = np.array([[2.5], [0.0], [2.0], [8.0]])
    m = evaluate("regression", y, pred)
    assert m["mse"] == pytest.approx(0.375)
    assert m["rmse"] == pytest.approx(math.sqrt(0.375))
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred[:, 0]))
    assert evaluate("forecast", y, pred) == m


def test_binary_uses_second_column_as_positive_probability() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.1, 0.8, 0.4, 0.3, 0.9])
    out = np.stack([1 - p1, p1], axis=1)
    m = evaluate("binary", y, out)
    pred = (p1 > 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1))


def test_multiclass_macro_averages() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    out = np.eye(3)[[0, 2, 2, 2, 1, 1]]
    m = evaluate("multiclass", y, out)
    pred = out.argmax(1)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert confusion(y, out).tolist() == skm.confusion_matrix(y, pred).tolist()


def test_next_token_perplexity_and_top_k() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 8))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 8, size=50)
    m = evaluate("next-token", y, probs.astype(np.float32))
    expected_ce = -np.log(probs[np.arange(50), y]).mean()
    assert m["perplexity"] == pytest.approx(math.exp(expected_ce), rel=1e-5)
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert m["top5_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y, probs, k=5, labels=np.arange(8))
    )
    uniform = np.full((50, 8), 1 / 8)
    assert evaluate("next-token", y, uniform)["perplexity"] == pytest.approx(8.0)


def test_primary_metric_per_task() -> None:
    assert primary_metric("multiclass") == ("accuracy", True)
    assert primary_metric("binary") == ("accuracy", True)
    assert primary_metric("regression") == ("r2", True)
    assert primary_metric("forecast") == ("rmse", False)
    assert primary_metric("next-token") == ("perplexity", False)
    with pytest.raises(DataError, match="unknown task 'ranking'"):
        primary_metric("ranking")


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(DataError, match="does not match 3 true values"):
        evaluate("regression", np.zeros(3), np.zeros((4, 1)))
    with pytest.raises(DataError, match="outside the output's 2 columns"):
        evaluate("multiclass", np.array([0, 5]), np.full((2, 2), 0.5))
