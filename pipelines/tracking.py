"""MLflow wiring: reach the tracking store, one experiment per model name, what every run records.

All calls go through an explicit ``MlflowClient`` and run id rather than MLflow's fluent "active
run", because Prefect may run a task in another thread than the flow and the fluent run stack is
thread-local. Experiments are created with an explicit ``artifact_location`` under
``$NEUROSERVE_HOME/mlartifacts`` so nothing lands in ``./mlruns`` of whatever directory the user
happened to be in.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

import training
from pipelines import settings
from pipelines.errors import PipelineError, TrackingUnavailableError

TAG_PREFIX = "neuroserve."
SPEC_TAG = "neuroserve.spec"


def _probe(uri: str) -> None:
    """One attempt at reaching the store; raises on failure.

    HTTP stores are asked for ``/health`` with a short timeout, because MLflow's own client
    retries for minutes before it reports a dead server.
    """
    if uri.startswith(("http://", "https://")):
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            if resp.status >= 400:
                raise OSError(f"HTTP {resp.status}")
        return
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # MLflow creates and migrates a new SQLite store on first use; two commands doing it at
        # once in a fresh home collide ("duplicate column name"), so first uses take turns.
        with FileLock(db.with_name(db.name + ".lock")):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


#: The REST path of a tracking server's artifact proxy (``mlflow server --serve-artifacts``).
ARTIFACT_PROXY_PATH = "/api/2.0/mlflow-artifacts/"


def artifact_store_error(exc: BaseException, uri: str) -> PipelineError | None:
    """A one-line error when ``exc`` is a failed request to the server's artifact proxy.

    The server answers such a request by dropping the connection when its own artifact store
    (the bucket behind ``--artifacts-destination``) cannot be reached, so the client only sees a
    reset connection on the proxy's path; the server's log has the store's error.
    """
    text = str(exc)
    if not isinstance(exc, mlflow.exceptions.MlflowException) or ARTIFACT_PROXY_PATH not in text:
        return None
    return PipelineError(
        f"the MLflow server at {uri} could not store the run's files: its artifact proxy failed "
        f"({text.splitlines()[0][:300]}). Its artifact store (the bucket of "
        "--artifacts-destination) is likely unreachable; the server's log names the error. "
        "The run is marked FAILED and no alias moved."
    )


def client_for(uri: str) -> MlflowClient:
    """A client whose tracking *and* registry URIs are ``uri``.

    ``MlflowClient(uri)`` alone takes the registry URI from MLflow's process-wide setting, which
    may name another store; registry calls would then silently go elsewhere.
    """
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def connect(uri: str | None = None) -> MlflowClient:
    """Return a client for the tracking store, after checking it answers (with retries).

    Raises TrackingUnavailableError naming the URI when every attempt failed.
    """
    uri = uri or settings.tracking_uri()
    policy = settings.retry_policy()
    last = ""
    for attempt in range(1, policy.attempts + 1):
        try:
            _probe(uri)
            break
        except (OSError, urllib.error.URLError, mlflow.exceptions.MlflowException) as exc:
            last = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if attempt < policy.attempts:
                time.sleep(policy.delay_seconds)
    else:
        raise TrackingUnavailableError(uri, policy.attempts, last)
    return use(uri)


def use(uri: str) -> MlflowClient:
    """A client for ``uri``, with MLflow's process-wide tracking URI set to it, without probing.

    Model logging goes through MLflow's fluent API, which reads the process-wide URI. The
    registry URI is left alone: every registry call here uses an explicit client.
    """
    mlflow.set_tracking_uri(uri)
    return client_for(uri)


def is_server(uri: str) -> bool:
    """True for a tracking server (HTTP), which decides where artifacts go."""
    return uri.startswith(("http://", "https://", "databricks"))


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment for registered model ``name``.

    On a local store it is created with an explicit artifact location under
    ``$NEUROSERVE_HOME/mlartifacts``; on a tracking server with the server's own (its
    ``--artifacts-destination`` behind ``--serve-artifacts``, e.g. the compose stack's bucket): a
    path on the training machine there would leave the files where neither the server nor a
    serving machine can read them.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)
    try:
        if is_server(str(client.tracking_uri)):
            return str(client.create_experiment(name))
        location = settings.artifact_root() / name
        location.mkdir(parents=True, exist_ok=True)
        return str(client.create_experiment(name, artifact_location=location.resolve().as_uri()))
    except mlflow.exceptions.MlflowException:
        # Created concurrently by another run: use that one.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def git_commit() -> str:
    """The commit of the working directory's git repository, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def library_versions() -> dict[str, str]:
    """torch / onnx / onnxruntime versions: the lineage an ONNX file's numbers depend on."""
    versions: dict[str, str] = {}
    for module in ("torch", "onnx", "onnxruntime"):
        try:
            versions[module] = str(__import__(module).__version__)
        except ImportError:
            versions[module] = "not installed"
    return versions


def provider_parity_metrics(report: training.ExportReport) -> dict[str, float]:
    """ONNX parity on each provider beyond the CPU's (``parity_max_diff.cuda``): the GPU the
    model may be served on, measured where its provider really loaded."""
    from serving.devices import short_name
    from training.export import CPU_PROVIDER

    return {
        f"parity_max_diff.{short_name(provider)}": float(diff)
        for provider, diff in report.provider_diffs.items()
        if provider != CPU_PROVIDER
    }


def provider_parity_tags(report: training.ExportReport) -> dict[str, str]:
    """``neuroserve.parity.<provider>``: passed, over tolerance, or why it was not measured.

    Only the CPU provider's parity gates a version; these say how the GPU provider compares.
    """
    from serving.devices import short_name
    from training.export import CPU_PROVIDER, PARITY_TOLERANCE

    tags = {
        f"neuroserve.parity.{short_name(provider)}": (
            "passed" if diff <= PARITY_TOLERANCE else f"over tolerance ({diff:.3g})"
        )
        for provider, diff in report.provider_diffs.items()
        if provider != CPU_PROVIDER
    }
    for provider, note in report.provider_notes.items():
        tags[f"neuroserve.parity.{short_name(provider)}"] = f"not measured: {note}"[:5000]
    return tags


def spec_json(spec: training.TrainSpec) -> str:
    """The spec as stable JSON: stored on runs and versions so retraining can rebuild it."""
    return json.dumps(spec.to_dict(), sort_keys=True, default=str)


def run_tags(spec: training.TrainSpec, model_name: str) -> dict[str, str]:
    """Tags set when a run starts (data hash is added once the data is loaded)."""
    tags = {
        "neuroserve.model_name": model_name,
        "neuroserve.kind": str(spec.kind),
        "neuroserve.data": str(spec.data),
        "neuroserve.seed": str(spec.seed),
        "neuroserve.git_commit": git_commit(),
        "mlflow.source.git.commit": git_commit(),
        SPEC_TAG: spec_json(spec),
    }
    tags.update({f"neuroserve.{k}_version": v for k, v in library_versions().items()})
    return tags


def start_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and return its id."""
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return str(run.info.run_id)


def _flat(value: Any) -> str:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    return str(value)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Every hyperparameter of the resolved spec, as strings."""
    from mlflow.entities import Param

    items = [Param(k, _flat(v)[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0
) -> None:
    """Numeric metrics in one batch; non-finite values are logged as they are (MLflow keeps NaN)."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
    if items:
        client.log_batch(run_id, metrics=items)


class MlflowCallback(training.Callback):
    """Logs each epoch's losses and validation metrics with step = epoch.

    The training loop knows nothing about MLflow; this is the plug (STYLE.md, example 3).
    """

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.epochs_logged = 0

    def on_train_start(self, info: dict[str, Any]) -> None:
        """Record what the loop announces (parameter count, device...) as tags."""
        tags = {f"neuroserve.train.{k}": _flat(v)[:5000] for k, v in info.items()}
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """One batch of metrics per epoch."""
        numeric = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
        numeric.pop("epoch", None)
        log_metrics(self.client, self.run_id, numeric, step=int(epoch))
        self.epochs_logged += 1

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """Nothing extra: final metrics are logged by the flow from the TrainResult."""


def dataset_source(data_ref: str) -> Any:
    """A path for a user's file, a code source naming the built-in data set otherwise."""
    from mlflow.data.code_dataset_source import CodeDatasetSource

    path = Path(data_ref).expanduser()
    if path.exists():
        return str(path.resolve())
    return CodeDatasetSource({"neuroserve.builtin_dataset": data_ref})


def log_dataset(
    client: MlflowClient, run_id: str, data: training.DataSplit, data_ref: str, context: str
) -> None:
    """Log the training data as a run input with its SHA-256 as digest (lineage for ops)."""
    from mlflow.data.numpy_dataset import from_numpy

    dataset = from_numpy(
        data.x_train,
        targets=data.y_train,
        source=dataset_source(data_ref),
        name=str(data.name),
        digest=str(data.sha256)[:36],
    )
    inp = DatasetInput(
        dataset=dataset._to_mlflow_entity(),
        tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)],
    )
    client.log_inputs(run_id, datasets=[inp])
