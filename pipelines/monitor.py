"""Monitoring: compare what a served model version sees with what it learned from.

The train flow stores a *reference profile* with each run (:func:`reference_profile`, the
artifact :data:`REFERENCE_ARTIFACT`): training inputs and the test split's inputs with the
exported model's own predictions, in the layout the server captures (``serving/capture.py``).
The monitor flow reads a version's recent captures, compares them with its profile
(``pipelines/drift.py``), records the verdict, and starts retraining when drift is found; the
retrained version goes through the quality gate like any other.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipelines import drift, listing
from pipelines.errors import PipelineError
from pipelines.settings import task_retries, task_retry_delay

if TYPE_CHECKING:
    import pyarrow as pa

    import training

IO_RETRIES = task_retries()
IO_RETRY_DELAY = task_retry_delay()

#: Where a run keeps its reference profile.
REFERENCE_ARTIFACT = "reference/profile.parquet"
#: Rows of each split a reference profile keeps (a seeded sample when there are more).
REFERENCE_ROWS = 5000
#: Input kinds whose splits are cut in time (training/data.py): their test split is a later
#: period, not a sample of the training distribution.
CHRONOLOGICAL = ("series", "text")


def reference_profile(
    onnx_path: str, result: training.TrainResult, name: str, version: str
) -> pa.Table:
    """Training inputs (``source=train``) and test inputs with the ONNX model's predictions
    (``source=test``), in the capture layout of this model version."""
    import onnxruntime as ort
    import pyarrow as pa

    from serving.capture import CaptureLayout

    layout = CaptureLayout.from_onnx(onnx_path, name, version)
    (inp,), out = layout.inputs, layout.outputs[0]
    rng = np.random.default_rng(int(result.spec.seed))

    def sample(x: Any) -> np.ndarray:
        x = np.asarray(x)
        if len(x) <= REFERENCE_ROWS:
            return x.astype(inp.dtype)
        return x[np.sort(rng.choice(len(x), REFERENCE_ROWS, replace=False))].astype(inp.dtype)

    x_train, x_test = sample(result.data.x_train), sample(result.data.x_test)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

    def answers(x: np.ndarray) -> dict[str, np.ndarray]:
        return {out.name: session.run([out.name], {inp.name: x})[0]}

    # Predictions are judged against the model's answers to unseen inputs from the training
    # distribution. A shuffled split's test rows are that (its answers to its own training
    # rows are over-confident); a split in time's test rows are a later period, so there the
    # training windows' answers stand in.
    in_time = result.data.input_kind in CHRONOLOGICAL
    return pa.concat_tables(
        [
            layout.rows({inp.name: x_train}, answers(x_train) if in_time else {}, source="train"),
            layout.rows({inp.name: x_test}, {} if in_time else answers(x_test), source="test"),
        ]
    )


# --------------------------------------------------------------------------------------------
# the monitor flow

#: Version tags that carry the last verdict (``neuroserve models`` shows them).
VERDICT_TAG, VERDICT_AT_TAG = listing.VERDICT_TAG, listing.VERDICT_AT_TAG
VERDICT_RUN_TAG = "neuroserve.monitor.run_id"
VERDICT_LINE_TAG = "neuroserve.monitor.line"
#: ``--since`` units.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d``, ``1w``, ``90s``: a window ending now; a clear error otherwise."""
    value = text.strip().lower()
    number, unit = value[:-1], value[-1:]
    try:
        amount = float(number)
    except ValueError:
        amount = math.nan
    if unit not in _UNITS or not math.isfinite(amount) or amount <= 0:
        raise PipelineError(
            f"--since {text!r} is not a duration; expected a positive number and a unit "
            f"({', '.join(_UNITS)}), e.g. 30m, 24h or 7d"
        )
    return timedelta(seconds=amount * _UNITS[unit])


def default_capture_dir() -> str:
    """Where the server writes captures by default (``serving.settings`` decides it)."""
    from serving.settings import Settings

    return Settings().resolved_capture_dir()


@dataclass
class MonitorOutcome:
    """What one monitoring pass found and did."""

    model_name: str
    version: str
    verdict: str
    line: str
    run_id: str
    rows: int
    report: dict[str, Any] = field(default_factory=dict)
    retrain: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@task(
    name="read-reference",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def read_reference(uri: str, name: str, version: str, run_id: str | None) -> pa.Table:
    """The version's reference profile, downloaded from its run."""
    import pyarrow.parquet as pq

    from pipelines import tracking

    client = tracking.client_for(uri)
    missing = PipelineError(
        f"{name} v{version} has no reference profile ({REFERENCE_ARTIFACT} on its run): it was "
        "trained before monitoring existed; retrain it (`neuroserve retrain -m "
        f"{name}`) to start monitoring"
    )
    folder = str(PurePosixPath(REFERENCE_ARTIFACT).parent)
    if not run_id or REFERENCE_ARTIFACT not in {
        a.path for a in client.list_artifacts(run_id, folder)
    }:
        raise missing
    with tempfile.TemporaryDirectory(prefix="neuroserve-monitor-") as tmp:
        return pq.read_table(client.download_artifacts(run_id, REFERENCE_ARTIFACT, tmp))


@task(name="read-captures", cache_policy=NO_CACHE)
def read_current(location: str, name: str, version: str, since: timedelta) -> pa.Table:
    """What the server captured for this version in the window."""
    from serving.capture import CaptureError, read_captures

    try:
        return read_captures(location, name, version=version, since=since)
    except CaptureError as exc:
        raise PipelineError(
            f"cannot read captures: {exc}; the server writes them there when it runs with "
            "--capture-rate above 0 (and --capture-dir, if not the default)"
        ) from None


@task(
    name="record-verdict",
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def record_verdict(
    uri: str, name: str, version: str, report: drift.DriftReport, window: str
) -> str:
    """An MLflow run in the model's experiment (metrics, HTML report, JSON), linked to the
    version, and the verdict on the version's tags; returns the run id."""
    from pipelines import tracking

    client = tracking.client_for(uri)
    experiment_id = tracking.ensure_experiment(client, name)
    tags = {
        "neuroserve.model_name": name,
        "neuroserve.monitor.model_version": version,
        "neuroserve.monitor.window": window,
        VERDICT_TAG: report.verdict,
    }
    run_id = tracking.start_run(client, experiment_id, f"{name}-monitor-v{version}", tags)
    tracking.log_metrics(client, run_id, report.metrics())
    page = drift.report_html(report, f"{name} v{version}: drift")
    client.log_text(run_id, page, "monitor/report.html")
    client.log_dict(run_id, report.to_dict(), "monitor/drift.json")
    client.set_terminated(run_id)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in {
        VERDICT_TAG: report.verdict,
        VERDICT_AT_TAG: when,
        VERDICT_RUN_TAG: run_id,
        VERDICT_LINE_TAG: report.line[:4000],
    }.items():
        client.set_model_version_tag(name, version, key, value)
    return run_id


@flow(name="monitor", log_prints=True)
def monitor_flow(
    model: str,
    *,
    since_hours: float = 24.0,
    drift_share: float = drift.DEFAULT_DRIFT_SHARE,
    retrain: bool = True,
    retrain_data: str | None = None,
    capture_dir: str | None = None,
) -> MonitorOutcome:
    """Compare a served version's recent captures with its reference; retrain on drift.

    ``model`` is ``NAME`` (its champion), ``NAME@ALIAS`` or ``NAME/VERSION``. With drift and
    ``retrain``, the retrain flow trains the model again from its champion's spec (on
    ``retrain_data`` when given) and its quality gate decides whether the new version serves.
    """
    from pipelines import registry, tracking
    from pipelines.flows import open_tracking, retrain_flow

    logger = get_run_logger()
    drift.check_share(drift_share)
    window = timedelta(hours=since_hours)
    uri = open_tracking()
    ref = registry.parse_ref(model)
    if ref.path is not None:
        raise PipelineError(
            f"monitor needs a registered model (NAME, NAME@ALIAS or NAME/VERSION), got {model!r}"
        )
    mv = registry.get_version(tracking.client_for(uri), ref)
    name, version = str(mv.name), str(mv.version)
    reference = read_reference(uri, name, version, mv.run_id)
    # Any: Prefect's task overloads cannot tell an untyped pyarrow return from a coroutine.
    current: Any = read_current(capture_dir or default_capture_dir(), name, version, window)
    report = drift.compare(reference, current, drift_share=drift_share)
    run_id = record_verdict(uri, name, version, report, f"{since_hours:g}h")
    outcome = MonitorOutcome(
        name, version, report.verdict, report.line, run_id, current.num_rows, report.to_dict()
    )
    logger.info("%s v%s: %s", name, version, report.line)
    if report.verdict == "drift" and retrain:
        (done,) = retrain_flow([name], data=retrain_data)
        outcome.retrain = done.detail
    create_markdown_artifact(
        key=f"monitor-{re.sub(r'[^a-z0-9-]', '-', name.lower())}",
        markdown=_markdown(outcome),
        description=f"{name} v{version}: {report.verdict}",
    )
    return outcome


def _markdown(o: MonitorOutcome) -> str:
    lines = [
        f"# {o.model_name} v{o.version}: **{o.verdict}**",
        "",
        o.line,
        "",
        f"- MLflow run: `{o.run_id}` (`monitor/report.html`, `monitor/drift.json`)",
        f"- rows compared: {o.rows}",
    ]
    if o.retrain is not None:
        lines.append(f"- retraining: {o.retrain}")
    return "\n".join(lines) + "\n"


@flow(name="monitor-all", log_prints=True)
def monitor_all_flow(
    models: list[str] | None = None,
    since_hours: float = 24.0,
    drift_share: float = drift.DEFAULT_DRIFT_SHARE,
    retrain: bool = True,
) -> list[dict[str, Any]]:
    """Monitor every registered model's champion (or ``models``); what a schedule runs."""
    from pipelines import listing, settings

    names = [
        r.name
        for r in listing.summarize(settings.tracking_uri())
        if r.champion_version and (not models or r.name in models)
    ]
    return [
        monitor_flow(
            name, since_hours=since_hours, drift_share=drift_share, retrain=retrain
        ).to_dict()
        for name in names
    ]
