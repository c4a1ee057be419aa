"""pipelines/drift.py: the verdict on captured rows against a reference profile.

Synthetic layouts (a table classifier, a next-token text model) built with the capture code
itself, so every row is in exactly the layout the server writes; then two real models from
bench/bench_drift.py (a breast-cancer FNN, a digits CNN) with the bench's own conditions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bench import bench_drift
from pipelines import drift
from pipelines.errors import PipelineError
from serving.capture import CaptureLayout

FEATURES = ("f0", "f1", "f2", "f3")
LABELS = ("a", "b", "c")
ROWS = 500
SEEDS = range(5)


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]


# --------------------------------------------------------------------------- a table classifier
TABLE = CaptureLayout.of(
    "table-model",
    "1",
    [Tensor("input", "FP32", (-1, len(FEATURES)))],
    [Tensor("output", "FP32", (-1, len(LABELS)))],
    {
        "task": "multiclass",
        "input_kind": "table",
        "labels": json.dumps(LABELS),
        "feature_names": json.dumps(FEATURES),
    },
)


def answer(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A fixed 'model': softmax of the first three features (plus ``bias`` per label)."""
    logits = 2 * x[:, :3].astype(np.float64) + (0 if bias is None else bias)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def table_rows(x: np.ndarray, source: str, with_answers: bool = True, **kw: np.ndarray) -> pa.Table:
    outputs = {"output": answer(x, **kw)} if with_answers else {}
    return TABLE.rows({"input": x.astype(np.float32)}, outputs, source=source)


def features(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four features of different shapes; ``f3`` is constant."""
    return np.column_stack(
        [rng.normal(0, 1, n), rng.gamma(2.0, 1.5, n), rng.uniform(-1, 1, n), np.ones(n)]
    ).astype(np.float32)


def table_reference(seed: int = 100) -> pa.Table:
    """A profile as the train flow writes it: training inputs; test inputs with answers."""
    rng = np.random.default_rng(seed)
    return pa.concat_tables(
        [
            table_rows(features(rng, 2000), "train", with_answers=False),
            table_rows(features(rng, 500), "test"),
        ]
    )


def by_column(report: drift.DriftReport) -> dict[str, drift.ColumnDrift]:
    return {c.column: c for c in report.columns}


@pytest.mark.parametrize("seed", SEEDS)
def test_same_distribution_is_no_drift(seed: int) -> None:
    reference = table_reference()
    current = table_rows(features(np.random.default_rng(seed), ROWS), "serving")
    report = drift.compare(reference, current)
    assert report.verdict == "no drift", report.line
    assert not report.prediction_drifted
    # Every feature and both prediction columns were compared.
    assert set(by_column(report)) == {
        *(f"input.{f}" for f in FEATURES),
        "prediction",
        "prediction.score",
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_scaled_features_are_drift(seed: int) -> None:
    current = table_rows(features(np.random.default_rng(seed), ROWS) * 1.5, "serving")
    report = drift.compare(table_reference(), current)
    assert report.verdict == "drift", report.line
    columns = by_column(report)
    assert all(columns[f"input.{f}"].drifted for f in FEATURES), report.line
    assert report.input_share == 1.0


def test_too_few_rows_is_not_enough_data() -> None:
    current = table_rows(features(np.random.default_rng(0), 50) * 3, "serving")
    report = drift.compare(table_reference(), current)
    assert report.verdict == "not enough data"
    assert report.columns == []
    assert f"n < {drift.MIN_ROWS}" in report.line and "50 rows" in report.line
    # The bound is the caller's to set.
    assert drift.compare(table_reference(), current, min_rows=40).verdict == "drift"


def test_constant_column() -> None:
    """A constant feature: the same constant is no change at all, another one is drift."""
    rng = np.random.default_rng(1)
    same = drift.compare(table_reference(), table_rows(features(rng, ROWS), "serving"))
    assert by_column(same)["input.f3"].score == 0.0
    assert not by_column(same)["input.f3"].drifted
    moved = features(rng, ROWS)
    moved[:, 3] = 2.0
    report = drift.compare(table_reference(), table_rows(moved, "serving"))
    f3 = by_column(report)["input.f3"]
    assert f3.drifted and math.isinf(f3.score)
    assert [c.column for c in report.columns if c.drifted] == ["input.f3"]
    assert report.verdict == "no drift"  # one column of four is below the default share
    assert drift.compare(table_reference(), table_rows(moved, "serving"), 0.25).verdict == "drift"
    assert "input.f3" in drift.report_html(report, "t")  # an infinite score renders


@pytest.mark.parametrize("seed", SEEDS)
def test_predicted_labels_shift_is_drift(seed: int) -> None:
    """Same inputs, but the model now answers 'c' far more often: the predictions drift."""
    x = features(np.random.default_rng(seed), ROWS)
    current = table_rows(x, "serving", bias=np.array([0.0, 0.0, 3.0]))
    report = drift.compare(table_reference(), current)
    assert report.input_share == 0.0
    assert by_column(report)["prediction"].drifted
    assert report.prediction_drifted and report.verdict == "drift", report.line


def test_inputs_are_compared_with_the_training_rows() -> None:
    """A profile's test rows (a later period for a series) are not what the model learned
    from; traffic like the training rows is no drift, whatever the test rows look like."""
    rng = np.random.default_rng(2)
    later = features(rng, 500)
    later[:, :3] += 3.0
    reference = pa.concat_tables(
        [
            table_rows(features(rng, 2000), "train", with_answers=False),
            table_rows(later, "test"),
        ]
    )
    current = features(rng, ROWS)
    report = drift.compare(reference, table_rows(current, "serving", with_answers=False))
    assert report.verdict == "no drift", report.line
    # Without training rows the whole profile is the reference: now the same rows drift.
    whole = reference.filter(pc.equal(reference.column("source"), "test"))
    assert drift.compare(whole, table_rows(current, "serving")).verdict == "drift"


def test_bad_drift_share() -> None:
    with pytest.raises(PipelineError, match="--drift-share must be in"):
        drift.compare(table_reference(), table_reference(), drift_share=0)


def test_report_html_has_the_verdict() -> None:
    current = table_rows(features(np.random.default_rng(3), ROWS) * 1.5, "serving")
    report = drift.compare(table_reference(), current)
    page = drift.report_html(report, "wine <v1>")
    assert page.startswith("<!doctype html>")
    assert "<title>wine &lt;v1&gt;</title>" in page
    assert f"<b>{report.line}</b>" in page and report.line.startswith("drift:")
    assert page.count("<tr class=drift>") == sum(c.drifted for c in report.columns)


# --------------------------------------------------------------------------- a text model
VOCABULARY = ["<unk>", *(f"w{i}" for i in range(1, 300))]
WINDOW = 16
TEXT = CaptureLayout.of(
    "text-model",
    "1",
    [Tensor("input", "INT64", (-1, -1))],
    [Tensor("output", "FP32", (-1, len(VOCABULARY)))],
    {
        "task": "next-token",
        "input_kind": "text",
        "vocabulary": json.dumps(VOCABULARY),
        "unk_token": "<unk>",
    },
)


def zipf(order: np.ndarray, unk: float) -> np.ndarray:
    """Token probabilities: Zipf's law over ``order`` (most frequent first), ``unk`` for id 0."""
    p = np.zeros(len(VOCABULARY))
    p[order] = 1 / np.arange(1, len(order) + 1)
    p *= (1 - unk) / p.sum()
    p[0] = unk
    return p


ENGLISH = zipf(np.arange(1, 300), unk=0.03)
#: Another domain: the same words, ranked differently, and more of them unknown.
CODE = zipf(np.random.default_rng(7).permutation(np.arange(1, 300)), unk=0.2)


def text_rows(p: np.ndarray, rng: np.random.Generator, n: int, source: str) -> pa.Table:
    """Windows of tokens drawn from ``p``; the 'model' answers the window's last token."""
    x = rng.choice(len(VOCABULARY), size=(n, WINDOW), p=p).astype(np.int64)
    y = np.full((n, len(VOCABULARY)), 0.1 / len(VOCABULARY), np.float32)
    y[np.arange(n), x[:, -1]] = 0.9
    return TEXT.rows({"input": x}, {"output": y}, source=source)


def text_reference() -> pa.Table:
    rng = np.random.default_rng(100)
    return pa.concat_tables(
        [text_rows(ENGLISH, rng, 2000, "train"), text_rows(ENGLISH, rng, 500, "test")]
    )


def test_text_layout_columns() -> None:
    """Tokens, length, unknown rate, and the prediction columns (the vocabulary-wide output
    is kept as predictions only)."""
    columns = drift.comparable_columns(text_reference())
    assert columns == {
        drift.TOKENS: ("input", "categorical"),
        "input.length": ("input", "numerical"),
        "input.unk_rate": ("input", "numerical"),
        "prediction": ("prediction", "categorical"),
        "prediction.score": ("prediction", "numerical"),
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_text_same_domain_is_no_drift(seed: int) -> None:
    current = text_rows(ENGLISH, np.random.default_rng(seed), ROWS, "serving")
    report = drift.compare(text_reference(), current)
    assert report.verdict == "no drift", report.line


@pytest.mark.parametrize("seed", SEEDS)
def test_text_other_domain_is_drift(seed: int) -> None:
    current = text_rows(CODE, np.random.default_rng(seed), ROWS, "serving")
    report = drift.compare(text_reference(), current)
    columns = by_column(report)
    assert columns[drift.TOKENS].drifted and columns["input.unk_rate"].drifted, report.line
    assert report.verdict == "drift"


# --------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bench_drift.Model]:
    """A breast-cancer FNN, a digits CNN and a sunspots LSTM, trained, exported and profiled as
    the bench (and the train flow) does; a few epochs each."""
    tmp = tmp_path_factory.mktemp("drift-models")
    epochs = {"breast-cancer": 10, "digits": 3, "sunspots": 5}
    saved = dict(bench_drift.MODELS)
    try:
        for name, n in epochs.items():
            bench_drift.MODELS[name] = (bench_drift.MODELS[name][0], n)
        return {name: bench_drift.build(name, 0, Path(tmp)) for name in epochs}
    finally:
        bench_drift.MODELS.update(saved)


def verdict(model: bench_drift.Model, condition: str, seed: int = 0) -> drift.DriftReport:
    """The verdict on the bench's condition of this name, ``ROWS`` rows."""
    kind = model.result.data.input_kind
    (cond,) = [c for c in bench_drift.conditions(kind) if c.name == condition]
    x = cond.inputs(model.result.data, np.random.default_rng(seed), cond.rows)
    return drift.compare(model.reference, model.capture(x))


@pytest.mark.parametrize(
    ("name", "condition", "expected"),
    [
        ("breast-cancer", "held-out", "no drift"),
        ("breast-cancer", "features x1.5", "drift"),
        ("breast-cancer", "50 rows", "not enough data"),
        ("digits", "held-out", "no drift"),
        ("digits", "rotated 90°", "drift"),
        ("digits", "inverted", "drift"),
        ("sunspots", "training windows", "no drift"),
        ("sunspots", "level +2 std", "drift"),
    ],
)
def test_real_models(
    models: dict[str, bench_drift.Model], name: str, condition: str, expected: str
) -> None:
    for seed in (0, 1):
        report = verdict(models[name], condition, seed)
        assert report.verdict == expected, f"{name} / {condition} / seed {seed}: {report.line}"


def test_rotated_digits_are_caught_by_their_predictions(
    models: dict[str, bench_drift.Model],
) -> None:
    """A rotation leaves every pixel-intensity statistic as it was; what the model answers moves
    (the capture layout keeps no per-image geometry: it cost too much at capture time)."""
    report = verdict(models["digits"], "rotated 90°")
    drifted = {c.column for c in report.columns if c.drifted}
    assert not drifted & {"input.mean", "input.std", "input.p50"}
    assert report.prediction_drifted and report.verdict == "drift"
