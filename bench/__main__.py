"""`python -m bench [NAME ...]`: run the benchmarks one after another, each printing its table.

Each benchmark is a script of its own (run it directly for its options); this runner only saves
typing `make bench`. Names: training, quality, baselines, pipeline, scoring, serving, soak.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "training": "bench_training.py",
    "quality": "quality.py",
    "baselines": "bench_baselines.py",
    "pipeline": "bench_pipeline.py",
    "scoring": "bench_scoring.py",
    "serving": "bench_serving.py",
    "soak": "soak.py",
}


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all by default); exit non-zero if any failed."""
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        code = subprocess.call([sys.executable, str(HERE / BENCHMARKS[name])])
        if code:
            failed.append(f"{name} (exit {code})")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
