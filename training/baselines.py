"""Classical baselines on the same split, scored by the same ``evaluate``.

A neural model earns its place only by beating these, so the quality gate in pipelines/
compares against them: linear / logistic regression for tables, logistic regression on pixels
for images, naive last-value and seasonal-naive for series, an interpolated bigram for text.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.data import DataSplit
from training.metrics import evaluate

__all__ = ["BaselineResult", "run_baselines"]


@dataclass
class BaselineResult:
    """The baseline the model is judged against, plus every baseline that was computed."""

    name: str
    metrics: dict[str, float]
    all: dict[str, dict[str, float]]


def run_baselines(data: DataSplit) -> BaselineResult:
    """Fit (on train, tuned on validation where there is anything to tune) and score on test."""
    if data.input_kind == "table":
        name, output = _table(data)
        return _single(data, name, output)
    if data.input_kind == "image":
        return _single(data, "logistic-regression", _pixels(data))
    if data.input_kind == "series":
        scores = {"naive-last-value": evaluate(data.task, data.y_test, data.x_test[:, -1, :])}
        if data.period is not None and data.window is not None and data.period <= data.window:
            seasonal = data.x_test[:, -data.period, :]
            scores["seasonal-naive"] = evaluate(data.task, data.y_test, seasonal)
        return BaselineResult("naive-last-value", scores["naive-last-value"], scores)
    return _single(data, "bigram", _bigram(data))


def _single(data: DataSplit, name: str, output: np.ndarray) -> BaselineResult:
    """Wrap one baseline's test output as a result."""
    metrics = evaluate(data.task, data.y_test, output)
    return BaselineResult(name, metrics, {name: metrics})


def _table(data: DataSplit) -> tuple[str, np.ndarray]:
    """Standardised linear regression or logistic regression."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if data.task == "regression":
        reg = make_pipeline(StandardScaler(), LinearRegression())
        reg.fit(data.x_train, data.y_train)
        return "linear-regression", reg.predict(data.x_test).reshape(-1, 1)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return "logistic-regression", _proba(clf, data, data.x_train, data.x_test)


def _pixels(data: DataSplit) -> np.ndarray:
    """Logistic regression on flattened pixels scaled to 0..1."""
    from sklearn.linear_model import LogisticRegression

    scale = 1.0 / (data.pixel_max or 255.0)
    x_train = data.x_train.reshape(len(data.x_train), -1) * scale
    x_test = data.x_test.reshape(len(data.x_test), -1) * scale
    return _proba(LogisticRegression(max_iter=300), data, x_train, x_test)


def _proba(clf: Any, data: DataSplit, x_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Fit a classifier and return test probabilities with one column per label.

    A class absent from a tiny training split gets probability 0, so the columns still line up
    with ``data.labels``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the baseline is what it is
        clf.fit(x_train, data.y_train)
        proba = clf.predict_proba(x_test)
    out = np.zeros((len(x_test), len(data.labels)), dtype=np.float64)
    out[:, clf.classes_] = proba
    return out


def _bigram(data: DataSplit) -> np.ndarray:
    """P(w | prev) = λ·bigram + (1-λ)·unigram (add-one), λ picked on validation perplexity."""
    v = len(data.vocabulary)
    stream = np.concatenate([data.x_train[0], data.y_train])  # the training token stream
    unigram = np.bincount(stream, minlength=v).astype(np.float64) + 1.0
    unigram /= unigram.sum()
    counts = np.zeros((v, v), dtype=np.float64)
    np.add.at(counts, (stream[:-1], stream[1:]), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    bigram = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    seen = totals[:, 0] > 0

    def probs(prev: np.ndarray, lam: float) -> np.ndarray:
        lam_row = np.where(seen[prev], lam, 0.0)[:, None]
        return lam_row * bigram[prev] + (1.0 - lam_row) * unigram[None, :]

    prev_val, y_val = data.x_val[:, -1], data.y_val

    def cross_entropy(lam: float) -> float:
        lam_row = np.where(seen[prev_val], lam, 0.0)
        p = lam_row * bigram[prev_val, y_val] + (1.0 - lam_row) * unigram[y_val]
        return float(-np.log(p).mean())

    best = min((0.3, 0.5, 0.7, 0.8, 0.9, 0.95), key=cross_entropy)
    return probs(data.x_test[:, -1], best).astype(np.float32)
