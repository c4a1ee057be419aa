"""Quality bar: train the seven reference models with default hyperparameters and seed 42.

    .venv/bin/python bench/quality.py [--only mnist-cnn ...]

Prints one row per model: the test-split primary metric, the classical baseline's value on the
same split, the bar the README promises, and the training seconds (the loop only; data loading,
baseline and evaluation are not counted). Exit code 1 if any bar is missed. Not a test: it takes
minutes, and the CPU it runs on may be shared, which inflates the seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import TrainResult, TrainSpec, train


@dataclass(frozen=True)
class Case:
    """One reference run and the bar it must clear."""

    data: str
    kind: str
    bar: str
    check: Callable[[TrainResult], bool]


CASES = [
    Case(
        "mnist",
        "cnn",
        "acc >= 0.97, > baseline, <= 90 s",
        lambda r: r.test_value >= 0.97 and r.beats_baseline and r.train_seconds <= 90,
    ),
    Case(
        "digits",
        "cnn",
        "acc >= 0.97, > baseline",
        lambda r: r.test_value >= 0.97 and r.beats_baseline,
    ),
    Case("breast-cancer", "fnn", "acc >= 0.95", lambda r: r.test_value >= 0.95),
    Case(
        "diabetes",
        "fnn",
        "R² >= baseline - 0.05",
        lambda r: r.test_value >= r.baseline_value - 0.05,
    ),
    Case("sunspots", "lstm", "RMSE < naive", lambda r: r.beats_baseline),
    Case("sunspots", "gru", "RMSE < naive", lambda r: r.beats_baseline),
    Case("pydoc-text", "lstm", "perplexity < bigram", lambda r: r.beats_baseline),
]


def main() -> int:
    """Train every case in turn, print the table, return 1 if a bar is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="names like mnist-cnn; default: all seven")
    args = parser.parse_args()
    console = Console(width=150)
    table = Table(
        title=f"neuroserve training quality (seed 42, defaults, {torch.get_num_threads()} threads)"
    )
    for col in (
        "data",
        "model",
        "metric",
        "value",
        "baseline",
        "baseline value",
        "bar",
        "ok",
        "epochs",
        "seconds",
    ):
        table.add_column(
            col,
            justify="right" if col in ("value", "baseline value", "epochs", "seconds") else "left",
        )
    missed = 0
    wall = time.perf_counter()
    for case in CASES:
        if args.only and f"{case.data}-{case.kind}" not in args.only:
            continue
        result = train(TrainSpec(case.kind, case.data))
        ok = case.check(result)
        missed += not ok
        table.add_row(
            case.data,
            case.kind,
            result.primary_metric,
            f"{result.test_value:.4f}",
            result.baseline_name,
            f"{result.baseline_value:.4f}",
            case.bar,
            "[green]yes" if ok else "[red]NO",
            f"{result.best_epoch}/{len(result.history)}",
            f"{result.train_seconds:.1f}",
        )
        console.print(f"done: {case.data}-{case.kind} in {result.train_seconds:.1f} s", style="dim")
    console.print(table)
    console.print(
        f"epochs = best epoch / epochs run (early stopping); seconds = training loop only. "
        f"Total wall time {time.perf_counter() - wall:.0f} s."
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
