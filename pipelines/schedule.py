"""Serve the retraining flows on cron schedules, on one machine, with Prefect's ``serve``.

Schedules live in a Prefect API server: its scheduler creates the flow runs and ``serve`` picks
them up. Prefect's embedded mode (a throw-away server inside one process) cannot keep them, so
this command connects to ``PREFECT_API_URL`` or to the shared local server
(``pipelines.prefect_api``), starting it if needed, whatever ``NEUROSERVE_PREFECT_API`` says.

Teams with a work pool use ``prefect.yaml`` at the repository root instead (same deployments).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipelines import prefect_api
from pipelines.errors import PipelineError, PrefectUnavailableError

DEFAULT_CRON = "0 3 * * *"
DEPLOYMENT_NAME = "retrain-all"
#: The monitoring deployment (``neuroserve schedule --monitor CRON``, prefect.yaml).
MONITOR_DEPLOYMENT_NAME = "monitor-all"
#: What prefect.yaml's monitoring deployment runs on.
DEFAULT_MONITOR_CRON = "*/30 * * * *"


@contextmanager
def schedule_api(start_server: bool = True, say: Any = print) -> Iterator[str]:
    """Yield a Prefect API URL that can keep schedules.

    ``PREFECT_API_URL`` set: it must answer. Unset: the shared local server (started if it is
    not running; it keeps running afterwards, like for every other command), or, with
    ``start_server=False``, a clear error saying why an API server is needed.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = os.environ.get("PREFECT_API_URL")
    if url:
        prefect_api.check_api(url)
        say(f"Using the Prefect API at {url} (PREFECT_API_URL).")
        yield url
        return
    if not start_server:
        raise PrefectUnavailableError(
            "schedules need a Prefect API server: the embedded ephemeral mode cannot keep "
            "schedules. Set PREFECT_API_URL to a running server, or drop --no-start-server to "
            "let neuroserve start (or reuse) its local server on 127.0.0.1"
        )
    url = prefect_api.ensure()
    say(
        f"Using the local Prefect server at {url} (UI: {url.removesuffix('/api')}); it keeps "
        "running after this command (`neuroserve server stop` stops it)."
    )
    with temporary_settings(updates={PREFECT_API_URL: url}):
        os.environ["PREFECT_API_URL"] = url  # for the flow-run subprocesses
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def _cron(flag: str, expression: str) -> Any:
    from prefect.schedules import Cron

    try:
        return Cron(expression, timezone="UTC")
    except ValueError as exc:
        raise PipelineError(
            f"{flag} {expression!r} is not a cron expression ({exc}); expected five fields, "
            "e.g. '0 3 * * *' (03:00 every day)"
        ) from None


def deployments(
    cron: str = DEFAULT_CRON, models: list[str] | None = None, monitor: str | None = None
) -> list[Any]:
    """The runner deployments ``serve`` runs: retrain every (or the listed) model on ``cron``;
    with ``monitor``, also check their champions for drift on that cron (retraining on drift)."""
    from pipelines.flows import retrain_flow
    from pipelines.monitor import monitor_all_flow

    parameters = {"models": models} if models else {}
    out = [
        retrain_flow.to_deployment(
            name=DEPLOYMENT_NAME,
            schedule=_cron("--cron", cron),
            parameters=parameters,
            description="Retrain every registered model from its champion's spec, through the "
            "quality gate.",
            tags=["neuroserve", "retrain"],
        )
    ]
    if monitor is not None:
        out.append(
            monitor_all_flow.to_deployment(
                name=MONITOR_DEPLOYMENT_NAME,
                schedule=_cron("--monitor", monitor),
                parameters=parameters,
                description="Compare each champion's recent captures with its reference "
                "profile; retrain on drift (the quality gate decides).",
                tags=["neuroserve", "monitor"],
            )
        )
    return out


def serve(
    cron: str = DEFAULT_CRON,
    models: list[str] | None = None,
    start_server: bool = True,
    say: Any = print,
    monitor: str | None = None,
) -> None:
    """Block serving the schedules until interrupted."""
    import prefect

    deps = deployments(cron, models, monitor)
    with schedule_api(start_server=start_server, say=say):
        say(f"Serving deployment retrain/{DEPLOYMENT_NAME} on cron {cron!r}; Ctrl-C stops.")
        if monitor is not None:
            say(f"Serving deployment monitor-all/{MONITOR_DEPLOYMENT_NAME} on cron {monitor!r}.")
        prefect.serve(*deps, print_starting_message=False)
