"""Where the pipelines keep state and how patient they are, read from the environment.

Nothing here imports Prefect, MLflow, torch or serving at module level: the CLI calls
:func:`prepare_environment` before Prefect is imported, because Prefect reads ``PREFECT_HOME`` and
its analytics switches once, at import time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Environment variable names, in one place.
ENV_RETRIES = "NEUROSERVE_RETRIES"
ENV_RETRY_DELAY = "NEUROSERVE_RETRY_DELAY"
#: Rows per ONNX Runtime call in batch scoring (``neuroserve score --batch-size``).
DEFAULT_BATCH_SIZE = 1024
#: Share of drifted input columns that makes a monitoring verdict "drift" (Evidently's default).
DEFAULT_DRIFT_SHARE = 0.5


def home_dir() -> Path:
    """``NEUROSERVE_HOME``; serving.settings is the one place that computes it (contracts.md)."""
    from serving.settings import home_dir as serving_home_dir

    return Path(serving_home_dir())


def prepare_environment() -> None:
    """Point Prefect at ``$NEUROSERVE_HOME/prefect`` (if unset) and switch its analytics off.

    Must run before ``import prefect``; later calls are harmless. Which API server flows use is
    decided afterwards, by ``pipelines.prefect_api.select``.
    """
    if not os.environ.get("PREFECT_HOME"):
        os.environ["PREFECT_HOME"] = str(home_dir() / "prefect")
    # Prefect's ephemeral server cannot create its database in a missing directory.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow's download progress bars would interleave with the one-line answers on stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Prefect's default 20 s is too short on a busy 2-core machine (training in parallel).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # A quiet terminal: the CLI prints its own summary and one red line per user error; Prefect's
    # full logs (tracebacks included) still go to its API and UI. Set this to INFO to see them.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store under ``NEUROSERVE_HOME``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    from serving.settings import default_tracking_uri

    return str(default_tracking_uri())


def artifact_root() -> Path:
    """Where experiments store artifacts: ``$NEUROSERVE_HOME/mlartifacts`` (never ./mlruns)."""
    return home_dir() / "mlartifacts"


#: id(settings) -> (settings, the same for flows run here); the settings object is kept so its id
#: cannot be reused by another.
_FLOW_SETTINGS: dict[int, tuple[Any, Any]] = {}


@contextmanager
def flow_settings() -> Iterator[None]:
    """Prefect settings for flows run in this process: the chosen API, no heartbeats on ours.

    Waits for the shared local server (``pipelines.prefect_api``) if this process uses one, and
    names it in the settings when Prefect was imported before its URL was exported. Flow-run
    heartbeats exist so a server can notice a crashed run, but nothing on the embedded or the
    shared local server listens for them, and Prefect's heartbeat thread costs up to a second at
    the end of every flow run (it sleeps in 1 s steps). On a server of the user's
    (``PREFECT_API_URL``), heartbeats stay on.
    """
    from pipelines import prefect_api

    local = prefect_api.local_url()
    if os.environ.get("PREFECT_API_URL") and local is None:
        yield
        return
    import prefect.context
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    context = prefect.context.get_settings_context()
    updates: dict[Any, Any] = {}
    if context.settings.flows.heartbeat_frequency is not None:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    if local and not context.settings.api.url:
        updates[PREFECT_API_URL] = local
    if not updates:  # nested, or already as wanted
        yield
        return
    # Prefect revalidates every setting on each copy (~0.1 s, as long as scoring 3,000 images),
    # so the copy is made once per settings object and reused.
    base, tuned = _FLOW_SETTINGS.get(id(context.settings), (None, None))
    if base is not context.settings or tuned is None:
        tuned = context.settings.copy_with_update(updates=updates)
        _FLOW_SETTINGS[id(context.settings)] = (context.settings, tuned)
    with prefect.context.SettingsContext(profile=context.profile, settings=tuned):
        yield


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long I/O steps (MLflow, files) retry before giving up."""

    attempts: int
    delay_seconds: float


def retry_policy() -> RetryPolicy:
    """Read ``NEUROSERVE_RETRIES`` (default 3 attempts) and ``NEUROSERVE_RETRY_DELAY`` (2 s)."""
    attempts = int(os.environ.get(ENV_RETRIES, "3"))
    delay = float(os.environ.get(ENV_RETRY_DELAY, "2"))
    return RetryPolicy(attempts=max(1, attempts), delay_seconds=max(0.0, delay))


def task_retries() -> int:
    """Retries (not attempts) for Prefect tasks that do I/O."""
    return retry_policy().attempts - 1


def task_retry_delay() -> float:
    """Seconds between retries of Prefect I/O tasks."""
    return retry_policy().delay_seconds
