"""Classical baselines: chosen on validation only, strong where the data calls for it, cheap.

Each test could fail for a weak or unfair baseline: a linear model where the target is
nonlinear, an AR fit that is not exact on a noiseless AR series, an n-gram model whose rows do
not sum to one, a choice that moves when only the test labels change, an SVM that grows with
the rows.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from training import load_dataset
from training.baselines import (
    SVM_MAX_ROWS,
    BaselineResult,
    Candidate,
    choose,
    run_baselines,
)
from training.data import DataSplit
from training.metrics import evaluate
from training.ngram import KneserNey


def _table(x: np.ndarray, y: np.ndarray, task: str, seed: int = 0) -> DataSplit:
    """A seeded 64/16/20 split of a synthetic table, as the loaders make it."""
    n = len(y)
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(0.64 * n), int(0.8 * n)
    parts = [order[:a], order[a:b], order[b:]]
    labels = [str(i) for i in range(int(y.max()) + 1)] if task != "regression" else []
    x32 = x.astype(np.float32)
    y_typed = y.astype(np.float32 if task == "regression" else np.int64)
    return DataSplit(
        name="synthetic",
        task=task,
        input_kind="table",
        x_train=x32[parts[0]],
        y_train=y_typed[parts[0]],
        x_val=x32[parts[1]],
        y_val=y_typed[parts[1]],
        x_test=x32[parts[2]],
        y_test=y_typed[parts[2]],
        sha256="0" * 64,
        labels=labels,
        feature_names=[f"f{i}" for i in range(x.shape[1])],
    )


def _candidate(name: str, val: float, test: float, loss: float | None = None) -> Candidate:
    return Candidate(name, val, {"accuracy": test}, {}, 0.0, val_log_loss=loss)


def _by_name(result: BaselineResult) -> dict[str, Candidate]:
    return {c.name: c for c in result.candidates}


def test_choose_uses_validation_never_test() -> None:
    simple = _candidate("logistic-regression", val=0.90, test=0.99)
    strong = _candidate("rbf-svm", val=0.95, test=0.80)
    assert choose([simple, strong], higher_is_better=True) is strong
    # lower is better (RMSE, perplexity): the smaller validation value wins
    assert choose([simple, strong], higher_is_better=False) is simple


def test_choose_breaks_ties_by_log_loss_then_order() -> None:
    a = _candidate("logistic-regression", 1.0, 0.5, loss=0.20)
    b = _candidate("rbf-svm", 1.0, 0.9, loss=0.05)
    c = _candidate("gradient-boosting", 1.0, 0.9, loss=0.05)
    nan = _candidate("broken", math.nan, 1.0, loss=0.0)
    assert choose([nan, a, b, c], higher_is_better=True) is b  # equal loss: earlier wins
    assert choose([nan, a], higher_is_better=True) is a  # NaN never wins
    # Differences at rounding level are ties too: the earlier (simpler) candidate stays.
    first = _candidate("ar-levels", 1e-13, 0.0)
    second = _candidate("ar-differences", 1e-14, 0.0)
    assert choose([first, second], higher_is_better=False) is first


def test_result_is_the_candidate_best_on_validation_and_ignores_test_labels() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 + 0.5 * rng.normal(size=600) > 0.4).astype(np.int64)
    data = _table(x, y, "binary")
    result = run_baselines(data)
    best = choose(result.candidates, higher_is_better=True)
    assert result.name == best.name and result.metrics == best.test_metrics
    assert result.all == {c.name: c.test_metrics for c in result.candidates}
    assert result.seconds >= sum(c.seconds for c in result.candidates) * 0.9
    # Scramble the test labels: every choice (name, hyperparameters, validation scores) stays.
    scrambled = dataclasses.replace(data, y_test=rng.permutation(data.y_test))
    again = run_baselines(scrambled)
    assert again.name == result.name
    for c, d in zip(result.candidates, again.candidates, strict=True):
        assert (c.name, c.val_metric, c.params) == (d.name, d.val_metric, d.params)


def test_nonlinear_regression_table_beats_ridge() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(1500, 4))
    y = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=1500)
    result = run_baselines(_table(x, y, "regression"))
    found = _by_name(result)
    assert list(found) == ["ridge", "rbf-svm", "gradient-boosting"]
    ridge = found["ridge"]
    assert result.name in ("rbf-svm", "gradient-boosting")
    chosen = found[result.name]
    assert chosen.val_metric > ridge.val_metric + 0.3
    assert chosen.test_metrics["r2"] > ridge.test_metrics["r2"] + 0.3 > 0.3
    assert {"alpha"} <= set(ridge.params)
    assert {"C", "gamma", "fit_rows", "note"} <= set(found["rbf-svm"].params)
    assert {"trees", "max_leaf_nodes", "learning_rate"} <= set(found["gradient-boosting"].params)


def test_nonlinear_classes_beat_logistic_and_svm_output_is_the_svms_own() -> None:
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 2))
    radius = np.hypot(x[:, 0], x[:, 1])
    y = np.digitize(radius, [0.8, 1.4]).astype(np.int64)  # three rings: no line separates them
    data = _table(x, y, "multiclass")
    result = run_baselines(data)
    found = _by_name(result)
    assert result.name != "logistic-regression"
    assert found[result.name].test_metrics["accuracy"] > (
        found["logistic-regression"].test_metrics["accuracy"] + 0.2
    )
    # The SVM's probability rows keep scikit-learn's own RBF SVC prediction (same C, gamma).
    svm = found["rbf-svm"]
    assert svm.params["fit_rows"] == len(data.y_train) and svm.val_log_loss is not None
    scaler = StandardScaler().fit(data.x_train)
    xs = scaler.transform(data.x_train)
    factor = float(str(svm.params["gamma"]).split(" ")[0])
    gamma = factor / (xs.shape[1] * xs.var())
    reference = SVC(C=svm.params["C"], gamma=gamma, break_ties=True).fit(xs, data.y_train)
    expected = evaluate(
        "multiclass",
        data.y_test,
        np.eye(3)[reference.predict(scaler.transform(data.x_test))],
    )
    assert svm.test_metrics["accuracy"] == pytest.approx(expected["accuracy"])


def _write_series(path: Path, values: np.ndarray) -> str:
    path.write_text("value\n" + "\n".join(f"{v:.12f}" for v in values) + "\n")
    return str(path)


def test_noiseless_ar2_series_is_fitted_exactly_and_chosen(tmp_path: Path) -> None:
    # x_t = 2 cos(w) x_{t-1} - x_{t-2} + c: an AR(2) (a sinusoid around a level), no noise.
    t = np.arange(400)
    values = 50.0 + 10.0 * np.sin(2 * np.pi * t / 17.3)
    data = load_dataset(_write_series(tmp_path / "ar2.csv", values), kind="lstm", window=12)
    result = run_baselines(data)
    found = _by_name(result)
    assert {"naive-last-value", "ar-levels", "ar-differences"} <= set(found)
    assert result.name in ("ar-levels", "ar-differences")
    # Exact up to the float32 rounding of the windows (values ~60: steps of ~4e-6).
    assert found[result.name].test_metrics["rmse"] < 1e-4
    assert found["naive-last-value"].test_metrics["rmse"] > 1.0
    assert found["ar-levels"].params["order"] >= 2  # one lag cannot draw a sinusoid


def test_seasonal_naive_uses_the_period_within_the_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(300)
    values = 10.0 * np.sin(2 * np.pi * t / 12) + rng.normal(scale=0.5, size=300)
    data = load_dataset(_write_series(tmp_path / "season.csv", values), kind="lstm", window=24)
    assert data.period == 12
    result = run_baselines(data)
    seasonal = _by_name(result)["seasonal-naive"]
    expected = evaluate("forecast", data.y_test, data.x_test[:, -12, :])
    assert seasonal.test_metrics == expected and seasonal.params == {"period": 12}
    assert result.name != "naive-last-value"


def test_linear_trend_with_drift_prefers_differences(tmp_path: Path) -> None:
    # Test levels lie far above anything in training; the next change is constant, so the AR on
    # differences (here a random walk with drift) is exact there.
    values = 3.0 + 0.5 * np.arange(200)
    data = load_dataset(_write_series(tmp_path / "trend.csv", values), kind="lstm", window=5)
    found = _by_name(run_baselines(data))
    assert found["ar-differences"].test_metrics["rmse"] < 1e-3
    assert found["naive-last-value"].test_metrics["rmse"] == pytest.approx(0.5, rel=1e-4)


def _text(tmp_path: Path) -> DataSplit:
    rng = np.random.default_rng(0)
    phrases = [
        "the cat sat on the mat",
        "the dog sat on the log",
        "a bird flew over the house",
        "the cat ran to the house",
    ]
    words = " . ".join(phrases[i] for i in rng.integers(0, len(phrases), size=700))
    path = tmp_path / "story.txt"
    path.write_text(words)
    return load_dataset(str(path), kind="lstm", window=4)


def test_kneser_ney_beats_add_one_bigram_on_repetitive_text(tmp_path: Path) -> None:
    data = _text(tmp_path)
    result = run_baselines(data)
    kn = _by_name(result)["kneser-ney"]
    assert result.name == "kneser-ney"
    assert 2 <= kn.params["order"] <= 5 and 0 < kn.params["discount"] <= 1
    v = len(data.vocabulary)
    stream = np.concatenate([data.x_train[0], data.y_train])
    counts = np.ones((v, v))
    np.add.at(counts, (stream[:-1], stream[1:]), 1.0)
    bigram = counts / counts.sum(axis=1, keepdims=True)
    add_one = evaluate("next-token", data.y_test, bigram[data.x_test[:, -1]])
    assert kn.test_metrics["perplexity"] < add_one["perplexity"] * 0.8
    # Higher orders see "the cat sat on" -> "the": a trigram context beats a bigram here.
    assert kn.params["order"] >= 3


def test_kneser_ney_rows_are_distributions_and_match_evaluate(tmp_path: Path) -> None:
    data = _text(tmp_path)
    v = len(data.vocabulary)
    stream = np.concatenate([data.x_train[0], data.y_train])
    model = KneserNey(stream, v, 5)
    for order in range(1, 6):
        rows = np.concatenate(list(model.probability_rows(data.x_test, order, 0.7, chunk=37)))
        assert rows.shape == (len(data.y_test), v)
        assert (rows > 0).all()
        np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-12)
        stats = model.prepare(data.x_test, data.y_test, order)
        np.testing.assert_allclose(
            model.target_probability(stats, data.y_test, 0.7),
            rows[np.arange(len(rows)), data.y_test],
            rtol=1e-12,
        )
    # The candidate's chunked metrics equal one ``evaluate`` over all full rows.
    kn = _by_name(run_baselines(data))["kneser-ney"]
    rows = np.concatenate(
        list(model.probability_rows(data.x_test, kn.params["order"], kn.params["discount"]))
    )
    expected = evaluate("next-token", data.y_test, rows)
    assert kn.test_metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert kn.test_metrics[key] == pytest.approx(value, rel=1e-9)


def test_kneser_ney_unseen_context_backs_off() -> None:
    stream = np.array([1, 2, 3, 1, 2, 3, 1, 2, 4])
    model = KneserNey(stream, 6, 3)
    history = np.array([[5, 5], [1, 2]])  # token 5 never occurs: falls back to the unigram
    rows = np.concatenate(list(model.probability_rows(history, 3, 0.75)))
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    assert rows[1, 3] > rows[1, 4] > rows[1, 5]  # after "1 2": 3 (twice) > 4 (once) > never
    assert rows[0, 5] > 0


def test_images_pca_recorded_and_svm_beats_logistic_on_digits() -> None:
    data = load_dataset("digits", kind="cnn", limit=700)
    found = _by_name(run_baselines(data))
    assert list(found) == ["logistic-regression", "rbf-svm"]
    assert "pca_components" not in found["rbf-svm"].params  # 64 pixels: used as they are
    assert found["rbf-svm"].test_metrics["accuracy"] > 0.95
    mnist = load_dataset("mnist", kind="cnn", limit=400)
    found = _by_name(run_baselines(mnist))
    assert found["rbf-svm"].params["pca_components"] == 50  # 784 pixels: PCA first


def test_large_table_subsamples_the_svm_and_records_it() -> None:
    # Past GB_SMALL_ROWS rows: the kernel SVM is fitted on a recorded subsample and boosting
    # takes its one large-table setting. (How long it takes is bench/bench_baselines.py's job.)
    rng = np.random.default_rng(0)
    n = 40_000
    x = rng.normal(size=(n, 10))
    y = (np.sin(x[:, 0]) + x[:, 1] * x[:, 2] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    data = _table(x, y, "binary")
    result = run_baselines(data)
    found = _by_name(result)
    svm = found["rbf-svm"].params
    assert svm["fit_rows"] < min(SVM_MAX_ROWS, len(data.y_train)) + 1
    assert svm["fit_rows"] < len(data.y_train) and "subsample" in svm["note"]
    assert "one setting" in found["gradient-boosting"].params["grid"]
    assert result.name == "gradient-boosting"


def test_many_classes_subsample_the_boosting_and_record_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.baselines as baselines

    # Smaller bounds than the real ones, so the same rule is exercised on a small table.
    monkeypatch.setattr(baselines, "GB_TREE_ROWS", 200_000)
    monkeypatch.setattr(baselines, "SVM_MAX_ROWS", 300)
    rng = np.random.default_rng(0)
    n = 12_000
    x = rng.normal(size=(n, 4))
    y = np.digitize(x[:, 0] + x[:, 1] * x[:, 2], [-1.0, 0.0, 1.0]).astype(np.int64)
    data = _table(x, y, "multiclass")  # 7,680 training rows x 4 classes > 20,000: "large"
    found = _by_name(run_baselines(data))
    boosting = found["gradient-boosting"].params
    assert boosting["fit_rows"] == 200_000 // (100 * 4) and "subsample" in boosting["note"]
    assert found["rbf-svm"].params["fit_rows"] == 300
    assert found["gradient-boosting"].val_metric > found["logistic-regression"].val_metric
