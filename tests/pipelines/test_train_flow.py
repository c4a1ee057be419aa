"""The train flow end to end: real Prefect flow, real MLflow SQLite store, real ONNX files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml

from pipelines import registry
from pipelines.errors import TrackingUnavailableError
from pipelines.flows import retrain_flow, train_flow
from tests.pipelines.conftest import GOOD, WORSE


def _artifact_markdown(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as pc:
        found = pc.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no Prefect artifact with key {key}"
    return str(found[0].data)


def _aliases(client: Any) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model("sunspots-gru").aliases.items()}


def test_train_registers_champion_then_gates_worse_config(home: Path, client: Any) -> None:
    first = train_flow(GOOD)
    assert first.model_name == "sunspots-gru"
    assert first.alias == "champion" and first.gate_passed
    assert first.metric_name == "rmse" and first.test_metric < first.baseline_metric
    assert str(client.get_model_version_by_alias("sunspots-gru", "champion").version) == "1"

    # --- what ops review on the run
    run = client.get_run(first.run_id)
    params = run.data.params
    assert params["epochs"] == "8" and params["lr"] == "0.003" and params["window"] == "20"
    history = client.get_metric_history(first.run_id, "val_loss")
    assert [m.step for m in history] == list(range(1, len(history) + 1)) and len(history) >= 2
    assert len(client.get_metric_history(first.run_id, "train_loss")) == len(history)
    metrics = run.data.metrics
    for key in ("test_rmse", "baseline_rmse", "parity_max_diff"):
        assert key in metrics
    # every classical candidate, chosen on validation, is on the run for ops to check
    for name in ("naive-last-value", "seasonal-naive", "ar-levels", "ar-differences"):
        assert f"baseline.{name}.val_rmse" in metrics and f"baseline.{name}.test_rmse" in metrics
    assert params["baseline.ar-levels.order"].isdigit()
    names = ("naive-last-value", "seasonal-naive", "ar-levels", "ar-differences")
    chosen = min(names, key=lambda n: metrics[f"baseline.{n}.val_rmse"])
    assert run.data.tags["neuroserve.baseline"] == chosen
    assert metrics["baseline_rmse"] == metrics[f"baseline.{chosen}.test_rmse"]
    assert metrics["parity_max_diff"] <= 1e-4
    tags = run.data.tags
    assert len(tags["neuroserve.data_sha256"]) == 64
    assert tags["neuroserve.seed"] == "42"
    assert tags["neuroserve.torch_version"].startswith("2.")
    assert {"neuroserve.onnx_version", "neuroserve.onnxruntime_version"} <= set(tags)
    assert tags["neuroserve.git_commit"]  # a commit, or "unknown" outside a repository
    assert json.loads(tags["neuroserve.spec"])["epochs"] == 8
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "figures")}
    assert artifacts == {"figures/learning_curves.png", "figures/forecast_vs_truth.png"}
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == tags["neuroserve.data_sha256"][:36]
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((home / "mlartifacts").as_uri())
    assert not (Path.cwd() / "mlruns").exists()

    # --- the registered ONNX file honours the contract and names its run
    path = registry.download_onnx(client, client.get_model_version("sunspots-gru", "1"))
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["mlflow_run_id"] == first.run_id and meta["model_name"] == "sunspots-gru"
    mlmodel = yaml.safe_load((path.parent / "MLmodel").read_text())
    sig_in = json.loads(mlmodel["signature"]["inputs"])[0]
    assert sig_in["tensor-spec"]["shape"] == [-1, -1, 1]
    assert (path.parent / "input_example.json").exists() or any(
        p.name.startswith("input_example") for p in path.parent.iterdir()
    )

    # --- the Prefect artifact summarises it
    md = _artifact_markdown(first.artifact_key)
    assert "@champion" in md and "baseline" in md and "models:/sunspots-gru/1" in md

    # --- a deliberately worse config is gated to challenger, with the reason everywhere
    second = train_flow(WORSE)
    assert second.version == "2" and second.alias == "challenger" and not second.gate_passed
    # It loses to the strongest baseline, which the reason names.
    assert second.reason.startswith("does not beat the baseline (ar-")
    assert second.baseline_name.startswith("ar-") and len(second.baselines) == 4
    mv = client.get_model_version("sunspots-gru", "2")
    assert mv.tags["neuroserve.gate"] == "challenger"
    assert mv.tags["neuroserve.gate.reason"] == second.reason
    assert second.reason in mv.description
    aliases = _aliases(client)
    assert aliases == {"champion": "1", "challenger": "2"}
    assert second.reason in _artifact_markdown(second.artifact_key)


def test_champion_is_rescored_on_the_same_split_and_retrain_uses_stored_spec(
    home: Path, client: Any
) -> None:
    first = train_flow(GOOD)
    assert first.alias == "champion"
    # Same spec, same seed: the retrained model equals the champion, which was re-scored from
    # its ONNX file on the candidate's test split; a tie does not replace the champion.
    (report,) = retrain_flow()
    assert report.ok and report.outcome is not None
    out = report.outcome
    assert out["version"] == "2" and out["previous_champion"] == "1"
    assert out["champion_metric"] == pytest.approx(first.test_metric, rel=1e-4)
    assert out["alias"] == "challenger" and "champion v1" in out["reason"]
    stored = json.loads(client.get_model_version("sunspots-gru", "2").tags["neuroserve.spec"])
    assert stored["epochs"] == 8 and stored["lr"] == 0.003

    # --promote overrides the gate and the override is recorded on the version
    promoted = train_flow(WORSE, promote=True)
    assert promoted.alias == "champion" and promoted.overridden
    mv = client.get_model_version("sunspots-gru", promoted.version)
    assert mv.tags["neuroserve.gate.overridden"] == "True"
    assert "promoted by --promote" in mv.description


def test_interrupted_flow_leaves_no_alias_and_rerun_succeeds(
    home: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("power cut after registration")

    original = registry.record_decision
    monkeypatch.setattr(registry, "record_decision", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        train_flow(GOOD)
    mv = client.get_model_version("sunspots-gru", "1")
    assert mv.status == "READY" and mv.tags[registry.STATE_TAG] == "registering"
    assert _aliases(client) == {}
    assert client.get_run(mv.run_id).info.status == "FAILED"
    with pytest.raises(Exception, match="refusing to alias"):
        registry.set_alias(client, "sunspots-gru", "champion", "1")

    monkeypatch.setattr(registry, "record_decision", original)
    rerun = train_flow(GOOD)
    assert rerun.version == "2" and rerun.alias == "champion"
    assert _aliases(client) == {"champion": "2"}


def test_unreachable_tracking_uri_names_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with pytest.raises(TrackingUnavailableError, match=r"http://127\.0\.0\.1:1.*2 attempt"):
        train_flow(WORSE)
