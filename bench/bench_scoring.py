"""Batch-scoring throughput: `neuroserve score` against raw ONNX Runtime, same model, same batch.

    .venv/bin/python bench/bench_scoring.py [--model mnist-cnn@champion] [--rows 5000]
                                            [--batch-size 1024] [--repeat 5]

Both sides score the same MNIST images (raw pixels, [N, 1, 28, 28]) at the same batch size, in
the same process, interleaved, best of ``--repeat``:

* raw ORT: ``onnxruntime.InferenceSession`` with default options, ``session.run`` per batch on an
  in-memory array; nothing else.
* scoring: the score flow's own work as the command runs it (input read from ``.npz`` and
  validated, chunks scored, ids kept, label + probabilities written to CSV), timed by the flow
  from its first line to the file written. Its ratio to raw ORT is the goal (>= 0.9).
* flow run: the same call timed from outside, so Prefect's bookkeeping of the flow run (creating
  it and its states through the API) is in. An empty Prefect flow is timed in the same run to
  show how much of that is Prefect's fixed cost, paid once per command whatever the file size.

The cold command line (interpreter, imports, Prefect's embedded server start, model resolution)
is timed once as well: a fixed cost per invocation, not a per-row cost.

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


def _pipeline(path: Path, npz: Path, out: Path, batch: int) -> tuple[float, float]:
    """(flow run seconds seen from outside, the flow's own seconds)."""
    from pipelines.score import run_score

    start = time.perf_counter()
    outcome = run_score(str(path), str(npz), str(out), batch_size=batch, show_progress=False)
    return time.perf_counter() - start, outcome.seconds


def _empty_flow_seconds(repeat: int) -> float:
    """Best time of a Prefect flow that does nothing: the bookkeeping every flow run pays."""
    from prefect import flow

    @flow(name="bench-empty")
    def empty() -> None:
        return None

    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        empty()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn@champion")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, default=10, help="also score rows x scale")
    parser.add_argument("--output-format", choices=["csv", "parquet"], default="csv")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from pipelines.settings import flow_settings

    rows_list = [args.rows, args.rows * args.scale] if args.scale > 1 else [args.rows]
    results: list[tuple[int, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp_name:
        tmp = Path(tmp_name)
        path, label = _model_path(args.model, tmp)
        out = tmp / f"scores.{args.output_format}"
        with flow_settings():
            for rows in rows_list:
                x = _images(rows)
                npz = tmp / f"images-{rows}.npz"
                np.savez(npz, x=x)
                _pipeline(path, npz, out, args.batch_size)  # warm: server, session, imports
                # Interleaved, best of each: the machine's load drifts between measurements.
                raws, walls, owns = [], [], []
                for _ in range(args.repeat):
                    raws.append(_raw_ort(path, x, args.batch_size))
                    wall, own = _pipeline(path, npz, out, args.batch_size)
                    walls.append(wall)
                    owns.append(own)
                results.append((rows, min(raws), min(owns), min(walls)))
            empty = _empty_flow_seconds(args.repeat)
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
                "--batch-size",
                str(args.batch_size),
            ],
            check=True,
            capture_output=True,
            env=dict(os.environ),
            cwd=REPO,
        )
        cold = time.perf_counter() - start

    table = Table(title=f"batch scoring: {label}, batch {args.batch_size}, best of {args.repeat}")
    columns = ("rows", "raw ORT s", "raw rows/s", "scoring s", "scoring rows/s", "scoring / raw")
    for col in (*columns, "flow run s", "flow run / raw"):
        table.add_column(col, justify="right")
    for rows, raw, own, wall in results:
        table.add_row(
            f"{rows:,}",
            f"{raw:.3f}",
            f"{rows / raw:,.0f}",
            f"{own:.3f}",
            f"{rows / own:,.0f}",
            f"{raw / own:.2f}",
            f"{wall:.3f}",
            f"{raw / wall:.2f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"an empty Prefect flow run takes {empty:.3f} s here (API round trips to create the run "
        "and record its states): paid once per command, whatever the file size"
    )
    console.print(
        f"`neuroserve score` cold command line, {args.rows:,} rows: {cold:.2f} s (interpreter, "
        "imports, Prefect's embedded server start, then the run above)"
    )
    rows1, raw1, own1, _ = results[0]
    ratio = raw1 / own1
    console.print(
        f"scoring throughput at {rows1:,} rows: {ratio:.2f} of raw ONNX Runtime "
        f"({'meets' if ratio >= 0.9 else 'misses'} the 0.9 goal)"
    )


if __name__ == "__main__":
    main()
