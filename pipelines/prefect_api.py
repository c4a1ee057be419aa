"""The Prefect API a command talks to: the user's, a shared local server, or the embedded one.

Prefect's embedded ("ephemeral") mode starts an API server inside each command and throws it away
at the end; on a small machine that costs several seconds per command, most of it polling for
readiness. Instead, the first command that needs an API starts ``prefect server start`` on
loopback in the background, under ``$NEUROSERVE_HOME/prefect`` (the same database the embedded
mode used), and later commands reuse it. ``neuroserve server stop|status`` manage it.

Why not ``prefect server start --background``: it keeps only a PID file, refuses to start while
that file exists (so a killed server blocks the next start until someone deletes it), and knows
no port or health. Here the state file records pid, process start time, port and Prefect version,
and every reader checks all of them, so a crashed, killed or outdated server is detected and
replaced. The only lock is an ``flock`` (``filelock``) held for the few milliseconds of
check-and-spawn; the kernel drops it when its holder dies, so a killed command never blocks the
next.

Set ``PREFECT_API_URL`` to use a server of your own (nothing is started; it must answer), or
``NEUROSERVE_PREFECT_API=ephemeral`` to get Prefect's per-command embedded server back.
:func:`select` decides, once per process and before Prefect is imported (Prefect reads its
settings at import).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from filelock import FileLock

from pipelines.errors import PipelineError, PrefectUnavailableError

#: ``NEUROSERVE_PREFECT_API``: which Prefect API commands use when ``PREFECT_API_URL`` is unset.
ENV_MODE = "NEUROSERVE_PREFECT_API"
LOCAL, EPHEMERAL = "local", "ephemeral"
MODES = (LOCAL, EPHEMERAL)
#: How long a starting server may take to answer its health check (a fresh database migrates).
START_TIMEOUT_S = 120.0
#: How long a stopping server gets before it is killed.
STOP_TIMEOUT_S = 15.0
STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
LOG_FILE = "server.log"


def mode() -> str:
    """``local`` (the default) or ``ephemeral``; anything else is a clear error."""
    value = os.environ.get(ENV_MODE, LOCAL).strip().lower() or LOCAL
    if value not in MODES:
        raise PipelineError(
            f"{ENV_MODE}={os.environ[ENV_MODE]!r} is not one of {', '.join(MODES)}: "
            f"'{LOCAL}' shares one background Prefect server between commands, "
            f"'{EPHEMERAL}' starts Prefect's embedded server inside each command"
        )
    return value


def prefect_home() -> Path:
    """Where the server keeps its database, state file and log (``PREFECT_HOME``)."""
    from pipelines import settings

    settings.prepare_environment()
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


@dataclass(frozen=True)
class ServerState:
    """What the state file records about the background server."""

    pid: int
    #: The process's start time (psutil's ``create_time``): a reused pid has another one.
    created: float
    port: int
    prefect_version: str
    started_at: float

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def _read_state(home: Path) -> ServerState | None:
    try:
        return ServerState(**json.loads((home / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None  # missing or from another layout: treated as no server


def _write_state(home: Path, state: ServerState) -> None:
    tmp = home / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    tmp.replace(home / STATE_FILE)


def _prefect_version() -> str:
    return metadata.version("prefect")


def _alive(state: ServerState) -> bool:
    """The recorded process still runs, and it is the same process (not a reused pid)."""
    import psutil

    try:
        proc = psutil.Process(state.pid)
        if abs(proc.create_time() - state.created) >= 1.0:
            return False
        if proc.status() == psutil.STATUS_ZOMBIE:  # exited; reap it if this process spawned it
            with suppress(ChildProcessError):
                os.waitpid(state.pid, os.WNOHANG)
            return False
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def healthy(api_url: str, timeout: float = 3.0) -> bool:
    """True when ``<api_url>/health`` answers 200."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def check_api(api_url: str) -> None:
    """Raise PrefectUnavailableError (naming the URL) unless the API answers, with retries."""
    from pipelines import settings

    policy = settings.retry_policy()
    for attempt in range(policy.attempts):
        if healthy(api_url):
            return
        if attempt + 1 < policy.attempts:
            time.sleep(policy.delay_seconds)
    raise PrefectUnavailableError(
        f"Prefect API at PREFECT_API_URL={api_url} does not answer ({policy.attempts} attempts); "
        "start it (`prefect server start`) or unset PREFECT_API_URL"
    )


def _locked(home: Path) -> FileLock:
    """Exclusive lock for check-and-spawn (``flock``: the kernel drops it if its holder dies)."""
    return FileLock(home / LOCK_FILE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(home: Path) -> ServerState:
    """Start ``prefect server start`` detached from this command (its own session, output to
    the log), so it survives the command and a Ctrl-C in the terminal does not reach it."""
    import psutil

    port = _free_port()
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_HOME"] = str(home)
    cmd = [sys.executable, "-m", "prefect", "server", "start"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    with (home / LOG_FILE).open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    state = ServerState(
        pid=proc.pid,
        created=psutil.Process(proc.pid).create_time(),
        port=port,
        prefect_version=_prefect_version(),
        started_at=time.time(),
    )
    _write_state(home, state)
    return state


def _terminate(state: ServerState, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after ``timeout``."""
    if not _alive(state):
        return
    try:
        os.killpg(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(state):
            return
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.killpg(state.pid, signal.SIGKILL)


def begin() -> ServerState:
    """A running server, or one just spawned; does not wait for it to answer.

    Returning before the server is ready lets the caller import torch and the flows while it
    boots; :func:`wait` blocks only when the API is actually needed. Called under the lock, so two
    commands started together find one server: the second sees the first one's state file and
    a live process, and waits for it.
    """
    home = prefect_home()
    with _locked(home):
        state = _read_state(home)
        if state is not None and _alive(state):
            current = state.prefect_version == _prefect_version()
            booting = time.time() - state.started_at < START_TIMEOUT_S
            if current and (booting or healthy(state.api_url)):
                return state
            _terminate(state)  # outdated Prefect, or alive but no longer answering
        return _spawn(home)


def wait(state: ServerState, timeout: float = START_TIMEOUT_S) -> str:
    """Block until the server answers; its API URL. Names the log when it does not."""
    log = prefect_home() / LOG_FILE
    deadline = state.started_at + timeout
    while True:
        if healthy(state.api_url):
            return state.api_url
        if not _alive(state):
            raise PrefectUnavailableError(
                f"the local Prefect server (pid {state.pid}) exited before it answered; see {log}"
            )
        if time.time() > deadline:
            raise PrefectUnavailableError(
                f"the local Prefect server on {state.api_url} did not answer within "
                f"{timeout:.0f} s; see {log}, or run `neuroserve server stop` and retry"
            )
        time.sleep(0.1)


def ensure() -> str:
    """The URL of a healthy local server, starting one if needed."""
    return wait(begin())


@dataclass(frozen=True)
class Status:
    """What ``neuroserve server status`` reports."""

    state: ServerState | None
    running: bool
    healthy: bool
    log: Path


def status() -> Status:
    """The recorded server, whether its process runs and whether it answers."""
    home = prefect_home()
    state = _read_state(home)
    running = state is not None and _alive(state)
    ok = running and state is not None and healthy(state.api_url)
    return Status(state=state, running=running, healthy=ok, log=home / LOG_FILE)


def stop() -> ServerState | None:
    """Stop the background server if one runs; the state it had (None when none ran)."""
    home = prefect_home()
    with _locked(home):
        state = _read_state(home)
        if state is None:
            return None
        running = _alive(state)
        _terminate(state)
        (home / STATE_FILE).unlink(missing_ok=True)
        return state if running else None


#: The local server this process started or reuses (see :func:`select`): at most one.
_local: list[ServerState] = []


def select() -> None:
    """Choose the Prefect API for this process; call before ``import prefect``.

    ``PREFECT_API_URL`` set by the user: check that it answers. A Prefect already imported with
    an API configured (a profile, a test harness): use it. Otherwise, in ``local`` mode, begin
    (or find) the shared local server and export its URL for this process and its children; the
    caller waits for it only when a flow is about to run (:func:`local_url`).
    """
    url = os.environ.get("PREFECT_API_URL")
    if url and not any(url == s.api_url for s in _local):
        check_api(url)
        return
    if "prefect" in sys.modules:
        from prefect.settings import get_current_settings

        if get_current_settings().api.url:
            return
    if mode() == EPHEMERAL:
        return
    _local[:] = [begin()]
    os.environ["PREFECT_API_URL"] = _local[0].api_url


def local_url() -> str | None:
    """The shared local server's URL once it answers, if this process uses one."""
    return wait(_local[0]) if _local else None
