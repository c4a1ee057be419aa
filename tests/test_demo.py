"""`neuroserve demo --quick`, the README's first command, end to end in a fresh home.

Real Prefect flows, a real MLflow SQLite store, the real server as a child process, real gRPC
predictions: the newcomer's loop must keep working as the parts change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_quick_demo_trains_serves_and_predicts(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "PREFECT_")) and key != "NEUROSERVE_PREFECT_API"
    }
    env.update(NEUROSERVE_HOME=str(tmp_path), COLUMNS="200")
    neuroserve = Path(sys.executable).parent / "neuroserve"
    result = subprocess.run(
        [
            str(neuroserve),
            "demo",
            "--quick",
            "--grpc-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    # The demo's flows ran on the shared local Prefect server, which outlives the demo.
    server = [str(neuroserve), "server"]
    status = subprocess.run(
        [*server, "status"], capture_output=True, text=True, env=env, check=False
    )
    stopped = subprocess.run(
        [*server, "stop"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, output[-4000:]
    assert status.returncode == 0 and "answering at http://127.0.0.1:" in status.stdout
    assert stopped.returncode == 0 and "stopped (pid" in stopped.stdout
    assert "server ready at 127.0.0.1:" in output
    # Column headers of the three prediction tables (titles may wrap).
    assert "top-3 (label: probability)" in output
    assert "predicted" in output and "truth" in output
    assert "diabetes-fnn" in output and "row" in output
    assert "server stopped (exit code 0)" in output
    # Everything landed in this home, nowhere else.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Registry URI explicit: other tests' fixtures may have set MLFLOW_REGISTRY_URI for the session.
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    for name in ("mnist-cnn", "sunspots-lstm", "diabetes-fnn"):
        version = client.get_model_version_by_alias(name, "champion")
        tags = version.tags
        assert tags["neuroserve.gate"] == "champion"
        # --quick overrides the gate only where the small model would not pass it; either way
        # the version says which it was.
        if tags["neuroserve.gate.overridden"] == "True":
            assert "--promote" in tags["neuroserve.gate.reason"], name
        else:
            assert "beats the baseline" in tags["neuroserve.gate.reason"], name
    assert (tmp_path / "prefect").is_dir()
    assert not (ROOT / "mlruns").exists()
