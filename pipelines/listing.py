"""What ``neuroserve models`` lists, read in a blink from the embedded store.

Importing MLflow and its SQL store costs more than a second and well over 150 MiB before the
first query, which is most of a listing's wall time. For the embedded default (an SQLite file),
this module reads the few registry tables a listing needs with Python's own ``sqlite3``, read-only,
and never imports MLflow. It is a read-only view of MLflow's schema, so it guards itself: the
columns it reads must exist and every registry row must be in MLflow's default workspace;
otherwise (another MLflow schema, workspaces in use) and for every other store (an MLflow server,
Postgres), the listing goes through ``MlflowClient`` as before. A test compares both paths row for
row on a real store, so a schema change in a new MLflow fails CI instead of printing wrong rows.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The run tag naming a model's primary metric; its test value is ``test_<name>``.
PRIMARY_METRIC_TAG = "neuroserve.primary_metric"
CHAMPION = "champion"
#: MLflow's marker for a deleted model version (``ModelVersionStages.STAGE_DELETED_INTERNAL``).
DELETED_STAGE = "Deleted_Internal"
#: MLflow's single-tenant workspace (``workspace_utils.DEFAULT_WORKSPACE_NAME``).
DEFAULT_WORKSPACE = "default"
#: The champion version's tags with the last monitoring verdict and its time
#: (``pipelines.monitor`` writes them).
VERDICT_TAG = "neuroserve.monitor.verdict"
VERDICT_AT_TAG = "neuroserve.monitor.at"
#: Columns read per table; a missing one means another schema, and MLflow reads it instead.
COLUMNS = {
    "registered_models": {"name"},
    "model_version_tags": {"name", "version", "key", "value"},
    "model_versions": {"name", "version", "current_stage", "run_id"},
    "registered_model_aliases": {"name", "alias", "version"},
    "tags": {"key", "value", "run_uuid"},
    "latest_metrics": {"key", "value", "run_uuid"},
}


@dataclass(frozen=True)
class ModelSummary:
    """One row of `neuroserve models`."""

    name: str
    latest_version: str
    champion_version: str | None
    metric_name: str | None
    metric_value: float | None
    aliases: dict[str, str]
    #: The champion's last monitoring verdict and when (ISO time), if it was ever monitored.
    verdict: str | None = None
    verdict_at: str | None = None


class SchemaMismatchError(Exception):
    """The SQLite file is not laid out as this reader expects; MLflow reads it instead."""


def summarize(uri: str) -> list[ModelSummary]:
    """Every registered model with its champion and the champion run's primary test metric."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():
            return []  # nothing registered yet, and a listing creates no store
        try:
            return _from_sqlite(path)
        except SchemaMismatchError:
            pass
    from pipelines import tracking

    return _from_client(tracking.connect(uri))


def _from_sqlite(path: Path) -> list[ModelSummary]:
    """The listing from MLflow's tables, opened read-only (a writer in progress is not blocked)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        tables = {t: _columns(conn, t) for t in COLUMNS}
        for table, needed in COLUMNS.items():
            if not needed <= tables[table]:
                raise SchemaMismatchError(f"{table} lacks {sorted(needed - tables[table])}")
        scoped = {t for t, cols in tables.items() if "workspace" in cols}
        for table in scoped:
            other = conn.execute(
                f"SELECT 1 FROM {table} WHERE workspace != ? LIMIT 1", (DEFAULT_WORKSPACE,)
            ).fetchone()
            if other:
                raise SchemaMismatchError(f"{table} has rows outside the default workspace")
        return _rows(conn, nan_flag="is_nan" in tables["latest_metrics"])
    except sqlite3.DatabaseError as exc:  # not an MLflow store, or locked past the timeout
        raise SchemaMismatchError(str(exc)) from exc
    finally:
        conn.close()


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def _rows(conn: sqlite3.Connection, nan_flag: bool) -> list[ModelSummary]:
    """One summary per registered model; ``nan_flag``: ``latest_metrics`` has ``is_nan``."""
    names = [str(r[0]) for r in conn.execute("SELECT name FROM registered_models ORDER BY name")]
    latest = dict(
        conn.execute(
            "SELECT name, MAX(version) FROM model_versions WHERE current_stage != ? GROUP BY name",
            (DELETED_STAGE,),
        ).fetchall()
    )
    aliases: dict[str, dict[str, str]] = {}
    for name, alias, version in conn.execute(
        "SELECT name, alias, version FROM registered_model_aliases"
    ):
        aliases.setdefault(str(name), {})[str(alias)] = str(version)
    rows = []
    for name in names:
        champion = aliases.get(name, {}).get(CHAMPION)
        metric_name: str | None = None
        metric_value: float | None = None
        verdict = verdict_at = None
        if champion is not None:
            tags = dict(
                conn.execute(
                    "SELECT key, value FROM model_version_tags WHERE name = ? AND version = ? "
                    "AND key IN (?, ?)",
                    (name, int(champion), VERDICT_TAG, VERDICT_AT_TAG),
                ).fetchall()
            )
            verdict, verdict_at = tags.get(VERDICT_TAG), tags.get(VERDICT_AT_TAG)
            found = conn.execute(
                "SELECT run_id FROM model_versions WHERE name = ? AND version = ?",
                (name, int(champion)),
            ).fetchone()
            if found and found[0]:
                metric_name, metric_value = _primary_metric(conn, str(found[0]), nan_flag)
        rows.append(
            ModelSummary(
                name=name,
                latest_version=str(latest[name]) if latest.get(name) is not None else "-",
                champion_version=champion,
                metric_name=metric_name,
                metric_value=metric_value,
                aliases=aliases.get(name, {}),
                verdict=verdict,
                verdict_at=verdict_at,
            )
        )
    return rows


def _primary_metric(
    conn: sqlite3.Connection, run_id: str, nan_flag: bool
) -> tuple[str | None, float | None]:
    tag = conn.execute(
        "SELECT value FROM tags WHERE run_uuid = ? AND key = ?", (run_id, PRIMARY_METRIC_TAG)
    ).fetchone()
    if not tag or not tag[0]:
        return None, None
    name = str(tag[0])
    value = conn.execute(
        "SELECT value, is_nan FROM latest_metrics WHERE run_uuid = ? AND key = ?"
        if nan_flag
        else "SELECT value, 0 FROM latest_metrics WHERE run_uuid = ? AND key = ?",
        (run_id, f"test_{name}"),
    ).fetchone()
    if value is None:
        return name, None
    return name, math.nan if value[1] else float(value[0])


def _from_client(client: Any) -> list[ModelSummary]:
    """The same listing through MLflow's client: any store MLflow can reach."""
    from pipelines import registry

    rows = []
    for rm in sorted(client.search_registered_models(max_results=1000), key=lambda m: m.name):
        versions = [int(v.version) for v in client.search_model_versions(f"name='{rm.name}'")]
        champ = registry.find_champion(client, rm.name)
        metric_name = metric_value = None
        if champ is not None and champ.run_id:
            run = client.get_run(champ.run_id)
            metric_name = run.data.tags.get(PRIMARY_METRIC_TAG)
            if metric_name:
                metric_value = run.data.metrics.get(f"test_{metric_name}")
        rows.append(
            ModelSummary(
                name=rm.name,
                latest_version=str(max(versions)) if versions else "-",
                champion_version=str(champ.version) if champ else None,
                metric_name=metric_name,
                metric_value=metric_value,
                aliases={str(k): str(v) for k, v in rm.aliases.items()},
                verdict=champ.tags.get(VERDICT_TAG) if champ else None,
                verdict_at=champ.tags.get(VERDICT_AT_TAG) if champ else None,
            )
        )
    return rows
