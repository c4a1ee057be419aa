"""Batch-scoring throughput: `neuroserve score` against raw ONNX Runtime, same model, same batch.

    .venv/bin/python bench/bench_scoring.py [--model mnist-cnn@champion] [--rows 5000]
                                            [--chunk-size 1024] [--repeat 3]

Both sides score the same MNIST images (raw pixels, [N, 1, 28, 28]) at the same batch size, in
the same process, interleaved, best of ``--repeat``:

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
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, default=10, help="also score rows x scale")
    parser.add_argument("--output-format", choices=["csv", "parquet"], default="csv")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from pipelines.settings import embedded_flow_settings

    rows_list = [args.rows, args.rows * args.scale] if args.scale > 1 else [args.rows]
    results: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp_name:
        tmp = Path(tmp_name)
        path, label = _model_path(args.model, tmp)
        out = tmp / f"scores.{args.output_format}"
        with embedded_flow_settings():
            for rows in rows_list:
                x = _images(rows)
                npz = tmp / f"images-{rows}.npz"
                np.savez(npz, x=x)
                _pipeline(path, npz, out, args.chunk_size)  # warm: server, session, imports
                # Interleaved, best of each: the machine's load drifts between measurements.
                raws, pipes = [], []
                for _ in range(args.repeat):
                    raws.append(_raw_ort(path, x, args.chunk_size))
                    pipes.append(_pipeline(path, npz, out, args.chunk_size))
                results.append((rows, min(raws), min(pipes)))
        npz = tmp / f"images-{args.rows}.npz"
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
            env=dict(os.environ),
            cwd=REPO,
        )
        cold = time.perf_counter() - start

    table = Table(title=f"batch scoring: {label}, batch {args.chunk_size}, best of {args.repeat}")
    for col in ("rows", "raw ORT s", "raw rows/s", "score flow s", "flow rows/s", "flow / raw"):
        table.add_column(col, justify="right")
    for rows, raw, pipe in results:
        table.add_row(
            f"{rows:,}",
            f"{raw:.3f}",
            f"{rows / raw:,.0f}",
            f"{pipe:.3f}",
            f"{rows / pipe:,.0f}",
            f"{raw / pipe:.2f}",
        )
    console = Console()
    console.print(table)
    (r1, raw1, pipe1), (r2, raw2, pipe2) = results[0], results[-1]
    if len(results) > 1:
        # time = fixed + rows * per_row, fitted through the two sizes
        per_row = (pipe2 - pipe1) / (r2 - r1)
        fixed = pipe1 - r1 * per_row
        console.print(
            f"score flow: fixed cost per run ~{fixed:.3f} s (Prefect flow run, file read, "
            f"model metadata, output write), marginal {1 / per_row:,.0f} rows/s vs raw ORT "
            f"{r2 / raw2:,.0f} rows/s (marginal ratio {(raw2 / r2) / per_row:.2f})"
        )
    console.print(
        f"`neuroserve score` cold command line, {args.rows:,} rows: {cold:.2f} s (interpreter, "
        "imports, Prefect's embedded server start, then the run above)"
    )
    ratio = raw1 / pipe1
    console.print(
        f"end-to-end ratio at {r1:,} rows: {ratio:.2f} "
        f"({'meets' if ratio >= 0.9 else 'misses'} the 0.9 goal)"
    )


if __name__ == "__main__":
    main()
