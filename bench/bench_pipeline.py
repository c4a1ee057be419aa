"""Pipeline overhead: the train flow (Prefect + MLflow + export + registry + gate) against bare
``training.train`` for the same spec, in the same process.

    .venv/bin/python bench/bench_pipeline.py [--kind cnn --data digits --epochs 5 --limit N]

Runs in a temporary ``NEUROSERVE_HOME`` (fresh MLflow SQLite store, fresh Prefect ephemeral
database), so it never touches your registry. Reports:

* the first train flow in the process (cold: Prefect's ephemeral server start and the MLflow
  database migration included);
* bare ``training.train`` and a warm train flow, interleaved, best of ``--repeat`` each;
* the warm flow's time per task, read back from Prefect's API, so the overhead is attributed.

The overhead figure is the warm flow minus its *own* train task: on a shared machine the load
drifts between separate runs by more than the overhead itself, so a difference between separate
bare and flow runs can even come out negative.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _task_times(flow_run_id: object) -> dict[str, float]:
    """Seconds per task name (summed) for one flow run, from Prefect's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))  # type: ignore[list-item]
        )
    out: dict[str, float] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]
        out[name] = out.get(name, 0.0) + run.total_run_time.total_seconds()
    return out


def main() -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="cnn")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    os.environ["NEUROSERVE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("PREFECT_HOME", None)
    from pipelines import settings

    settings.prepare_environment()

    from rich.console import Console
    from rich.table import Table

    import training
    from pipelines.flows import train_flow

    spec = training.TrainSpec(kind=args.kind, data=args.data, epochs=args.epochs, limit=args.limit)
    training.train(spec)  # warm torch, data caches

    runs: list[tuple[float, object]] = []

    def timed_flow() -> None:
        start = time.perf_counter()
        with settings.flow_settings():  # as the CLI runs it
            state = train_flow(spec.to_dict(), return_state=True)
        runs.append((time.perf_counter() - start, state.state_details.flow_run_id))

    timed_flow()  # cold
    cold = runs[0][0]
    bares = []
    for _ in range(args.repeat):  # interleaved: the machine's load drifts
        bares.append(_timed(lambda: training.train(spec)))
        timed_flow()
    bare = min(bares)
    warm, warm_id = min(runs[1:], key=lambda r: r[0])
    tasks = _task_times(warm_id)

    console = Console()
    label = f"{args.kind} on {args.data}, {args.epochs} epochs" + (
        f", limit {args.limit}" if args.limit else ""
    )
    table = Table(title=f"pipeline overhead: {label}")
    for col in ("what", "seconds", "x bare train"):
        table.add_column(col, justify="left" if col == "what" else "right")
    table.add_row("bare training.train", f"{bare:.2f}", "1.00")
    table.add_row("train flow, warm", f"{warm:.2f}", f"{warm / bare:.2f}")
    table.add_row("train flow, cold (first in process)", f"{cold:.2f}", f"{cold / bare:.2f}")
    in_flow_train = tasks.get("train", 0.0)
    overhead = warm - in_flow_train
    table.add_row(
        "overhead, warm (flow - its own train task)",
        f"{overhead:.2f}",
        f"{overhead / in_flow_train:.2f} x its train task" if in_flow_train else "-",
    )
    console.print(table)

    breakdown = Table(title="warm flow, seconds per task (Prefect API)")
    breakdown.add_column("task")
    breakdown.add_column("seconds", justify="right")
    for name, seconds in sorted(tasks.items(), key=lambda kv: -kv[1]):
        breakdown.add_row(name, f"{seconds:.2f}")
    breakdown.add_row("sum of tasks", f"{sum(tasks.values()):.2f}")
    breakdown.add_row(
        "flow minus tasks (Prefect orchestration, artifact)", f"{warm - sum(tasks.values()):.2f}"
    )
    console.print(breakdown)
    console.print(f"state kept in {home} (delete at will)")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
