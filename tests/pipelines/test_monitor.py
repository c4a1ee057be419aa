"""The loop, closed: train (a reference profile is stored with the run), serve with capture on,
send data, `neuroserve monitor`, see the verdict, see retraining start on drift and the gate
decide. Real flows, a real MLflow store, the real server as a child process, real Parquet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines import listing, monitor
from pipelines.cli import app
from pipelines.flows import train_flow
from tests.ports import free_port

NAME = "breast-cancer-fnn"
ROWS = 300


@contextlib.contextmanager
def _server(home: Path, captures: Path) -> Iterator[str]:
    """The champion served with every request captured; SIGTERM closes the capture files."""
    from pipelines.demo import wait_ready

    port = free_port()
    command = [
        sys.executable, "-m", "serving", "--model-names", NAME,
        "--tracking-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--grpc-port", str(port), "--http-port", "-1", "--metrics-port", str(free_port()),
        "--capture-rate", "1", "--capture-dir", str(captures),
    ]  # fmt: skip
    with (home / "demo-server.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    try:
        wait_ready(proc, f"127.0.0.1:{port}", [NAME])
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def _send(address: str, x: np.ndarray) -> None:
    from serving.client import InferenceClient

    with InferenceClient(address) as client:
        for start in range(0, len(x), 25):
            client.predict(NAME, x[start : start + 25])


def _monitor(*args: str) -> Any:
    result = CliRunner().invoke(app, ["monitor", NAME, *args], terminal_width=300)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    """Rows the model never trained on, drawn with replacement up to ROWS."""
    import training

    data = training.load_dataset(training.TrainSpec(kind="fnn", data="breast-cancer"))
    x = np.concatenate([data.x_val, data.x_test]).astype(np.float32)
    return x[np.random.default_rng(7).integers(0, len(x), ROWS)]


def test_monitor_sees_no_drift_then_drift_and_retrains(
    home: Path, client: Any, held_out: np.ndarray, tmp_path: Path
) -> None:
    # Promoted by hand (recorded as such): a 3-epoch net need not beat the baseline here.
    first = train_flow({"kind": "fnn", "data": "breast-cancer", "epochs": 3}, promote=True)
    profile = pq.read_table(
        client.download_artifacts(first.run_id, monitor.REFERENCE_ARTIFACT, str(tmp_path))
    )
    sources = profile.column("source").to_pylist()
    assert {"train", "test"} == set(sources) and "input.mean radius" in profile.column_names
    assert "prediction" in profile.column_names  # the test rows carry the model's predictions

    # Too few rows yet: a clear verdict, never an alarm, and no retraining.
    (tmp_path / "nothing-yet").mkdir()
    empty = _monitor("--capture-dir", str(tmp_path / "nothing-yet"))
    assert "not enough data yet (n < 200: 0 rows captured)" in empty.output
    missing = CliRunner().invoke(app, ["monitor", NAME, "--capture-dir", str(tmp_path / "typo")])
    assert missing.exit_code == 2 and "typo does not exist" in missing.stderr
    assert "--capture-rate above 0" in missing.stderr

    # The world the model learned from: no drift, nothing retrained.
    same = tmp_path / "same"
    with _server(home, same) as address:
        _send(address, held_out)
    result = _monitor("--capture-dir", str(same))
    assert f"{NAME} v{first.version}: no drift" in result.output
    assert "retrained" not in result.output
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1
    tags = client.get_model_version(NAME, first.version).tags
    assert tags[monitor.VERDICT_TAG] == "no drift" and tags[monitor.VERDICT_AT_TAG]
    report_run = client.get_run(tags[monitor.VERDICT_RUN_TAG])
    assert report_run.data.metrics["rows.current"] == ROWS
    assert report_run.data.metrics["drift.detected"] == 0
    artifacts = {a.path for a in client.list_artifacts(report_run.info.run_id, "monitor")}
    assert artifacts == {"monitor/report.html", "monitor/drift.json"}
    (row,) = listing.summarize(f"sqlite:///{home / 'mlflow.db'}")
    assert row.verdict == "no drift"

    # Features scaled by half again: drift, and retraining starts; the gate decides.
    shifted = tmp_path / "shifted"
    with _server(home, shifted) as address:
        _send(address, held_out * 1.5)
    result = _monitor("--capture-dir", str(shifted))
    assert f"{NAME} v{first.version}: drift" in result.output
    assert "retrained: v2 -> @" in result.output
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["neuroserve.gate"] in {"champion", "challenger"}
    assert v2.tags["neuroserve.gate.reason"]
    verdict = client.get_model_version(NAME, first.version).tags
    assert verdict[monitor.VERDICT_TAG] == "drift"
    assert "input columns drifted" in verdict[monitor.VERDICT_LINE_TAG]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is not a duration"),
        (["--since", "-3h"], "--since '-3h' is not a duration"),
        (["--drift-share", "0"], "--drift-share must be in (0, 1]"),
    ],
)
def test_bad_monitor_options_are_one_red_line(home: Path, args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["monitor", NAME, *args])
    assert result.exit_code == 2 and needle in result.stderr, result.output


def test_monitoring_a_model_that_does_not_exist_names_it(home: Path) -> None:
    result = CliRunner().invoke(app, ["monitor", "nope"])
    assert result.exit_code == 2 and "no registered model named 'nope'" in result.stderr


def test_a_version_without_a_reference_profile_says_how_to_get_one(home: Path, client: Any) -> None:
    """A version trained before monitoring existed: one line saying to retrain it."""
    exp = client.create_experiment("old")
    run_id = client.create_run(exp).info.run_id
    client.create_registered_model("old-model")
    client.create_model_version("old-model", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("old-model", "champion", "1")
    result = CliRunner().invoke(app, ["monitor", "old-model"])
    assert result.exit_code == 2, result.output
    assert "old-model v1 has no reference profile" in result.stderr
    assert "neuroserve retrain -m old-model" in result.stderr
