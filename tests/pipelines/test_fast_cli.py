"""A command line that answers at once: listing reads the embedded store without MLflow, and
listing, help and status never import torch, scikit-learn, Prefect or the training code.

The listing's fast reader is checked row for row against MLflow's own client on a real store,
so a schema change in a new MLflow fails here instead of printing wrong rows.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from pipelines import listing
from tests.blocking import HEAVY, NEUROSERVE, run_blocked, run_together

SUBCOMMANDS = ("train", "compare", "retrain", "schedule", "score", "models", "demo", "server")


def _run(client: Any, exp: str, metric: str | None, value: float | None) -> str:
    tags = {listing.PRIMARY_METRIC_TAG: metric} if metric else {}
    run_id = str(client.create_run(exp, tags=tags).info.run_id)
    if metric and value is not None:
        client.log_metric(run_id, f"test_{metric}", value)
        client.log_metric(run_id, "val_loss", 0.5)
    client.set_terminated(run_id)
    return run_id


@pytest.fixture
def store(client: Any) -> Any:
    """A registry with every case a listing meets: champions, challengers, a deleted latest
    version, a model with no versions, one without a champion, a NaN metric, no metric tag."""
    exp = client.create_experiment("listing")
    cases: list[tuple[str, list[tuple[str | None, float | None]], dict[str, int]]] = [
        ("alpha", [("accuracy", 0.9), ("accuracy", 0.95), ("accuracy", 0.8)], {"champion": 2}),
        ("beta", [("rmse", 12.5)], {"challenger": 1}),
        ("gamma", [("rmse", math.nan), ("rmse", 3.0)], {"champion": 1, "challenger": 2}),
        ("delta", [(None, None)], {"champion": 1}),
        ("epsilon", [], {}),
    ]
    for name, runs, aliases in cases:
        client.create_registered_model(name)
        for metric, value in runs:
            run_id = _run(client, exp, metric, value)
            client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
        for alias, version in aliases.items():
            client.set_registered_model_alias(name, alias, str(version))
    client.delete_model_version("alpha", "3")  # the latest is deleted: latest shows v2
    client.set_model_version_tag("alpha", "2", listing.VERDICT_TAG, "no drift")
    client.set_model_version_tag("alpha", "2", listing.VERDICT_AT_TAG, "2026-11-28T08:00:00+00:00")
    client.set_model_version_tag("beta", "1", listing.VERDICT_TAG, "drift")  # not a champion
    return client


def _comparable(rows: list[listing.ModelSummary]) -> list[dict[str, Any]]:
    """Rows as dicts with NaN spelt out (NaN != NaN would fail equal rows)."""
    out = []
    for row in rows:
        d = asdict(row)
        if d["metric_value"] is not None and math.isnan(d["metric_value"]):
            d["metric_value"] = "nan"
        out.append(d)
    return out


def test_fast_listing_equals_mlflows_own(store: Any, home: Path) -> None:
    fast = listing._from_sqlite(home / "mlflow.db")
    slow = listing._from_client(store)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    assert _comparable(fast) == _comparable(slow) == _comparable(listing.summarize(uri))
    assert [r.name for r in fast] == ["alpha", "beta", "delta", "epsilon", "gamma"]
    alpha, beta, delta, epsilon, gamma = fast
    assert (alpha.latest_version, alpha.champion_version, alpha.metric_value) == ("2", "2", 0.95)
    assert (alpha.verdict, alpha.verdict_at) == ("no drift", "2026-11-28T08:00:00+00:00")
    assert beta.verdict is None  # only a champion's verdict is shown
    assert (beta.champion_version, beta.aliases) == (None, {"challenger": "1"})
    assert (delta.champion_version, delta.metric_name, delta.metric_value) == ("1", None, None)
    assert (epsilon.latest_version, epsilon.champion_version) == ("-", None)
    assert gamma.metric_value is not None and math.isnan(gamma.metric_value)


def test_listing_outside_the_default_workspace_is_left_to_mlflow(store: Any, home: Path) -> None:
    db = home / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE registered_models SET workspace = 'team-a' WHERE name = 'beta'")
    with pytest.raises(listing.SchemaMismatchError, match="outside the default workspace"):
        listing._from_sqlite(db)


def test_a_file_that_is_not_an_mlflow_store_is_left_to_mlflow(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE registered_models (title TEXT)")
    with pytest.raises(listing.SchemaMismatchError, match="registered_models lacks"):
        listing._from_sqlite(db)


def test_listing_a_home_with_no_store_creates_none(tmp_path: Path) -> None:
    assert listing.summarize(f"sqlite:///{tmp_path / 'mlflow.db'}") == []
    assert not (tmp_path / "mlflow.db").exists()


def test_models_lists_without_mlflow_torch_or_prefect(store: Any, home: Path) -> None:
    result = run_blocked(NEUROSERVE, ["neuroserve", "models"], blocked=(*HEAVY, "mlflow"))
    assert result.returncode == 0, result.stderr[-3000:]
    for shown in ("alpha", "v2", "0.9500", "challenger=v1", "gamma", "champion=v1", "no drift"):
        assert shown in result.stdout, result.stdout


@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS), ["serve"], ["predict"]])
def test_every_help_needs_no_heavy_import(command: list[str]) -> None:
    result = run_blocked(NEUROSERVE, ["neuroserve", *command, "--help"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower()


def test_server_status_needs_no_heavy_import(tmp_path: Path) -> None:
    result = run_blocked(
        NEUROSERVE,
        ["neuroserve", "server", "status"],
        env={"NEUROSERVE_HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "local Prefect server: not running" in result.stdout


def test_first_commands_started_together_in_a_fresh_home_share_one_new_store(
    tmp_path: Path,
) -> None:
    """MLflow creates and migrates a new SQLite store on first use; commands racing to do it
    in a fresh home must take turns, not fail with a half-migrated schema."""
    db = tmp_path / "mlflow.db"
    code = (
        "from pipelines import tracking; "
        f"tracking.connect('sqlite:///{db}').search_experiments(); print('ok')"
    )
    results = run_together(code, 3)
    assert all(rc == 0 for rc, _, _ in results), [err[-1500:] for _, _, err in results]
    assert all(out.strip() == "ok" for _, out, _ in results)
