"""compare: parent run + nested children, table and plot on the parent; --vary checked first;
every spec field variable; --seeds reports mean ± spread and picks the winner on validation."""

from __future__ import annotations

import dataclasses
import io
import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import training
from pipelines import compare, specs
from pipelines.errors import VaryError
from training.spec import FIELD_INPUTS


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
        ("lr=0.1,fast", "--vary lr: value 'fast': lr must be a number; got 'fast'"),
        ("lr=0.1,-1", "lr must be a positive number"),
        ("lr=0.1,0.10", "values repeat"),
        ("activation", "expected NAME=V1,V2"),
        ("activation=", "no values given"),
        ("kind=cnn", "unknown parameter 'kind'"),
        ("data=wine", "unknown parameter 'data'"),
        ("target=y", "unknown parameter 'target'"),
        ("hidden=8,0", "hidden must be one or more positive layer sizes"),
        ("hidden=8,4xabc", "hidden must be layer sizes separated by commas"),
        ("conv=0x16", "conv must be one or more positive layer sizes"),
        ("dropout=0.2,1.5", "dropout must be in [0, 1)"),
        ("pool=max,sum", "unknown pool 'sum'"),
        ("schedule=cosine,step", "unknown schedule 'step'"),
        ("batch_norm=true,maybe", "batch_norm must be true or false"),
        ("weight_decay=0,-1", "weight_decay must be a number >= 0"),
        ("kernel=3,0", "kernel must be a positive integer"),
        ("embed=16,32", "embed does not apply to fnn on table data"),
    ],
)
def test_bad_vary_is_rejected_before_anything_runs(vary: str, message: str) -> None:
    image_field = FIELD_INPUTS.get(vary.partition("=")[0]) == ("image",)
    base = specs.build_spec(*(("cnn", "digits") if image_field else ("fnn", "breast-cancer")))
    with pytest.raises(VaryError) as err:
        compare.variants(base, [compare.parse_vary(vary)])
    assert message in str(err.value)


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


def test_every_spec_field_but_the_frame_is_variable() -> None:
    names = {f.name for f in dataclasses.fields(training.TrainSpec)}
    assert set(compare.VARYABLE) == names - {"kind", "data", "target"}
    # Each of them goes through to the spec, typed.
    base = specs.build_spec("cnn", "digits", epochs=1)
    samples: dict[str, tuple[str, list[Any]]] = {
        "epochs": ("1,2", [1, 2]),
        "lr": ("0.1,0.01", [0.1, 0.01]),
        "batch_size": ("16,32", [16, 32]),
        "optimizer": ("adamw,sgd", ["adamw", "sgd"]),
        "activation": ("tanh,sigmoid", ["tanh", "sigmoid"]),
        "seed": ("1,2", [1, 2]),
        "patience": ("2,3", [2, 3]),
        "window": ("4,8", [4, 8]),
        "limit": ("50,60", [50, 60]),
        "weight_decay": ("0,0.01", [0.0, 0.01]),
        "schedule": ("cosine,plateau", ["cosine", "plateau"]),
        "hidden": ("8,8x8", [(8,), (8, 8)]),
        "dropout": ("0,0.3", [0.0, 0.3]),
        "conv": ("8,8x16", [(8,), (8, 16)]),
        "kernel": ("3,5", [3, 5]),
        "pool": ("none,default", ["none", None]),
        "dense": ("32,64x32", [(32,), (64, 32)]),
        "batch_norm": ("true,false", [True, False]),
        "augment": ("yes,no", [True, False]),
        "embed": ("16,32", [16, 32]),
        "tied": ("true,false", [True, False]),
        "pointer": ("false,true", [False, True]),
        "device": ("cpu,auto", ["cpu", "auto"]),
        "amp": ("true,false", [True, False]),
    }
    assert set(samples) == set(compare.VARYABLE)
    # An architecture field varies on a family it shapes (the spec rejects it elsewhere).
    shaped = {
        "image": base,
        "table": specs.build_spec("fnn", "wine", epochs=1),
        "text": specs.build_spec("lstm", "pydoc-text", epochs=1),
    }
    for name, (text, expected) in samples.items():
        on = shaped[FIELD_INPUTS.get(name, ("image",))[0]]
        todo = compare.variants(on, [compare.parse_vary(f"{name}={text}")])
        got = [getattr(spec, name) for _, spec in todo]
        assert got == expected and [type(v) for v in got] == [type(v) for v in expected], name


def test_sizes_vary_with_x_within_a_variant() -> None:
    base = specs.build_spec("fnn", "breast-cancer", epochs=1)
    todo = compare.variants(base, [compare.parse_vary("hidden=32,64x64")])
    assert [(label, spec.hidden) for label, spec in todo] == [
        ("hidden=32", (32,)),
        ("hidden=64x64", (64, 64)),
    ]
    images = specs.build_spec("cnn", "digits", epochs=1)
    todo = compare.variants(images, [compare.parse_vary("--batch-norm=default,true")])
    assert [(label, spec.batch_norm) for label, spec in todo] == [
        ("batch_norm=default", None),
        ("batch_norm=true", True),
    ]


def test_seeds_are_checked_before_anything_runs() -> None:
    base = specs.build_spec("fnn", "breast-cancer", epochs=1, seed=7)
    with pytest.raises(VaryError, match="--vary seed cannot be combined with --seeds 3"):
        compare.variants(base, [compare.parse_vary("seed=1,2")], seeds=3)
    with pytest.raises(VaryError, match="--seeds must be a positive integer"):
        compare.variants(base, [compare.parse_vary("lr=0.1,0.2")], seeds=0)
    # Without --seeds, varying the seed still works.
    todo = compare.variants(base, [compare.parse_vary("seed=1,2")])
    assert [spec.seed for _, spec in todo] == [1, 2]
    assert compare.seed_list(7, 3) == [7, 8, 9]


def _row(variant: str, vals: list[float], tests: list[float]) -> compare.VariantRow:
    runs = [
        compare.SeedRun(42 + i, f"r{variant}{i}", v, t, 0.5, 3, 1.0)
        for i, (v, t) in enumerate(zip(vals, tests, strict=True))
    ]
    return compare.VariantRow.of(variant, runs)


def test_winner_is_the_best_mean_validation_never_test() -> None:
    # b has one lucky seed (best single validation score) and the best test score; a has the best
    # mean validation score, so a wins.
    a = _row("a", [0.90, 0.91, 0.92], [0.80, 0.80, 0.80])
    b = _row("b", [0.95, 0.85, 0.86], [0.99, 0.99, 0.99])
    assert math.isclose(a.val_metric, 0.91) and math.isclose(a.val_spread, 0.01)
    assert math.isclose(b.val_spread, statistics.stdev([0.95, 0.85, 0.86]))
    assert [r.variant for r in compare.rank([b, a], higher=True)] == ["a", "b"]
    # Lower is better (RMSE): the smallest mean wins.
    assert [r.variant for r in compare.rank([a, b], higher=False)] == ["b", "a"]
    # The lead (0.91 - 0.8867) is within b's spread: said so rather than a clear winner.
    note = compare.lead_note(compare.rank([a, b], higher=True), "accuracy")
    assert "within one sample standard deviation" in note and "not a clear winner" in note
    # One seed: no spread, no note, values shown without ±.
    single = _row("c", [0.9], [0.8])
    assert math.isnan(single.val_spread) and compare.pm(0.9, single.val_spread) == "0.9000"
    assert compare.lead_note([single, _row("d", [0.8], [0.9])], "accuracy") == ""
    # An exact tie is called one, with or without seeds.
    tie = compare.lead_note([single, _row("e", [0.9], [0.95])], "accuracy")
    assert tie.startswith("tied with e on validation accuracy (0.9000)")
    tie = compare.lead_note([a, _row("f", [0.92, 0.91, 0.90], [0.9] * 3)], "accuracy")
    assert tie.startswith("tied with f on mean validation accuracy")


def test_compare_with_seeds_reports_mean_and_spread(home: Path, client: Any) -> None:
    spec = specs.build_spec("fnn", "breast-cancer", epochs=1, limit=120, seed=5)
    out = compare.compare_flow(spec.to_dict(), ["activation=relu,sigmoid"], seeds=2)
    assert out.seeds == [5, 6]
    assert [r.variant for r in out.rows] == ["activation=relu", "activation=sigmoid"]
    for row in out.rows:
        assert [r.seed for r in row.runs] == [5, 6]
        vals = [r.val_metric for r in row.runs]
        tests = [r.test_metric for r in row.runs]
        assert math.isclose(row.val_metric, statistics.fmean(vals))
        assert math.isclose(row.val_spread, statistics.stdev(vals))
        assert math.isclose(row.test_metric, statistics.fmean(tests))
        assert math.isclose(row.test_spread, statistics.stdev(tests))
    assert out.winner == max(out.rows, key=lambda r: r.val_metric).variant

    children = client.search_runs(
        [out.experiment_id], f"tags.mlflow.parentRunId = '{out.parent_run_id}'"
    )
    assert sorted((c.data.tags["neuroserve.variant"], c.data.params["seed"]) for c in children) == [
        ("activation=relu", "5"),
        ("activation=relu", "6"),
        ("activation=sigmoid", "5"),
        ("activation=sigmoid", "6"),
    ]
    parent = client.get_run(out.parent_run_id)
    assert parent.data.tags["neuroserve.seeds"] == "5,6"
    assert "winner_val_accuracy_std" in parent.data.metrics
    files = {a.path for a in client.list_artifacts(out.parent_run_id)}
    assert {"comparison.csv", "runs.csv", "comparison.md"} <= files
    md = Path(client.download_artifacts(out.parent_run_id, "comparison.md", str(home)))
    text = md.read_text()
    assert "mean ± sample standard deviation over seeds 5, 6" in text
    assert f"{out.rows[0].val_metric:.4f} ± {out.rows[0].val_spread:.4f}" in text
    runs = pd.read_csv(client.download_artifacts(out.parent_run_id, "runs.csv", str(home)))
    assert len(runs) == 4 and set(runs["seed"]) == {5, 6}
