"""What the classical baselines cost next to the network, on a large user table.

    .venv/bin/python bench/bench_baselines.py [--rows 200000] [--tasks regression,binary,multiclass]

Issue #11's bound: every baseline of one run together costs at most 20 % of the network's own
training time on a 200,000-row table (a 3-epoch FNN, the loop only). For each task the script
writes a synthetic CSV (20 features, a nonlinear target with noise) and runs ``train`` on it, so
the FNN and the baselines see exactly the split a user's run would; it prints both times, their
ratio, which candidate won on validation and what the large-table rules did (subsampling).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import TrainSpec, train

GOAL = 0.20


def write_table(path: Path, rows: int, task: str) -> None:
    """20 standard-normal features; target sin + interaction + |x| + noise, cut for classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 20)).astype(np.float32)
    y = (
        np.sin(2 * x[:, 0])
        + x[:, 1] * x[:, 2]
        + 0.5 * np.abs(x[:, 3])
        + 0.3 * rng.normal(size=rows)
    )
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(20)])
    if task == "binary":
        df["target"] = np.where(y > np.median(y), "yes", "no")
    elif task == "multiclass":
        df["target"] = [
            f"c{int(q)}" for q in np.digitize(y, np.quantile(y, np.linspace(0, 1, 11)[1:-1]))
        ]
    else:
        df["target"] = y
    df.to_csv(path, index=False)


def main() -> None:
    """One run per task; print seconds and the ratio against the goal."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--tasks", default="regression,binary,multiclass")
    args = parser.parse_args()
    table = Table(
        title=f"baselines vs a 3-epoch FNN, {args.rows:,} rows ({torch.get_num_threads()} threads)"
    )
    for col in (
        "task",
        "FNN train s",
        "baselines s",
        "ratio (goal ≤ 0.20)",
        "chosen",
        "large-table rules",
    ):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            path = Path(tmp) / f"{task}.csv"
            write_table(path, args.rows, task)
            result = train(TrainSpec("fnn", str(path), epochs=3))
            ratio = result.baseline_seconds / result.train_seconds
            rules = "; ".join(
                f"{c['name']}: {c['params'].get('note') or c['params'].get('grid', '')}"
                for c in result.baseline_candidates
                if c["params"].get("note") or "one setting" in str(c["params"].get("grid", ""))
            )
            table.add_row(
                task,
                f"{result.train_seconds:.1f}",
                f"{result.baseline_seconds:.1f}",
                f"[{'green' if ratio <= GOAL else 'red'}]{ratio:.2f}",
                result.baseline_name,
                rules,
            )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
