"""`neuroserve demo`: the whole loop on the embedded defaults, with nothing started by hand.

Trains three models through the real train flow (the shared local Prefect server, MLflow on
SQLite under ``NEUROSERVE_HOME``), lets the quality gate promote them, starts the real gRPC server
as a child process on the champions, sends real predictions through gRPC, and says where to look
next. It is the README's first command, so it must be honest about what it did: every number it
prints was computed in this run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from pipelines.errors import PipelineError

console = Console()

#: (kind, data set) of the three demo models: one per family, each with a story to show. The
#: table model is diabetes (disease progression a year on): on its seeded split the FNN beats the
#: strongest classical baseline, while on breast-cancer's logistic regression is better, so the
#: gate would rightly keep the net from going live.
DEMO_MODELS: tuple[tuple[str, str], ...] = (
    ("cnn", "mnist"),
    ("lstm", "sunspots"),
    ("fnn", "diabetes"),
)

#: --quick: small slices and few epochs so the loop runs in seconds (tests, a first look).
QUICK_OPTIONS: dict[str, Any] = {"limit": 600, "epochs": 3}


@dataclass
class DemoModel:
    """One trained model and what the gate made of it."""

    name: str
    kind: str
    data: str
    outcome: Any  # pipelines.flows.TrainOutcome


def _free_port(preferred: int) -> int:
    """``preferred`` when it is free on loopback, else any free port (said on the terminal)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
    console.print(f"port {preferred} is taken; using {port} instead")
    return port


def train_models(quick: bool) -> list[DemoModel]:
    """Run the train flow for each demo model; the gate decides champion or challenger."""
    from pipelines import specs
    from pipelines.flows import train_flow

    trained = []
    for kind, data in DEMO_MODELS:
        name = specs.default_model_name(kind, data)
        options = QUICK_OPTIONS if quick else {}
        spec = specs.build_spec(kind, data, **options)
        console.rule(f"[bold]train {name}")
        started = time.perf_counter()
        # --quick models see too little data to be judged fairly; the override is recorded on
        # the version as such, exactly like a person's --promote.
        outcome = train_flow(spec.to_dict(), model_name=name, promote=quick)
        console.print(
            f"{name} v{outcome.version} -> [bold]@{outcome.alias}[/bold] "
            f"({outcome.metric_name} {outcome.test_metric:.4f} vs baseline "
            f"{outcome.baseline_metric:.4f}; {time.perf_counter() - started:.0f} s): "
            f"{outcome.reason}"
        )
        trained.append(DemoModel(name, kind, data, outcome))
    return trained


@contextlib.contextmanager
def running_server(
    names: list[str], tracking_uri: str, grpc_port: int, metrics_port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``python -m serving`` on the champions and stop it with SIGTERM on exit."""
    command = [
        sys.executable,
        "-m",
        "serving",
        "--model-names",
        ",".join(names),
        "--tracking-uri",
        tracking_uri,
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--http-port",
        "0",  # the demo predicts over gRPC; REST takes a free port so 8000 may be in use
    ]
    log_path = Path(os.environ["NEUROSERVE_HOME"]) / "demo-server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait()
                console.print(f"server stopped (exit code {code}); its log: {log_path}")


def wait_ready(process: subprocess.Popen[bytes], url: str, names: list[str]) -> None:
    """Block until every model answers ModelReady, or fail with the server log's tail."""
    from serving.client import ClientError, InferenceClient

    deadline = time.monotonic() + 120
    with InferenceClient(url, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with contextlib.suppress(ClientError):
                if client.ready() and all(client.model_ready(name) for name in names):
                    return
            time.sleep(0.25)
    log = Path(os.environ["NEUROSERVE_HOME"]) / "demo-server.log"
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"the server did not become ready at {url}:\n{tail}")


def champions(models: list[DemoModel]) -> list[str]:
    """Names that have a champion (this run's or an earlier one's); the others are said why."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines import settings

    client = MlflowClient(settings.tracking_uri())
    served = []
    for m in models:
        try:
            version = client.get_model_version_by_alias(m.name, "champion").version
        except MlflowException:
            console.print(f"{m.name} has no champion yet ({m.outcome.reason}); not served")
            continue
        if str(version) != str(m.outcome.version):
            console.print(f"{m.name}: serving champion v{version}; this run's version lost")
        served.append(m.name)
    return served


def show_predictions(url: str, models: list[DemoModel]) -> None:
    """Real requests through gRPC: digits with top-3, next sunspots, table rows."""
    from serving.client import InferenceClient

    by_kind = {m.kind: m for m in models}
    with InferenceClient(url) as client:
        if "cnn" in by_kind:
            _show_digits(client, by_kind["cnn"])
        if "lstm" in by_kind:
            _show_series(client, by_kind["lstm"])
        if "fnn" in by_kind:
            _show_table(client, by_kind["fnn"])


def _show_digits(client: Any, cnn: DemoModel) -> None:
    from training import load_dataset

    data = load_dataset(cnn.data, kind="cnn")
    rows = client.top_k(cnn.name, data.x_test[:5], k=3)
    table = Table(title=f"{cnn.name}: test digits through gRPC (top-3)")
    table.add_column("true")
    table.add_column("top-3 (label: probability)")
    for truth, top in zip(data.y_test[:5], rows, strict=True):
        table.add_row(
            data.labels[int(truth)],
            ", ".join(f"{p.label}: {p.score:.3f}" for p in top),
        )
    console.print(table)


def _show_series(client: Any, lstm: DemoModel) -> None:
    from training import load_dataset

    series = load_dataset(lstm.data, kind="lstm")
    predicted = client.predict(lstm.name, series.x_test[-5:])
    table = Table(title=f"{lstm.name}: next monthly value, predicted vs truth")
    table.add_column("step")
    table.add_column("predicted", justify="right")
    table.add_column("truth", justify="right")
    for i, (guess, truth) in enumerate(zip(np.ravel(predicted), series.y_test[-5:], strict=True)):
        table.add_row(f"t-{4 - i}", f"{guess:.1f}", f"{float(truth):.1f}")
    console.print(table)


def _show_table(client: Any, fnn: DemoModel) -> None:
    from training import load_dataset

    tab = load_dataset(fnn.data, kind="fnn")
    rows = tab.x_test[:5]
    output = np.asarray(client.predict(fnn.name, rows))
    if tab.labels:
        table = Table(title=f"{fnn.name}: class probabilities of test rows")
        table.add_column("true")
        for label in tab.labels:
            table.add_column(f"p({label})", justify="right")
        for truth, row in zip(tab.y_test[:5], output, strict=True):
            table.add_row(tab.labels[int(truth)], *(f"{p:.3f}" for p in row))
    else:
        target = tab.target or "target"
        table = Table(title=f"{fnn.name}: {target} of test rows, predicted vs truth")
        table.add_column("row")
        table.add_column("predicted", justify="right")
        table.add_column("truth", justify="right")
        for i, (guess, truth) in enumerate(zip(np.ravel(output), tab.y_test[:5], strict=True)):
            table.add_row(str(i), f"{guess:.1f}", f"{float(truth):.1f}")
    console.print(table)


def summary(models: list[DemoModel], url: str, metrics_port: int, seconds: float) -> None:
    """The table of what was trained, and the commands to look further."""
    from pipelines import settings

    table = Table(title=f"neuroserve demo: {seconds:.0f} s")
    for column in ("model", "version", "alias", "metric", "value", "baseline"):
        table.add_column(column, justify="right" if column in {"value", "baseline"} else "left")
    for m in models:
        o = m.outcome
        table.add_row(
            m.name,
            str(o.version),
            o.alias,
            o.metric_name,
            f"{o.test_metric:.4f}",
            f"{o.baseline_metric:.4f}",
        )
    console.print(table)
    home = settings.home_dir()
    uri = settings.tracking_uri()
    venv_bin = Path(sys.executable).parent
    api = os.environ.get("PREFECT_API_URL")
    prefect_ui = (
        f"{api.removesuffix('/api')} (stays up for later commands; "
        f"`{venv_bin}/neuroserve server stop` stops it)"
        if api
        else f"PREFECT_HOME={os.environ.get('PREFECT_HOME', home / 'prefect')} "
        f"{venv_bin}/prefect server start"
    )
    console.print(
        "\n[bold]Where to look[/bold]\n"
        f"  MLflow UI:   {venv_bin}/mlflow ui --backend-store-uri {uri} --port 5000\n"
        f"  Prefect UI:  {prefect_ui}\n"
        f"  registry:    {venv_bin}/neuroserve models\n"
        f"  state:       {home}\n"
        f"  gRPC server: {url} (metrics on http://127.0.0.1:{metrics_port}/metrics)"
    )


def demo(
    keep_serving: Annotated[
        bool, typer.Option(help="Leave the gRPC server up after the demo (Ctrl-C stops it).")
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            help="Small data slices and 3 epochs: seconds instead of minutes; the gate is "
            "overridden (recorded on each version) since such models are not judged fairly."
        ),
    ] = False,
    grpc_port: Annotated[int, typer.Option(help="gRPC port for the demo server.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus port for the demo server.")] = 8002,
) -> None:
    """Train mnist-cnn, sunspots-lstm and diabetes-fnn, serve them, predict over gRPC."""
    from pipelines import prefect_api, settings, tracking

    started = time.perf_counter()
    settings.prepare_environment()
    os.environ.setdefault("NEUROSERVE_HOME", str(settings.home_dir()))
    prefect_api.select()
    tracking.connect()  # creates a new home's store while the Prefect server boots
    with settings.flow_settings():
        models = train_models(quick)
    serve_names = champions(models)
    if not serve_names:
        raise PipelineError("no demo model has a champion version; nothing to serve")
    port = _free_port(grpc_port)
    mport = _free_port(metrics_port)
    url = f"127.0.0.1:{port}"
    console.rule("[bold]serve")
    with running_server(serve_names, settings.tracking_uri(), port, mport) as process:
        wait_ready(process, url, serve_names)
        console.print(f"server ready at {url} with {', '.join(serve_names)} (@champion)")
        show_predictions(url, [m for m in models if m.name in serve_names])
        summary(models, url, mport, time.perf_counter() - started)
        if keep_serving:
            console.print(
                f"\nserving until Ctrl-C. Try: {Path(sys.executable).parent}/neuroserve predict "
                f"{models[0].name} --url {url} --input <image.png> --top-k 3"
            )
            with contextlib.suppress(KeyboardInterrupt):
                process.wait()
