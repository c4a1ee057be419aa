"""Serve the retraining flows on cron schedules, on one machine, with Prefect's ``serve``.

Schedules live in a Prefect API server: its scheduler creates the flow runs and ``serve`` picks
them up. The embedded (ephemeral) mode every other command uses starts a throw-away server inside
the process and cannot keep schedules, so this command either connects to ``PREFECT_API_URL`` or
starts ``prefect server start`` on loopback for the user and waits until it is healthy.

Teams with a work pool use ``prefect.yaml`` at the repository root instead (same deployments).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import settings
from pipelines.errors import PipelineError, PrefectUnavailableError

DEFAULT_CRON = "0 3 * * *"
DEPLOYMENT_NAME = "retrain-all"
SERVER_START_TIMEOUT = 90.0


def api_healthy(api_url: str, timeout: float = 3.0) -> bool:
    """True when ``<api_url>/health`` answers 200."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def check_api(api_url: str) -> None:
    """Raise PrefectUnavailableError (naming the URL) unless the API answers, with retries."""
    policy = settings.retry_policy()
    for attempt in range(policy.attempts):
        if api_healthy(api_url):
            return
        if attempt + 1 < policy.attempts:
            time.sleep(policy.delay_seconds)
    raise PrefectUnavailableError(
        f"Prefect API at PREFECT_API_URL={api_url} does not answer ({policy.attempts} attempts); "
        "start it (`prefect server start`) or unset PREFECT_API_URL"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalServer:
    """A ``prefect server start`` subprocess on loopback that this process owns."""

    process: subprocess.Popen[bytes]
    api_url: str
    log_path: Path

    def stop(self) -> None:
        """Terminate the server (and only it), waiting briefly before killing it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_local_server(
    port: int | None = None, timeout: float = SERVER_START_TIMEOUT
) -> LocalServer:
    """Start a Prefect server on 127.0.0.1 and wait for its health check.

    Its database lives in ``PREFECT_HOME`` (``$NEUROSERVE_HOME/prefect`` by default), so
    schedules survive restarts; its output goes to ``server.log`` there.
    """
    port = port or _free_port()
    home = Path(os.environ.get("PREFECT_HOME") or settings.home_dir() / "prefect")
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_HOME"] = str(home)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    # Services stay on: the scheduler service is what turns cron into flow runs.
    cmd = [sys.executable, "-m", "prefect", "server", "start"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    api_url = f"http://127.0.0.1:{port}/api"
    server = LocalServer(process, api_url, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectUnavailableError(
                f"`prefect server start` exited with code {process.returncode}; see {log_path}"
            )
        if api_healthy(api_url, timeout=2):
            return server
        time.sleep(0.5)
    server.stop()
    raise PrefectUnavailableError(
        f"Prefect server on {api_url} was not healthy within {timeout:.0f} s; see {log_path}"
    )


@contextmanager
def prefect_api(start_server: bool = True, say: Any = print) -> Iterator[str]:
    """Yield a Prefect API URL that can keep schedules; start a local server if needed.

    ``PREFECT_API_URL`` set: it must answer. Unset: start a server on loopback (or, with
    ``start_server=False``, explain why schedules cannot run in ephemeral mode).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = os.environ.get("PREFECT_API_URL")
    if url:
        check_api(url)
        say(f"Using the Prefect API at {url} (PREFECT_API_URL).")
        yield url
        return
    if not start_server:
        raise PrefectUnavailableError(
            "schedules need a Prefect API server: the embedded ephemeral mode cannot keep "
            "schedules. Set PREFECT_API_URL to a running server, or drop --no-start-server to "
            "let neuroserve start one on 127.0.0.1"
        )
    say(
        "Schedules need a Prefect API server (the embedded ephemeral mode cannot schedule); "
        "PREFECT_API_URL is unset, so starting `prefect server start` on 127.0.0.1 ..."
    )
    server = start_local_server()
    say(f"Prefect server ready at {server.api_url} (UI: {server.api_url.removesuffix('/api')}).")
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            os.environ["PREFECT_API_URL"] = server.api_url  # for the flow-run subprocesses
            try:
                yield server.api_url
            finally:
                os.environ.pop("PREFECT_API_URL", None)
    finally:
        server.stop()


def deployments(cron: str = DEFAULT_CRON, models: list[str] | None = None) -> list[Any]:
    """The runner deployments ``serve`` runs: retrain every (or the listed) model on ``cron``."""
    from prefect.schedules import Cron

    from pipelines.flows import retrain_flow

    try:
        schedule = Cron(cron, timezone="UTC")
    except ValueError as exc:
        raise PipelineError(
            f"--cron {cron!r} is not a cron expression ({exc}); expected five fields, "
            "e.g. '0 3 * * *' (03:00 every day)"
        ) from None
    return [
        retrain_flow.to_deployment(
            name=DEPLOYMENT_NAME,
            schedule=schedule,
            parameters={"models": models} if models else {},
            description="Retrain every registered model from its champion's spec, through the "
            "quality gate.",
            tags=["neuroserve", "retrain"],
        )
    ]


def serve(
    cron: str = DEFAULT_CRON,
    models: list[str] | None = None,
    start_server: bool = True,
    say: Any = print,
) -> None:
    """Block serving the schedules until interrupted."""
    import prefect

    deps = deployments(cron, models)
    with prefect_api(start_server=start_server, say=say):
        say(f"Serving deployment retrain/{DEPLOYMENT_NAME} on cron {cron!r}; Ctrl-C stops.")
        prefect.serve(*deps, print_starting_message=False)
