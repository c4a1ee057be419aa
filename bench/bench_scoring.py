"""Batch-scoring throughput: `neuroserve score` against raw ONNX Runtime, same model, same batch.

    .venv/bin/python bench/bench_scoring.py [--model mnist-cnn@champion] [--rows 5000]
                                            [--chunk-size 1024] [--repeat 3]

Both sides score the same MNIST images (raw pixels, [N, 1, 28, 28]) at the same batch size, in
the same process, best of ``--repeat``:

* raw ORT: ``onnxruntime.InferenceSession`` with default options, ``session.run`` per batch on an
  in-memory array; nothing else.
* pipeline: the score flow as the command runs it (Prefect flow, one task per chunk, input read
  from ``.npz`` and validated, ids kept, label + probabilities written) with Prefect already up.

The ratio pipeline/raw is the number to watch (goal >= 0.9). The cold command line (interpreter,
imports, Prefect's ephemeral server, model resolution) is timed once as well and reported apart:
it is a fixed cost per invocation, not a per-row cost.

The model comes from the registry (``NEUROSERVE_HOME`` / ``MLFLOW_TRACKING_URI``); when it is not
there, a one-epoch MNIST CNN is trained and exported to a temporary file so the benchmark runs on
a fresh checkout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines import settings  # noqa: E402

settings.prepare_environment()


def _model_path(ref: str, tmp: Path) -> tuple[Path, str]:
    """Resolve the model through the registry, or train a small one when it is missing."""
    from pipelines import registry, tracking
    from pipelines.errors import PipelineError

    try:
        parsed = registry.parse_ref(ref)
        client = None if parsed.path else tracking.connect()
        resolved = registry.resolve(client, parsed)
        return resolved.path, f"{ref} (v{resolved.version})" if resolved.version else ref
    except PipelineError as exc:
        print(f"{ref} not available ({exc}); training a 1-epoch MNIST CNN for the benchmark")
    import training

    result = training.train(training.TrainSpec(kind="cnn", data="mnist", epochs=1))
    path = tmp / "mnist-cnn.onnx"
    training.export_onnx(result, path)
    return path, "mnist-cnn (1 epoch, temporary)"


def _images(rows: int) -> np.ndarray:
    import training

    data = training.load_dataset("mnist")
    x = np.concatenate([data.x_train, data.x_val, data.x_test]).astype(np.float32)
    reps = -(-rows // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:rows])


def _raw_ort(path: Path, x: np.ndarray, batch: int) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: x[:batch]})  # warm-up
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        session.run(None, {name: x[i : i + batch]})
    return time.perf_counter() - start


def _pipeline(path: Path, npz: Path, out: Path, batch: int) -> float:
    from pipelines.score import run_score

    start = time.perf_counter()
    run_score(str(path), str(npz), str(out), chunk_size=batch, show_progress=False)
    return time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn@champion")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output-format", choices=["csv", "parquet"], default="csv")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp_name:
        tmp = Path(tmp_name)
        path, label = _model_path(args.model, tmp)
        x = _images(args.rows)
        npz = tmp / "images.npz"
        np.savez(npz, x=x)
        out = tmp / f"scores.{args.output_format}"

        _pipeline(path, npz, out, args.chunk_size)  # warm: Prefect server, session, imports
        raw = min(_raw_ort(path, x, args.chunk_size) for _ in range(args.repeat))
        pipe = min(_pipeline(path, npz, out, args.chunk_size) for _ in range(args.repeat))
        scored = sum(1 for _ in out.open()) - 1 if args.output_format == "csv" else args.rows

        env = dict(os.environ)
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines",
                "score",
                str(path),
                "--input",
                str(npz),
                "--output",
                str(tmp / f"cli.{args.output_format}"),
                "--chunk-size",
                str(args.chunk_size),
            ],
            check=True,
            capture_output=True,
            env=env,
            cwd=REPO,
        )
        cold = time.perf_counter() - start

    ratio = raw / pipe
    table = Table(title=f"batch scoring: {label}, {args.rows} images, batch {args.chunk_size}")
    for col in ("path", "seconds", "rows/s", "vs raw ORT"):
        table.add_column(col, justify="left" if col == "path" else "right")
    table.add_row(
        "raw ONNX Runtime (session.run per batch)", f"{raw:.3f}", f"{args.rows / raw:,.0f}", "1.00"
    )
    table.add_row(
        f"score flow (npz in, {args.output_format} out, Prefect tasks)",
        f"{pipe:.3f}",
        f"{args.rows / pipe:,.0f}",
        f"{ratio:.2f}",
    )
    table.add_row(
        "`neuroserve score` cold command line (once)",
        f"{cold:.3f}",
        f"{args.rows / cold:,.0f}",
        f"{raw / cold:.2f}",
    )
    console = Console()
    console.print(table)
    verdict = "meets" if ratio >= 0.9 else "misses"
    console.print(f"rows written: {scored}; throughput ratio {ratio:.2f} {verdict} the 0.9 goal")


if __name__ == "__main__":
    main()
