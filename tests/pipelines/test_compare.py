"""compare: parent run + nested children, table and plot on the parent; --vary checked first."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines import compare, specs
from pipelines.errors import VaryError


def test_compare_activations_under_one_parent(home: Path, client: Any) -> None:
    spec = specs.build_spec("fnn", "breast-cancer", epochs=2)
    out = compare.compare_flow(spec.to_dict(), ["activation=relu,sigmoid"])
    assert out.model_name == "breast-cancer-fnn" and out.metric_name == "accuracy"
    assert [r.variant for r in out.rows] == ["activation=relu", "activation=sigmoid"]
    assert out.winner in {r.variant for r in out.rows}
    best = max(out.rows, key=lambda r: r.val_metric)
    assert out.winner == best.variant

    parent = client.get_run(out.parent_run_id)
    assert parent.data.tags["neuroserve.winner"] == out.winner
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [out.experiment_id], f"tags.mlflow.parentRunId = '{out.parent_run_id}'"
    )
    assert {c.data.params["activation"] for c in children} == {"relu", "sigmoid"}
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) == 2
    files = {a.path for a in client.list_artifacts(out.parent_run_id)}
    assert {"comparison.csv", "comparison.md", "comparison.json", "figures"} <= files
    assert [a.path for a in client.list_artifacts(out.parent_run_id, "figures")] == [
        "figures/validation_curves.png"
    ]
    local = client.download_artifacts(out.parent_run_id, "comparison.csv", str(home))
    table = pd.read_csv(io.StringIO(Path(local).read_text()))
    assert list(table["variant"]) == ["activation=relu", "activation=sigmoid"]
    # Variants are an experiment, not registered models.
    assert client.search_registered_models() == []


@pytest.mark.parametrize(
    ("vary", "message"),
    [
        ("colour=red,blue", "unknown parameter 'colour'"),
        ("activation=relu,bogus", "unknown activation 'bogus'"),
        ("optimizer=adam,warp", "unknown optimizer 'warp'"),
        ("lr=0.1,fast", "value 'fast' is not a float"),
        ("lr=0.1,-1", "lr must be a positive number"),
        ("activation", "expected NAME=V1,V2"),
        ("activation=", "no values given"),
    ],
)
def test_bad_vary_is_rejected_before_anything_runs(vary: str, message: str) -> None:
    base = specs.build_spec("fnn", "breast-cancer", epochs=1)
    with pytest.raises(VaryError, match=message):
        compare.variants(base, [compare.parse_vary(vary)])


def test_grid_of_two_parameters() -> None:
    base = specs.build_spec("fnn", "breast-cancer", epochs=1)
    todo = compare.variants(
        base, [compare.parse_vary("activation=relu,tanh"), compare.parse_vary("lr=0.1,0.01")]
    )
    assert [label for label, _ in todo] == [
        "activation=relu,lr=0.1",
        "activation=relu,lr=0.01",
        "activation=tanh,lr=0.1",
        "activation=tanh,lr=0.01",
    ]
    assert todo[3][1].lr == 0.01 and todo[3][1].activation == "tanh"
