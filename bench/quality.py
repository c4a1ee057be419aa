"""Quality bar: every reference model with default settings, against the strongest baseline.

    .venv/bin/python bench/quality.py [--only mnist-cnn ...] [--seeds 42,1,2] [--markdown FILE]

For each case and seed it trains with the defaults, scores the network and every classical
candidate on the same test split, and checks issue #11's bar. The gate's baseline is the
candidate best on *validation*; this script never looks at test to choose anything. Printed per
case: seed 42's value, mean ± standard deviation over the seeds, the baseline chosen on
validation (per seed, its test value), training seconds (the loop only) and baseline seconds
(every candidate, fit + tuning + scoring). Exit code 1 if any bar is missed on any seed. Not a
test: it takes about half an hour, and a shared CPU inflates the seconds.
"""

from __future__ import annotations

import argparse
import statistics
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


def _beats(r: TrainResult) -> bool:
    return r.beats_baseline


def _ties_or_beats(r: TrainResult) -> bool:
    return r.test_value == r.baseline_value or r.beats_baseline


@dataclass(frozen=True)
class Case:
    """One reference run and the bar it must clear (value, and training seconds)."""

    data: str
    kind: str
    bar: str
    check: Callable[[TrainResult], bool]
    seconds: float
    baseline_seconds: float = 10.0

    @property
    def name(self) -> str:
        return f"{self.data}-{self.kind}"


CASES = [
    Case(
        "mnist",
        "cnn",
        "acc >= 0.985 and > baseline",
        lambda r: r.test_value >= 0.985 and r.beats_baseline,
        90,
    ),
    Case("digits", "cnn", "> baseline", _beats, 30),
    Case("breast-cancer", "fnn", ">= baseline (ties reported)", _ties_or_beats, 10),
    Case("diabetes", "fnn", "R² >= baseline", _ties_or_beats, 10),
    Case("wine", "fnn", ">= baseline", _ties_or_beats, 10),
    Case("sunspots", "lstm", "RMSE < baseline", _beats, 30),
    Case("sunspots", "gru", "RMSE < baseline", _beats, 30),
    Case("co2", "lstm", "RMSE < baseline", _beats, 60),
    Case("co2", "gru", "RMSE < baseline", _beats, 60),
    Case("pydoc-text", "lstm", "perplexity < baseline", _beats, 120, baseline_seconds=30),
    Case("pydoc-text", "gru", "perplexity < baseline", _beats, 120, baseline_seconds=30),
]


@dataclass
class Row:
    """One case over all seeds."""

    case: Case
    results: dict[int, TrainResult]

    def verdicts(self) -> dict[int, tuple[bool, bool, bool]]:
        """Per seed: (value bar met, training time met, baseline time met)."""
        return {
            seed: (
                self.case.check(r),
                r.train_seconds <= self.case.seconds,
                r.baseline_seconds <= self.case.baseline_seconds,
            )
            for seed, r in self.results.items()
        }


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {sd:.4f}"


def _cells(row: Row, seeds: list[int]) -> list[str]:
    """The table's cells for one case (same columns in the terminal and in markdown)."""
    first = row.results[seeds[0]]
    values = [row.results[s].test_value for s in seeds]
    baselines = [
        f"{row.results[s].baseline_name} {row.results[s].baseline_value:.4f}" for s in seeds
    ]
    v = row.verdicts()
    met = sum(all(x) for x in v.values())
    return [
        row.case.data,
        row.case.kind,
        first.primary_metric,
        f"{first.test_value:.4f}",
        _spread(values),
        " / ".join(baselines),
        row.case.bar,
        f"{sum(x[0] for x in v.values())}/{len(seeds)}",
        " / ".join(f"{row.results[s].train_seconds:.0f}" for s in seeds)
        + f" (≤ {row.case.seconds:.0f})",
        " / ".join(f"{row.results[s].baseline_seconds:.1f}" for s in seeds)
        + f" (≤ {row.case.baseline_seconds:.0f})",
        f"{met}/{len(seeds)}",
    ]


COLUMNS = (
    "data",
    "model",
    "metric",
    "seed {s0}",
    "mean ± sd",
    "baseline chosen on validation: test value (per seed)",
    "bar",
    "bar met",
    "train s (per seed)",
    "baselines s (per seed)",
    "all met",
)


def markdown(rows: list[Row], seeds: list[int]) -> str:
    """The README's quality table."""
    header = [c.format(s0=seeds[0]) for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cells(row, seeds)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Train every case for every seed, print the table, return 1 if a bar is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="names like mnist-cnn; default: all")
    parser.add_argument("--seeds", default="42,1,2", help="comma-separated seeds (default 42,1,2)")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cases = [c for c in CASES if not args.only or c.name in args.only]
    console = Console(width=200)
    rows = [Row(c, {}) for c in cases]
    wall = time.perf_counter()
    for seed in seeds:  # seeds outermost: a drifting machine slows every case alike
        for row in rows:
            result = train(TrainSpec(row.case.kind, row.case.data, seed=seed))
            row.results[seed] = result
            console.print(
                f"{row.case.name} seed {seed}: {result.primary_metric} {result.test_value:.4f} "
                f"vs {result.baseline_name} {result.baseline_value:.4f}; "
                f"{result.train_seconds:.1f} s train, {result.baseline_seconds:.1f} s baselines",
                style="dim",
                highlight=False,
            )
    table = Table(
        title=f"neuroserve training quality (defaults, seeds {args.seeds}, "
        f"{torch.get_num_threads()} threads)"
    )
    for col in COLUMNS:
        table.add_column(col.format(s0=seeds[0]))
    for row in rows:
        table.add_row(*_cells(row, seeds))
    console.print(table)
    console.print(f"Total wall time {time.perf_counter() - wall:.0f} s.")
    if args.markdown:
        args.markdown.write_text(markdown(rows, seeds))
    missed = sum(not all(x) for row in rows for x in row.verdicts().values())
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
