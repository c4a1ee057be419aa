"""The figures ops look at in a run: learning curves, confusion matrix, forecast vs truth, and
sample next-word completions for text models.

Figures are built with matplotlib's object API (``Figure``), never pyplot: no display, no global
figure registry to leak into or to share between a flow's threads, and no backend import at start
(matplotlib's advice for servers). Each function returns a Figure (or text) and never touches
MLflow; the flow logs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

CLASSIFIER_TASKS = ("binary", "multiclass")


def learning_curves(history: Sequence[dict[str, Any]], title: str) -> Figure:
    """Train/val loss (left) and every validation metric (right) per epoch."""
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_metric = fig.subplots(1, 2)
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    for key in ("train_loss", "val_loss"):
        if history and key in history[0]:
            ax_loss.plot(epochs, [float(h[key]) for h in history], marker="o", label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_loss.legend()
    metric_keys = sorted(
        {k for h in history for k in h if k.startswith("val_") and k != "val_loss"}
    )
    for key in metric_keys:
        ax_metric.plot(epochs, [float(h.get(key, np.nan)) for h in history], marker="o", label=key)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_title("validation metrics")
    if metric_keys:
        ax_metric.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(
    y_true: np.ndarray, output: np.ndarray, labels: Sequence[str], title: str
) -> Figure:
    """Counts of true class (rows) against predicted class (columns) on the test split."""
    k = output.shape[1]
    pred = np.asarray(output).argmax(axis=1)
    truth = np.asarray(y_true).reshape(-1).astype(int)
    counts = np.zeros((k, k), dtype=int)
    np.add.at(counts, (truth, pred), 1)
    names = list(labels) if len(labels) == k else [str(i) for i in range(k)]
    fig = Figure(figsize=(1.2 + 0.5 * k, 1.0 + 0.5 * k))
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            dark = counts[i, j] > counts.max() / 2
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
    ax.set_title(title)
    fig.tight_layout()
    return fig


def forecast_vs_truth(y_true: np.ndarray, output: np.ndarray, title: str) -> Figure:
    """One-step-ahead forecasts over the test split against what really happened."""
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    ax.plot(np.asarray(y_true).reshape(-1), label="truth")
    ax.plot(np.asarray(output).reshape(-1), label="forecast", alpha=0.8)
    ax.set_xlabel("test step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def regression_scatter(y_true: np.ndarray, output: np.ndarray, title: str) -> Figure:
    """Predicted against true values; the diagonal is perfect."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    truth = np.asarray(y_true).reshape(-1)
    pred = np.asarray(output).reshape(-1)
    ax.scatter(truth, pred, s=8, alpha=0.6)
    lo, hi = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def next_word_samples(
    x_test: np.ndarray,
    y_test: np.ndarray,
    output: np.ndarray,
    vocabulary: Sequence[str],
    *,
    n: int = 10,
    top: int = 3,
) -> str:
    """Plain-text sample completions: context, the true next word, the model's top guesses."""
    lines = []
    vocab = list(vocabulary)

    def word(i: int) -> str:
        return vocab[i] if 0 <= i < len(vocab) else f"<{i}>"

    for row in range(min(n, len(x_test))):
        context = " ".join(word(int(t)) for t in np.asarray(x_test[row]).reshape(-1))
        guesses = np.argsort(-output[row])[:top]
        shown = ", ".join(f"{word(int(g))} ({output[row][g]:.2f})" for g in guesses)
        lines.append(f"... {context} -> true: {word(int(y_test[row]))} | model: {shown}")
    return "\n".join(lines) + "\n"
