"""Schedules: the deployment served on cron, prefect.yaml kept in step with it, and the Prefect
API requirement stated plainly (a real local server is started and receives the deployment)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.utilities.importtools import import_object
from typer.testing import CliRunner

from pipelines import prefect_api, schedule
from pipelines.cli import app
from pipelines.errors import PipelineError, PrefectUnavailableError

REPO = Path(__file__).resolve().parents[2]


def test_deployment_retrains_on_cron() -> None:
    (dep,) = schedule.deployments("15 4 * * 1", models=["digits-cnn"])
    assert dep.name == "retrain-all" and dep.parameters == {"models": ["digits-cnn"]}
    (sched,) = dep.schedules
    assert sched.schedule.cron == "15 4 * * 1" and sched.schedule.timezone == "UTC"


def test_bad_cron_is_a_user_error() -> None:
    with pytest.raises(PipelineError, match="not a cron expression"):
        schedule.deployments("every day")
    result = CliRunner().invoke(app, ["schedule", "--cron", "every day"])
    assert result.exit_code == 2 and "not a cron expression" in result.stderr


def test_prefect_yaml_matches_and_its_entrypoints_import(monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in config["deployments"]}
    assert set(by_name) == {schedule.DEPLOYMENT_NAME, schedule.MONITOR_DEPLOYMENT_NAME}
    monkeypatch.chdir(REPO)
    for name, flow_name, cron in (
        (schedule.DEPLOYMENT_NAME, "retrain", schedule.DEFAULT_CRON),
        (schedule.MONITOR_DEPLOYMENT_NAME, "monitor-all", schedule.DEFAULT_MONITOR_CRON),
    ):
        dep = by_name[name]
        flow = import_object(dep["entrypoint"])
        assert isinstance(flow, Flow) and flow.name == flow_name
        assert dep["schedules"][0]["cron"] == cron
        assert dep["work_pool"]["name"]


def test_monitoring_is_scheduled_beside_retraining() -> None:
    retrain, monitor = schedule.deployments("0 3 * * *", ["digits-cnn"], monitor="*/30 * * * *")
    assert monitor.name == schedule.MONITOR_DEPLOYMENT_NAME
    assert monitor.parameters == {"models": ["digits-cnn"]} == retrain.parameters
    assert monitor.schedules[0].schedule.cron == "*/30 * * * *"
    result = CliRunner().invoke(app, ["schedule", "--monitor", "every half hour"])
    assert result.exit_code == 2 and "--monitor 'every half hour' is not a cron" in result.stderr


def test_dead_api_url_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    with (
        pytest.raises(PrefectUnavailableError, match=r"PREFECT_API_URL=http://127\.0\.0\.1:1/api"),
        schedule.schedule_api(),
    ):
        pass


def test_ephemeral_mode_cannot_schedule_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with (
        pytest.raises(PrefectUnavailableError, match="ephemeral mode cannot keep schedules"),
        schedule.schedule_api(start_server=False),
    ):
        pass


def test_local_server_is_started_and_takes_the_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    said: list[str] = []
    try:
        with schedule.schedule_api(say=said.append) as url:
            assert url.startswith("http://127.0.0.1:") and prefect_api.healthy(url)
            (dep,) = schedule.deployments("0 3 * * *")
            deployment_id = dep.apply()
            with get_client(sync_client=True) as client:
                stored = client.read_deployment(deployment_id)
            assert stored.name == "retrain-all"
            assert stored.schedules[0].schedule.cron == "0 3 * * *"
        assert "Using the local Prefect server" in said[0]
        # The shared server outlives the command; `neuroserve server stop` ends it.
        assert prefect_api.healthy(url)
    finally:
        prefect_api.stop()
    assert not prefect_api.healthy(url)
