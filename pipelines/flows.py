"""The train and retrain flows: data -> train -> evaluate -> export ONNX -> MLflow -> registry ->
quality gate -> alias.

Task policy:

* Tasks that do I/O (MLflow, files) retry (``NEUROSERVE_RETRIES`` attempts).
* Tasks that take or return torch objects or large arrays use ``NO_CACHE``: hashing a model for a
  cache key is meaningless and persisting it would pickle torch into Prefect's result store.
* Data preparation is cached by the data's hash (see :func:`describe_data`).
* Nothing is cached by Prefect's default policy, which keys on inputs *within a flow run* and
  would hand a second call with equal inputs (compare variants, retries of the flow) a stale
  result.

Ordering: the alias is set as the very last step, after the version is READY and carries the
gate's verdict, so a flow that dies half-way leaves a version with
``neuroserve.state=registering`` and no alias; serving never sees it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import training
from pipelines import figures, gate, listing, registry, settings, specs, tracking
from pipelines.errors import GateError, PipelineError
from training import distributed
from training.device import check as check_device
from training.export import PARITY_TOLERANCE

#: Retries for tasks that touch MLflow or files (read once, at import).
IO_RETRIES = settings.task_retries()
IO_RETRY_DELAY = settings.task_retry_delay()


@dataclass
class TrainOutcome:
    """What a train flow did, for the CLI, tests and the retrain summary."""

    model_name: str
    version: str
    alias: str
    reason: str
    gate_passed: bool
    overridden: bool
    run_id: str
    experiment_id: str
    metric_name: str
    higher_is_better: bool
    test_metric: float
    baseline_metric: float
    champion_metric: float | None
    previous_champion: str | None
    parity_max_diff: float
    model_uri: str
    tracking_uri: str
    artifact_key: str
    test_metrics: dict[str, float] = field(default_factory=dict)
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    baseline_name: str = ""
    #: Every classical candidate (see ``TrainResult.baseline_candidates``).
    baselines: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-safe) for printing and Prefect results."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# data


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key for :func:`describe_data`: the data's identity, not the Python object.

    Built-in data sets ship with pinned library versions, so their name (plus the options that
    change the split) identifies them; for a user's file the key is the file's SHA-256, so an
    edited file is re-read and an unchanged one is not.
    """
    spec = parameters["spec_dict"]
    data = str(spec["data"])
    path = Path(data).expanduser()
    ident = _file_sha256(path) if path.is_file() else f"builtin:{data}"
    opts = {k: spec.get(k) for k in ("kind", "target", "window", "limit", "seed")}
    return (
        "neuroserve-data-"
        + hashlib.sha256(
            json.dumps([ident, opts], sort_keys=True, default=str).encode()
        ).hexdigest()
    )


@task(
    name="describe-data",
    cache_key_fn=data_cache_key,
    cache_expiration=timedelta(days=7),
    persist_result=True,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
)
def describe_data(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """Load the data once to check it and fingerprint it; cached by the data's hash.

    Only the small summary is cached (SHA-256, sizes, task, labels), never the arrays: training
    loads the split itself from its own file cache, and pickling MNIST-sized arrays into
    Prefect's result store on every run would cost more than it saves. A cache hit skips this
    load entirely; a DataError here stops the flow before an MLflow run is created.
    """
    spec = specs.spec_from_dict(spec_dict)
    data = training.load_dataset(spec)
    return {
        "name": str(data.name),
        "sha256": str(data.sha256),
        "task": str(data.task),
        "input_kind": str(data.input_kind),
        "labels": [str(x) for x in (data.labels or [])],
        "n_train": len(data.x_train),
        "n_val": len(data.x_val),
        "n_test": len(data.x_test),
    }


# --------------------------------------------------------------------------------------------
# MLflow run


@task(name="open-tracking", cache_policy=NO_CACHE)
def open_tracking() -> str:
    """Check the tracking store answers and return its URI.

    Not a retried task: ``tracking.connect`` retries itself and then names the URI, and retrying
    that again would multiply the wait before the user sees the message.
    """
    uri = settings.tracking_uri()
    tracking.connect(uri)
    return uri


def _client(uri: str) -> MlflowClient:
    """A client for ``uri`` with the fluent URI pointed at it too (model logging needs it).

    ``open_tracking`` already checked the store answers; a later outage fails the task's own
    call, which the task retries.
    """
    return tracking.use(uri or settings.tracking_uri())


@task(
    name="start-run",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def start_run(
    uri: str,
    model_name: str,
    spec_dict: dict[str, Any],
    *,
    run_name: str,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Create the experiment (if new) and the run; return (experiment id, run id)."""
    client = tracking.client_for(uri)
    spec = specs.spec_from_dict(spec_dict)
    experiment_id = tracking.ensure_experiment(client, model_name)
    tags = tracking.run_tags(spec, model_name)
    tags.update(extra_tags or {})
    run_id = tracking.start_run(client, experiment_id, run_name, tags, parent_run_id)
    return experiment_id, run_id


@task(
    name="end-run",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def end_run(uri: str, run_id: str, status: str, error: str = "") -> None:
    """Close the run as FINISHED or FAILED (with the error as a tag)."""
    client = tracking.client_for(uri)
    if error:
        client.set_tag(run_id, "neuroserve.error", error[:5000])
    client.set_terminated(run_id, status=status)


@task(name="train", cache_policy=NO_CACHE)
def train_model(
    spec_dict: dict[str, Any], uri: str, run_id: str, progress: bool = False
) -> training.TrainResult:
    """Train with per-epoch MLflow logging; the torch model stays in memory (no cache)."""
    spec = specs.spec_from_dict(spec_dict)
    callbacks: list[training.Callback] = [tracking.MlflowCallback(tracking.client_for(uri), run_id)]
    if progress:
        callbacks.append(training.RichProgress(description=f"training {spec.kind}"))
    return training.train(spec, callbacks=callbacks)


@task(
    name="log-results",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def log_results(uri: str, run_id: str, result: training.TrainResult, data_ref: str) -> None:
    """Params (the resolved spec), final metrics, data set input, spec artifact, data tags."""
    client = tracking.client_for(uri)
    spec = result.spec
    tracking.log_params(client, run_id, spec.to_dict())
    metrics = {f"test_{k}": v for k, v in result.test_metrics.items()}
    metrics.update({f"baseline_{k}": v for k, v in result.baseline_metrics.items()})
    metrics["train_seconds"] = float(result.train_seconds)
    metrics["best_epoch"] = float(result.best_epoch)
    metrics["baseline_seconds"] = float(result.baseline_seconds)
    metric = str(result.primary_metric)
    for cand in result.baseline_candidates:
        metrics[f"baseline.{cand['name']}.val_{metric}"] = float(cand["val_metric"])
        metrics[f"baseline.{cand['name']}.test_{metric}"] = float(cand["test_metrics"][metric])
    tracking.log_metrics(client, run_id, metrics)
    tracking.log_params(
        client,
        run_id,
        {
            f"baseline.{cand['name']}.{key}": value
            for cand in result.baseline_candidates
            for key, value in cand["params"].items()
        },
    )
    if result.baseline_candidates:
        client.log_text(run_id, baselines_markdown(result), "baselines.md")
        client.log_dict(run_id, {"candidates": result.baseline_candidates}, "baselines.json")
    for key, value in {
        "neuroserve.data_sha256": str(result.data.sha256),
        "neuroserve.task": str(result.data.task),
        "neuroserve.input_kind": str(result.data.input_kind),
        "neuroserve.baseline": str(result.baseline_name),
        listing.PRIMARY_METRIC_TAG: str(result.primary_metric),
        "neuroserve.higher_is_better": str(result.higher_is_better),
        tracking.SPEC_TAG: tracking.spec_json(spec),
    }.items():
        client.set_tag(run_id, key, value)
    client.log_dict(run_id, spec.to_dict(), "spec.json")
    client.log_text(run_id, json.dumps(list(result.history), default=float), "history.json")
    tracking.log_dataset(client, run_id, result.data, data_ref, context="train")


def baselines_markdown(result: training.TrainResult) -> str:
    """Every classical candidate against the network: what ops read to trust the gate."""
    m = str(result.primary_metric)
    lines = [
        f"# Classical baselines ({m}; the gate's baseline is the best on validation)",
        "",
        f"| method | val {m} | test {m} | chosen | seconds | settings |",
        "| --- | ---: | ---: | :---: | ---: | --- |",
    ]
    for c in result.baseline_candidates:
        settings = ", ".join(f"{k}={v}" for k, v in c["params"].items())
        lines.append(
            f"| {c['name']} | {c['val_metric']:.4f} | {c['test_metrics'][m]:.4f} | "
            f"{'yes' if c['chosen'] else ''} | {c['seconds']:.2f} | {settings} |"
        )
    net_val = result.val_metrics.get(f"val_{m}")
    lines.append(
        f"| **network** | {'-' if net_val is None else f'{net_val:.4f}'} | "
        f"{result.test_value:.4f} | | {result.train_seconds:.2f} | |"
    )
    return "\n".join(lines) + "\n"


@task(
    name="log-figures",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def log_figures(uri: str, run_id: str, result: training.TrainResult, title: str) -> list[str]:
    """Learning curves once there is a curve (two epochs or more: one point shows nothing), then
    the figure that fits the task. Returns artifact paths."""
    client = tracking.client_for(uri)
    data = result.data
    logged = []
    if len(result.history) >= 2:
        fig = figures.learning_curves(result.history, title)
        client.log_figure(run_id, fig, "figures/learning_curves.png")
        logged.append("figures/learning_curves.png")
    output = np.asarray(result.test_output)
    if data.task in figures.CLASSIFIER_TASKS:
        fig = figures.confusion_matrix(data.y_test, output, list(data.labels or []), title)
        client.log_figure(run_id, fig, "figures/confusion_matrix.png")
        logged.append("figures/confusion_matrix.png")
    elif data.task == "forecast":
        fig = figures.forecast_vs_truth(data.y_test, output, title)
        client.log_figure(run_id, fig, "figures/forecast_vs_truth.png")
        logged.append("figures/forecast_vs_truth.png")
    elif data.task == "regression":
        fig = figures.regression_scatter(data.y_test, output, title)
        client.log_figure(run_id, fig, "figures/predicted_vs_true.png")
        logged.append("figures/predicted_vs_true.png")
    elif data.task == "next-token":
        text = figures.next_word_samples(
            data.x_test, data.y_test, output, list(data.vocabulary or [])
        )
        client.log_text(run_id, text, "figures/next_word_samples.txt")
        logged.append("figures/next_word_samples.txt")
    return logged


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_model(
    result: training.TrainResult, path: str, run_id: str, model_name: str
) -> training.ExportReport:
    """Export with training's parity check; ExportError (parity failure) stops the flow."""
    return training.export_onnx(
        result, Path(path), extra_metadata={"mlflow_run_id": run_id, "model_name": model_name}
    )


@task(
    name="log-model",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def log_model(uri: str, run_id: str, onnx_path: str, example: np.ndarray) -> str:
    """Log the ONNX file as the run's MLflow model with an explicit signature; return its URI.

    The signature comes from the file's own inputs/outputs, with -1 on every dynamic axis, so
    it cannot disagree with the graph. Weights stay inside one file (contracts.md).
    """
    import mlflow
    import mlflow.onnx
    import onnx
    import onnxruntime as ort
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from serving.datatypes import NUMPY_OF
    from serving.devices import select_providers
    from serving.runtime import OnnxModel

    client = _client(uri)
    # The logged model belongs to the run's experiment (hence its artifact location), which
    # MLflow takes from the fluent "current experiment" when no fluent run is active.
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    model = OnnxModel(onnx_path)
    # Only providers whose libraries load here: MLflow validates the input example with them.
    providers, _ = select_providers()

    def schema(specs_: list[Any]) -> Schema:
        return Schema(
            [
                TensorSpec(np.dtype(NUMPY_OF.get(s.datatype, np.float32)), s.shape, s.name)
                for s in specs_
            ]
        )

    signature = ModelSignature(inputs=schema(model.inputs), outputs=schema(model.outputs))
    in_dtype = NUMPY_OF.get(model.inputs[0].datatype, np.float32)
    info = mlflow.onnx.log_model(
        onnx.load(onnx_path),
        name="model",
        signature=signature,
        input_example=np.asarray(example).astype(in_dtype),
        save_as_external_data=False,
        onnx_execution_providers=providers,
        # Explicit, so MLflow does not spend seconds inferring them in a subprocess.
        pip_requirements=[
            f"onnxruntime=={ort.__version__}",
            f"onnx=={onnx.__version__}",
            f"numpy=={np.__version__}",
        ],
        run_id=run_id,
    )
    return str(info.model_uri)


@task(
    name="register-version",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def register_version(
    uri: str, model_name: str, model_uri: str, run_id: str, tags: dict[str, str]
) -> str:
    """Register (idempotently per run: a retried task reuses its version) and wait for READY."""
    client = tracking.client_for(uri)
    for mv in client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'"):
        if mv.status == "READY":
            return str(mv.version)
    return str(registry.create_version(client, model_name, model_uri, run_id, tags).version)


@task(
    name="score-champion",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def score_champion(
    uri: str,
    model_name: str,
    candidate_version: str,
    *,
    candidate_path: str,
    x_test: np.ndarray,
    y_test: np.ndarray,
    task_name: str,
    metric_name: str,
) -> gate.ChampionScore | None:
    """Re-score the current champion's ONNX file on the candidate's test split.

    Stored metrics are not comparable across runs (other seed, other limit, other split); the
    same rows through the champion's own file are.
    """
    client = _client(uri)
    champ = registry.find_champion(client, model_name)
    if champ is None or str(champ.version) == candidate_version:
        return None
    champion_path = registry.download_onnx(client, champ)
    metric = onnx_metric(champion_path, x_test, y_test, task_name, metric_name)
    if isinstance(metric, str):
        return gate.ChampionScore(str(champ.version), None, metric)
    # The candidate through the same code path (its ONNX file, same rows): ties stay ties
    # instead of being decided by float noise between torch and ONNX Runtime.
    mine = onnx_metric(candidate_path, x_test, y_test, task_name, metric_name)
    return gate.ChampionScore(
        str(champ.version), metric, candidate_metric=None if isinstance(mine, str) else mine
    )


def onnx_metric(
    path: str | Path, x_test: np.ndarray, y_test: np.ndarray, task_name: str, metric_name: str
) -> float | str:
    """``metric_name`` of an ONNX file on a split, or a string saying why it cannot run it."""
    from serving.datatypes import NUMPY_OF
    from serving.runtime import OnnxModel

    model = OnnxModel(path, intra_op_threads=2)
    spec = model.inputs[0]
    x = np.asarray(x_test).astype(NUMPY_OF.get(spec.datatype, np.float32))
    fixed = [(i, d) for i, d in enumerate(spec.shape) if d != -1]
    if x.ndim != len(spec.shape) or any(x.shape[i] != d for i, d in fixed):
        return f"it expects input shape {list(spec.shape)}, the test split has {list(x.shape)}"
    outputs = []
    for start in range(0, len(x), 1024):
        outputs.append(model.run({spec.name: x[start : start + 1024]})[model.output_names[0]])
    scores = training.evaluate(task_name, y_test, np.concatenate(outputs))
    if metric_name not in scores:
        raise GateError(f"evaluate() returned no {metric_name!r} for {path}")
    return float(scores[metric_name])


@task(
    name="record-decision",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def record_decision(uri: str, model_name: str, version: str, decision: gate.GateDecision) -> None:
    """The verdict on the version (tags + description); marks it ready for an alias."""
    registry.record_decision(
        tracking.client_for(uri),
        model_name,
        version,
        alias=decision.alias,
        reason=decision.reason,
        overridden=decision.overridden,
    )


@task(
    name="set-alias",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def set_alias(uri: str, model_name: str, alias: str, version: str) -> None:
    """The last step: move the alias."""
    registry.set_alias(tracking.client_for(uri), model_name, alias, version)


def _artifact_key(model_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = "".join(ch if ch.isalnum() else "-" for ch in model_name.lower()).strip("-")
    return f"train-{key}"


def summary_markdown(o: TrainOutcome, figures_logged: list[str]) -> str:
    """The run summary ops read in Prefect: metrics against the baseline, verdict, locations."""
    better = "higher" if o.higher_is_better else "lower"
    lines = [
        f"# {o.model_name} v{o.version} -> `@{o.alias}`",
        "",
        f"**Gate:** {'passed' if o.gate_passed else 'not passed'}"
        f"{' (overridden by --promote)' if o.overridden else ''} - {o.reason}",
        "",
        f"Primary metric: `{o.metric_name}` ({better} is better)",
        "",
        f"Baseline: `{o.baseline_name}` (best on validation of {len(o.baselines)} classical "
        "methods; all of them in the run's `baselines.md`)",
        "",
        "| metric | model (test) | baseline (test) |",
        "| --- | --- | --- |",
    ]
    for key in sorted(set(o.test_metrics) | set(o.baseline_metrics)):
        model_v = o.test_metrics.get(key)
        base_v = o.baseline_metrics.get(key)
        lines.append(
            f"| {key} | {'-' if model_v is None else f'{model_v:.4f}'} | "
            f"{'-' if base_v is None else f'{base_v:.4f}'} |"
        )
    champ = (
        f"v{o.previous_champion}: {o.champion_metric:.4f}"
        if o.previous_champion and o.champion_metric is not None
        else (f"v{o.previous_champion} (not comparable)" if o.previous_champion else "none")
    )
    lines += [
        "",
        f"Previous champion on the same test split: {champ}",
        f"ONNX parity max diff: {o.parity_max_diff:.2e} (tolerance {PARITY_TOLERANCE})",
        "",
        "## Where",
        f"- registered model: `models:/{o.model_name}/{o.version}` (alias `@{o.alias}`)",
        f"- MLflow run: `{o.run_id}` in experiment `{o.experiment_id}`",
        f"- tracking URI: `{o.tracking_uri}`",
        f"- logged model: `{o.model_uri}`",
        f"- figures: {', '.join(f'`{f}`' for f in figures_logged)}",
    ]
    return "\n".join(lines) + "\n"


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def train_and_log(
    uri: str, run_id: str, spec_dict: dict[str, Any], title: str, progress: bool = False
) -> tuple[training.TrainResult, list[str]]:
    """Train inside an open run and log everything but the model (shared with compare)."""
    result = train_model(spec_dict, uri, run_id, progress)
    log_results(uri, run_id, result, str(spec_dict["data"]))
    logged = log_figures(uri, run_id, result, title)
    return result, logged


def _export_and_register(
    uri: str, run_id: str, name: str, result: training.TrainResult, onnx_path: str
) -> tuple[float, str]:
    """Export with the parity check, log the model, register a version; (parity, version)."""
    client = tracking.client_for(uri)
    try:
        report = export_model(result, onnx_path, run_id, name)
    except training.ExportError as exc:
        client.set_tag(run_id, "neuroserve.parity", "failed")
        raise PipelineError(f"ONNX export of {name} failed its parity check: {exc}") from exc
    parity = float(report.max_diff)
    tracking.log_metrics(
        client,
        run_id,
        {
            "parity_max_diff": parity,
            "onnx_size_bytes": report.size_bytes,
            **tracking.provider_parity_metrics(report),
        },
    )
    client.set_tag(run_id, "neuroserve.parity", "passed")
    for key, value in tracking.provider_parity_tags(report).items():
        client.set_tag(run_id, key, value)
    model_uri = log_model(uri, run_id, onnx_path, np.asarray(result.data.x_test[:2]))
    version_tags = {
        "neuroserve.data_sha256": str(result.data.sha256),
        listing.PRIMARY_METRIC_TAG: str(result.primary_metric),
        tracking.SPEC_TAG: tracking.spec_json(result.spec),
        "neuroserve.git_commit": tracking.git_commit(),
    }
    return parity, register_version(uri, name, model_uri, run_id, version_tags)


@task(
    name="log-reference",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def log_reference(
    uri: str, run_id: str, onnx_path: str, result: training.TrainResult, *, name: str, version: str
) -> int:
    """Store the version's reference profile with its run (``monitor.REFERENCE_ARTIFACT``), so
    monitoring can tell what "normal" looked like. Returns its rows."""
    import pyarrow.parquet as pq

    from pipelines import monitor

    table = monitor.reference_profile(onnx_path, result, name, version)
    artifact = Path(monitor.REFERENCE_ARTIFACT)
    with tempfile.TemporaryDirectory(prefix="neuroserve-reference-") as tmp:
        path = Path(tmp) / artifact.name
        pq.write_table(table, path)
        tracking.client_for(uri).log_artifact(run_id, str(path), str(artifact.parent))
    return int(table.num_rows)


@flow(name="train", log_prints=True)
def train_flow(
    spec_dict: dict[str, Any],
    model_name: str | None = None,
    promote: bool = False,
    progress: bool = False,
) -> TrainOutcome:
    """Train one model from a spec and register it through the quality gate.

    ``progress`` shows a per-epoch bar on the terminal (the CLI turns it on).
    """
    logger = get_run_logger()
    spec = specs.spec_from_dict(spec_dict)
    name = model_name or specs.default_model_name(str(spec.kind), str(spec.data))
    spec_dict = spec.to_dict()
    # --device cuda without a GPU (e.g. a retrain on a CPU worker): one line, nothing recorded.
    check_device(spec.device, spec.amp)
    uri = open_tracking()
    describe_data(spec_dict)
    experiment_id, run_id = start_run(uri, name, spec_dict, run_name=f"{name}-train")
    # Under --nproc, the launcher's stop must fail the run as a peer's failure, not as Prefect's
    # TerminationSignal: see distributed.launcher_stops.
    with distributed.launcher_stops():
        try:
            result, logged = train_and_log(uri, run_id, spec_dict, name, progress)
            metric = str(result.primary_metric)
            with tempfile.TemporaryDirectory(prefix="neuroserve-export-") as tmp:
                onnx_path = str(Path(tmp) / "model.onnx")
                parity, version = _export_and_register(uri, run_id, name, result, onnx_path)
                log_reference(uri, run_id, onnx_path, result, name=name, version=version)
                champ = score_champion(
                    uri,
                    name,
                    version,
                    candidate_path=onnx_path,
                    x_test=result.data.x_test,
                    y_test=result.data.y_test,
                    task_name=str(result.data.task),
                    metric_name=metric,
                )
            decision = gate.decide(
                gate.GateInput(
                    metric_name=metric,
                    higher_is_better=bool(result.higher_is_better),
                    candidate=float(result.test_metrics[metric]),
                    baseline=float(result.baseline_metrics[metric]),
                    parity_passed=parity <= PARITY_TOLERANCE,
                    parity_max_diff=parity,
                    champion=champ,
                    promote=promote,
                    baseline_name=str(result.baseline_name),
                )
            )
            outcome = TrainOutcome(
                model_name=name,
                version=version,
                alias=decision.alias,
                reason=decision.reason,
                gate_passed=decision.passed,
                overridden=decision.overridden,
                run_id=run_id,
                experiment_id=experiment_id,
                metric_name=metric,
                higher_is_better=bool(result.higher_is_better),
                test_metric=float(result.test_metrics[metric]),
                baseline_metric=float(result.baseline_metrics[metric]),
                champion_metric=champ.metric if champ else None,
                previous_champion=champ.version if champ else None,
                parity_max_diff=parity,
                model_uri=f"models:/{name}/{version}",
                tracking_uri=uri,
                artifact_key=_artifact_key(name),
                test_metrics={k: float(v) for k, v in result.test_metrics.items()},
                baseline_metrics={k: float(v) for k, v in result.baseline_metrics.items()},
                baseline_name=str(result.baseline_name),
                baselines=list(result.baseline_candidates),
            )
            client = tracking.client_for(uri)
            for key, value in {
                "neuroserve.gate": decision.alias,
                "neuroserve.gate.reason": decision.reason,
                "neuroserve.registered_version": version,
            }.items():
                client.set_tag(run_id, key, value)
            record_decision(uri, name, version, decision)
            create_markdown_artifact(
                key=outcome.artifact_key,
                markdown=summary_markdown(outcome, logged),
                description=f"{name} v{version}: {decision.alias}",
            )
            # Last step, on purpose: only a READY, tagged version ever carries an alias.
            set_alias(uri, name, decision.alias, version)
        except BaseException as exc:
            try:
                end_run(uri, run_id, "FAILED", _error_text(exc))
            except Exception as close_exc:  # the store may be what failed; keep the first error
                logger.warning("could not mark run %s failed: %s", run_id, _error_text(close_exc))
            raise
        end_run(uri, run_id, "FINISHED")
    logger.info("%s v%s -> @%s: %s", name, version, decision.alias, decision.reason)
    return outcome


@dataclass
class RetrainReport:
    """One line per registered model in a retrain pass."""

    model_name: str
    ok: bool
    detail: str
    outcome: dict[str, Any] | None = None


@task(
    name="champion-specs",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def champion_specs(uri: str, only: list[str] | None = None) -> list[tuple[str, str | None]]:
    """(model name, spec JSON or None) for every registered model's champion."""
    client = tracking.client_for(uri)
    out: list[tuple[str, str | None]] = []
    for rm in sorted(client.search_registered_models(max_results=1000), key=lambda m: m.name):
        if only and rm.name not in only:
            continue
        champ = registry.find_champion(client, rm.name)
        if champ is None:
            out.append((rm.name, None))
            continue
        text = champ.tags.get(tracking.SPEC_TAG)
        if not text and champ.run_id:
            text = client.get_run(champ.run_id).data.tags.get(tracking.SPEC_TAG)
        out.append((rm.name, text))
    return out


@flow(name="retrain", log_prints=True)
def retrain_flow(models: list[str] | None = None, data: str | None = None) -> list[RetrainReport]:
    """Retrain every registered model (or ``models``) from its champion's stored spec, on
    ``data`` instead of the spec's own when given (e.g. newer data after drift).

    Each model goes through the same train flow and gate; one model failing does not stop the
    others, but the flow fails at the end if any did, so a schedule shows red.
    """
    logger = get_run_logger()
    uri = open_tracking()
    reports: list[RetrainReport] = []
    for name, text in champion_specs(uri, models):
        if text is None:
            reports.append(RetrainReport(name, False, "no champion with a stored spec; skipped"))
            continue
        try:
            spec_dict = specs.spec_from_json(text).to_dict()
            if data is not None:
                spec_dict = specs.spec_from_dict({**spec_dict, "data": data}).to_dict()
            outcome = train_flow(spec_dict, model_name=name)
        except Exception as exc:
            logger.error("retraining %s failed: %s", name, _error_text(exc))
            reports.append(RetrainReport(name, False, _error_text(exc)))
            continue
        reports.append(
            RetrainReport(name, True, f"v{outcome.version} -> @{outcome.alias}", outcome.to_dict())
        )
    failed = [r for r in reports if not r.ok and "skipped" not in r.detail]
    if failed:
        raise PipelineError(
            "retraining failed for " + "; ".join(f"{r.model_name}: {r.detail}" for r in failed)
        )
    return reports
