"""Fixtures for the pipelines tests: a real Prefect (test harness, one per session), a real MLflow
SQLite store per test (copied from one migrated template, since migrating costs ~3 s), real ONNX
files trained by ``training/`` at tiny sizes.

Environment is set before Prefect is imported: Prefect reads PREFECT_HOME once, at import.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="neuroserve-pipelines-tests-"))
os.environ["NEUROSERVE_HOME"] = str(_SESSION_DIR / "home")
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
os.environ["NEUROSERVE_RETRIES"] = "2"
os.environ["NEUROSERVE_RETRY_DELAY"] = "0.1"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

from prefect.testing.utilities import prefect_test_harness  # noqa: E402

#: A config that beats the strongest baseline in seconds (sunspots: RMSE ~15 vs an
#: autoregression's ~17.6, chosen on validation).
GOOD = {"kind": "gru", "data": "sunspots", "epochs": 8, "lr": 3e-3}
#: A deliberately worse config: one epoch at a learning rate far too large, which wrecks the
#: forecaster's fitted start (a tiny rate no longer makes a bad model: the net starts as the
#: autoregression it is judged against).
WORSE = {"kind": "gru", "data": "sunspots", "epochs": 1, "lr": 0.3}
#: The registered model name both get by default.
NAME = "sunspots-gru"


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect database and server for the whole session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow SQLite database, copied into each test's home."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path) -> Path:
    """NEUROSERVE_HOME for one test, holding its own MLflow store; cwd is a scratch dir so a
    stray ./mlruns would be noticed."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    monkeypatch.setenv("NEUROSERVE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


@pytest.fixture
def client(home: Path) -> Any:
    """An MLflow client on this test's store."""
    from pipelines.tracking import client_for

    return client_for(f"sqlite:///{home / 'mlflow.db'}")


@dataclass
class Exported:
    """A trained model exported to ONNX, with the split it was trained on."""

    path: Path
    result: Any


def _export(tmp: Path, **spec: Any) -> Exported:
    import training

    result = training.train(training.TrainSpec(**spec))
    path = tmp / f"{spec['data']}-{spec['kind']}.onnx"
    training.export_onnx(result, path)
    return Exported(path, result)


@pytest.fixture(scope="session")
def table_model(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A binary classifier on breast-cancer's 30 named features."""
    return _export(tmp_path_factory.mktemp("table"), kind="fnn", data="breast-cancer", epochs=2)


@pytest.fixture(scope="session")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A CNN on 8x8 digits."""
    return _export(tmp_path_factory.mktemp("image"), kind="cnn", data="digits", epochs=1, limit=300)


@pytest.fixture(scope="session")
def series_model(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A one-step forecaster on sunspots with a 20-step window."""
    return _export(tmp_path_factory.mktemp("series"), kind="lstm", data="sunspots", epochs=1)
