"""The shared local Prefect server: started once, reused, replaced when dead or outdated, never
started twice by commands that race, and no lock left behind by anything killed.

Every test starts real ``prefect server start`` processes under its own PREFECT_HOME and stops
them at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from pipelines import prefect_api
from pipelines.cli import app
from pipelines.errors import PipelineError
from tests.blocking import NEUROSERVE, ROOT, run_blocked, run_together


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PREFECT_HOME for the module: its database is migrated once (the slow part of a first
    start), so later starts here cost what a restart costs."""
    return tmp_path_factory.mktemp("prefect-api")


@pytest.fixture
def prefect_home(shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PREFECT_HOME for one test; whatever server it started is stopped afterwards."""
    home = shared_home / "prefect"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("NEUROSERVE_HOME", str(shared_home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv(prefect_api.ENV_MODE, raising=False)
    yield home
    prefect_api.stop()
    for proc in _servers(home):  # anything a failed test left behind
        proc.kill()


def _servers(home: Path) -> list[psutil.Process]:
    """Every ``prefect server start`` process whose PREFECT_HOME is ``home``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            ours = "server" in cmd and "start" in cmd and "prefect" in " ".join(cmd)
            if ours and proc.environ().get("PREFECT_HOME") == str(home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _state(home: Path) -> dict[str, object]:
    return dict(json.loads((home / prefect_api.STATE_FILE).read_text()))


def test_commands_started_together_share_one_server_which_later_ones_reuse(
    prefect_home: Path,
) -> None:
    code = "from pipelines import prefect_api; print(prefect_api.ensure())"
    results = run_together(code, 3)
    urls = {out.strip() for _, out, _ in results}
    assert len(urls) == 1 and all(rc == 0 for rc, _, _ in results), urls
    assert len(_servers(prefect_home)) == 1
    (url,) = urls
    first = _state(prefect_home)
    assert prefect_api.healthy(url) and url == f"http://127.0.0.1:{first['port']}/api"
    assert prefect_api.ensure() == url and _state(prefect_home) == first
    status = CliRunner().invoke(app, ["server", "status"], terminal_width=300)
    assert status.exit_code == 0 and f"answering at {url}" in status.output
    stopped = CliRunner().invoke(app, ["server", "stop"])
    assert stopped.exit_code == 0 and f"stopped (pid {first['pid']}" in stopped.output
    assert not prefect_api.healthy(url) and not (prefect_home / prefect_api.STATE_FILE).exists()
    assert not _servers(prefect_home)
    again = CliRunner().invoke(app, ["server", "stop"])
    assert "was not running" in again.output
    status = CliRunner().invoke(app, ["server", "status"])
    assert status.exit_code == 1 and "not running" in status.output


def test_a_killed_server_or_starter_blocks_nothing_and_an_outdated_one_is_replaced(
    prefect_home: Path,
) -> None:
    prefect_api.ensure()
    old = _state(prefect_home)
    os.killpg(int(str(old["pid"])), signal.SIGKILL)
    psutil.Process(int(str(old["pid"]))).wait(timeout=10)
    assert not prefect_api.status().running
    # A command killed while it held the check-and-spawn lock.
    code = (
        "import time; from pathlib import Path; from pipelines import prefect_api\n"
        f"with prefect_api._locked(Path({str(prefect_home)!r})):\n"
        "    print('locked', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=10)
    url = prefect_api.ensure()
    replaced = _state(prefect_home)
    assert replaced["pid"] != old["pid"] and prefect_api.healthy(url)
    # A server left running by another Prefect version is stopped and replaced.
    (prefect_home / prefect_api.STATE_FILE).write_text(
        json.dumps({**replaced, "prefect_version": "0.0.1"})
    )
    url = prefect_api.ensure()
    current = _state(prefect_home)
    assert current["pid"] != replaced["pid"] and prefect_api.healthy(url)
    assert [p.pid for p in _servers(prefect_home)] == [current["pid"]]


def test_ephemeral_mode_starts_nothing(prefect_home: Path) -> None:
    code = (
        "import os; from pipelines import prefect_api; prefect_api.select(); "
        "print(os.environ.get('PREFECT_API_URL'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        prefect_api.ENV_MODE: "ephemeral",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "None" and not _servers(prefect_home)


def test_a_bad_mode_is_one_clear_error(prefect_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(prefect_api.ENV_MODE, "cloud")
    with pytest.raises(PipelineError, match=r"NEUROSERVE_PREFECT_API='cloud' is not one of"):
        prefect_api.mode()
    result = run_blocked(
        NEUROSERVE,
        ["neuroserve", "retrain"],
        blocked=(),
        env={prefect_api.ENV_MODE: "cloud", "PREFECT_HOME": str(prefect_home)},
    )
    assert result.returncode == 2 and "local, ephemeral" in result.stderr
    assert not _servers(prefect_home)
