"""The strongest fair classical baseline on the same split, scored by the same ``evaluate``.

A neural model earns its place only by beating what a careful statistician would fit, so the
quality gate in pipelines/ compares against the best of several classical candidates:

* tables: ridge / logistic regression, an RBF-kernel SVM, histogram gradient boosting;
* images: logistic regression and an RBF-kernel SVM on pixels scaled to 0..1 (PCA first when
  the image is large);
* series: naive last value, seasonal naive, linear autoregression on levels and on first
  differences with the order chosen on validation;
* text: interpolated Kneser-Ney n-grams (``training.ngram``), order and discount on validation.

Fairness rules, so the gate can never be gamed by the split: every candidate is fitted on the
training split only, its few hyperparameters are chosen on the validation split, and the gate's
baseline is the candidate with the best *validation* primary metric; test metrics are computed
for every candidate but never consulted for a choice. Exact ties on validation (common for
accuracy on a few dozen rows) are broken by validation log-loss for classifiers, then by
candidate order, simplest first.

Cost stays bounded as data grows: linear models and histogram boosting are linear in the rows;
a kernel SVM is not (fit ~quadratic, prediction ~rows x support vectors), so it is fitted on a
seeded subsample whose size shrinks as the rows to predict grow, and ``params`` says so.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.autoregression import Autoregression
from training.data import DataSplit
from training.metrics import evaluate, primary_metric
from training.ngram import KneserNey

__all__ = ["BaselineResult", "Candidate", "run_baselines"]

# Kernel SVM: at most this many training rows, and at most KERNEL_EVALS kernel evaluations to
# predict validation + test (rows x fit rows), but never fewer than SVM_MIN_ROWS fit rows.
SVM_MAX_ROWS = 5000
SVM_MIN_ROWS = 1000
KERNEL_EVALS = 50_000_000
# Validation rows used to tune a kernel SVM's grid (the chosen one is scored on all of them).
SVM_TUNE_ROWS = 3000
SVM_C_GRID = (1.0, 10.0, 100.0)
SVM_CHUNK = 2048  # rows whose kernel values are computed at once when predicting
SVM_CALIBRATION_ROWS = 2000  # training rows whose out-of-fold decisions fit the temperature
SVM_GAMMA_FACTORS = (0.3, 3.0)  # tried around gamma="scale" at the best C
# Gradient boosting: early stopping on validation; the small grid only where rows (times trees
# per step: one per class for multiclass) are few, and where they are many one setting with a
# larger step and fewer trees (time is rows x trees).
GB_MAX_ITER = 300
GB_SMALL_ROWS = 20_000
GB_LARGE_STEP = (0.3, 100)  # (learning_rate, max_iter) above GB_SMALL_ROWS
# Rows x trees grown (a multiclass model grows one tree per class per step): above this the
# boosting fits on a seeded subsample, so many classes cannot multiply its time.
GB_TREE_ROWS = 15_000_000
GB_GRID_SMALL = ((7, 5), (7, 20), (31, 5), (31, 20))  # (max_leaf_nodes, min_samples_leaf)
GB_GRID_LARGE = ((31, 20),)
LOGISTIC_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
RIDGE_ALPHA_GRID = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0)
# Images: PCA before the models when an image has more pixels than this (or rows are many).
PCA_MIN_PIXELS = 256
PCA_MIN_ROWS = 20_000
PCA_COMPONENTS = 50
PCA_FIT_ROWS = 5000
# Text: Kneser-Ney orders and discounts tried on validation perplexity.
KN_MAX_ORDER = 5
KN_DISCOUNTS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)
TIE_TOLERANCE = 1e-9  # validation scores closer than this (relative) are ties
SEED = 0  # subsamples and randomised solvers: the baseline must not change between runs


@dataclass
class Candidate:
    """One classical method: what validation said about it, and its test scores."""

    name: str
    #: The primary metric (``primary_metric(task)``) on validation: this alone chooses.
    val_metric: float
    #: ``evaluate`` on the test split.
    test_metrics: dict[str, float]
    #: Hyperparameters chosen on validation and what was done (subsampling, PCA, ...).
    params: dict[str, Any]
    #: Fit + tune + score time.
    seconds: float
    #: Classifiers: validation cross-entropy, which breaks exact ties of ``val_metric``.
    val_log_loss: float | None = None


@dataclass
class BaselineResult:
    """The baseline the model is judged against (best on validation), plus every candidate."""

    name: str
    metrics: dict[str, float]
    all: dict[str, dict[str, float]]
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0


def run_baselines(data: DataSplit) -> BaselineResult:
    """Fit every candidate of the data's input kind, choose on validation, score on test."""
    start = time.perf_counter()
    runners: dict[str, Callable[[DataSplit], list[Candidate]]] = {
        "table": _table,
        "image": _image,
        "series": _series,
        "text": _text,
    }
    candidates = runners[data.input_kind](data)
    best = choose(candidates, higher_is_better=primary_metric(data.task)[1])
    return BaselineResult(
        name=best.name,
        metrics=best.test_metrics,
        all={c.name: c.test_metrics for c in candidates},
        candidates=candidates,
        seconds=time.perf_counter() - start,
    )


def choose(candidates: Sequence[Candidate], *, higher_is_better: bool) -> Candidate:
    """The best validation metric; ties -> lower validation log-loss -> earlier (simpler)."""
    best = candidates[0]
    for c in candidates[1:]:
        if _better(
            (c.val_metric, c.val_log_loss), (best.val_metric, best.val_log_loss), higher_is_better
        ):
            best = c
    return best


def _better(
    new: tuple[float, float | None], old: tuple[float, float | None], higher_is_better: bool
) -> bool:
    """Whether score ``new`` beats ``old`` (metric, then log-loss); a tie keeps ``old``.

    Values within ``TIE_TOLERANCE`` (relative, with an absolute floor) tie: on a noiseless
    series every AR order above the true one fits to ~1e-12, and rounding noise must not pick
    a larger model over the earlier, simpler one. NaN never wins.
    """
    (a, a_loss), (b, b_loss) = new, old
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    if abs(a - b) > TIE_TOLERANCE * (1.0 + abs(b)):
        return a > b if higher_is_better else a < b
    if a_loss is None or b_loss is None or not math.isfinite(a_loss):
        return False
    if not math.isfinite(b_loss):
        return True
    return a_loss < b_loss - TIE_TOLERANCE * (1.0 + abs(b_loss))


# --------------------------------------------------------------------------- shared scoring


class _Scorer:
    """Primary metric (and log-loss for classifiers) of outputs on validation rows."""

    def __init__(self, data: DataSplit, y: np.ndarray) -> None:
        self.task = data.task
        self.metric, self.higher = primary_metric(data.task)
        self.y = y
        self.classifier = data.task in ("binary", "multiclass")

    def __call__(self, output: np.ndarray) -> tuple[float, float | None]:
        value = evaluate(self.task, self.y, output)[self.metric]
        return value, (_log_loss(self.y, output) if self.classifier else None)

    def better(self, new: tuple[float, float | None], old: tuple[float, float | None]) -> bool:
        """Whether validation score ``new`` beats ``old`` (see ``_better``)."""
        return _better(new, old, self.higher)


def _log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy with the same clipping and renormalising ``evaluate`` uses."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)
    p /= p.sum(axis=1, keepdims=True)
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def _grid(
    options: Sequence[Any],
    fit_score: Callable[[Any], tuple[Any, tuple[float, float | None]]],
    scorer: _Scorer,
) -> tuple[Any, Any, tuple[float, float | None]]:
    """Try each option in order; the first with the best validation score wins."""
    best: tuple[Any, Any, tuple[float, float | None]] | None = None
    for option in options:
        model, score = fit_score(option)
        if best is None or scorer.better(score, best[2]):
            best = (option, model, score)
    assert best is not None
    return best


def _columns(data: DataSplit, classes: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Probabilities with one column per label (a class absent from training gets 0)."""
    out = np.zeros((len(proba), len(data.labels)), dtype=np.float64)
    out[:, classes] = proba
    return out


def _subsample(n: int, size: int, y: np.ndarray | None = None) -> np.ndarray:
    """A seeded subsample of ``size`` row indices (stratified when ``y`` holds classes)."""
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(SEED)
    if y is None:
        return np.sort(rng.choice(n, size=size, replace=False))
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 else None
    keep, _ = train_test_split(np.arange(n), train_size=size, random_state=SEED, stratify=strat)
    return np.sort(keep)


@contextmanager
def _quiet() -> Iterator[None]:
    """Convergence warnings are noise here: the baseline is what it is, its params say how."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------- tables and images


@dataclass
class _Features:
    """The feature matrices every model of a table/image run sees, and how they were made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    params: dict[str, Any]


def _table(data: DataSplit) -> list[Candidate]:
    """Linear, kernel SVM and gradient boosting on standardised features."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(data.x_train)
    scaled = _Features(
        scaler.transform(data.x_train),
        scaler.transform(data.x_val),
        scaler.transform(data.x_test),
        params={"features": "standardised"},
    )
    raw = _Features(data.x_train, data.x_val, data.x_test, {"features": "raw"})
    if data.task == "regression":
        return [_ridge(data, scaled), _svr(data, scaled), _boosting(data, raw)]
    return [_logistic(data, scaled), _svc(data, scaled), _boosting(data, raw)]


def _image(data: DataSplit) -> list[Candidate]:
    """Logistic regression and an RBF-kernel SVM on pixels scaled 0..1 (PCA when large)."""
    start = time.perf_counter()
    scale = 1.0 / (data.pixel_max or 255.0)
    splits = (data.x_train, data.x_val, data.x_test)
    flat = [x.reshape(len(x), -1).astype(np.float64) * scale for x in splits]
    n, pixels = flat[0].shape
    params: dict[str, Any] = {"features": "pixels/pixel_max"}
    if pixels > PCA_MIN_PIXELS or n > PCA_MIN_ROWS:
        from sklearn.decomposition import PCA

        k = min(PCA_COMPONENTS, pixels, n)
        fit_rows = _subsample(n, PCA_FIT_ROWS)
        pca = PCA(n_components=k, svd_solver="randomized", random_state=SEED)
        pca.fit(flat[0][fit_rows])
        flat = [pca.transform(x) for x in flat]
        params.update({"pca_components": k, "pca_fit_rows": len(fit_rows)})
    features = _Features(flat[0], flat[1], flat[2], params=params)
    shared = time.perf_counter() - start
    found = [_logistic(data, features), _svc(data, features)]
    for c in found:  # the PCA is part of each candidate's cost
        c.seconds += shared
    return found


def _candidate(
    name: str,
    data: DataSplit,
    start: float,
    *,
    val_score: tuple[float, float | None],
    test_output: np.ndarray,
    params: dict[str, Any],
) -> Candidate:
    """Wrap a fitted candidate's validation score and test output."""
    return Candidate(
        name=name,
        val_metric=float(val_score[0]),
        test_metrics=evaluate(data.task, data.y_test, test_output),
        params=params,
        seconds=time.perf_counter() - start,
        val_log_loss=val_score[1],
    )


def _ridge(data: DataSplit, f: _Features) -> Candidate:
    """Ridge regression, alpha on validation R²."""
    from sklearn.linear_model import Ridge

    start = time.perf_counter()
    scorer = _Scorer(data, data.y_val)

    def fit(alpha: float) -> tuple[Any, tuple[float, float | None]]:
        model = Ridge(alpha=alpha).fit(f.train, data.y_train)
        return model, scorer(model.predict(f.val)[:, None])

    alpha, model, score = _grid(RIDGE_ALPHA_GRID, fit, scorer)
    test = model.predict(f.test)[:, None]
    return _candidate(
        "ridge", data, start, val_score=score, test_output=test, params={**f.params, "alpha": alpha}
    )


def _logistic(data: DataSplit, f: _Features) -> Candidate:
    """Multinomial logistic regression, C on validation accuracy (ties: log-loss)."""
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    scorer = _Scorer(data, data.y_val)

    def fit(c: float) -> tuple[Any, tuple[float, float | None]]:
        with _quiet():
            model = LogisticRegression(C=c, max_iter=1000).fit(f.train, data.y_train)
        return model, scorer(_columns(data, model.classes_, model.predict_proba(f.val)))

    c, model, score = _grid(LOGISTIC_C_GRID, fit, scorer)
    test = _columns(data, model.classes_, model.predict_proba(f.test))
    return _candidate(
        "logistic-regression",
        data,
        start,
        val_score=score,
        test_output=test,
        params={**f.params, "C": c},
    )


def _svm_rows(data: DataSplit, n_train: int) -> tuple[int, str]:
    """How many training rows a kernel SVM may fit, and a note when it is a subsample."""
    predict_rows = len(data.y_val) + len(data.y_test)
    budget = max(SVM_MIN_ROWS, KERNEL_EVALS // max(predict_rows, 1))
    rows = min(n_train, SVM_MAX_ROWS, budget)
    if rows >= n_train:
        return n_train, "all training rows"
    return rows, (
        f"seeded subsample of {rows} from {n_train} training rows (kernel SVM cost grows "
        f"faster than linearly; capped at {SVM_MAX_ROWS} rows and {KERNEL_EVALS:.0e} kernel "
        "evaluations to predict validation + test)"
    )


class _Rbf:
    """Exact RBF kernels against the SVM's fit rows, computed by matrix products.

    libsvm evaluates its kernel one pair at a time (about 80 ns a pair at 20 features); the same
    numbers from a BLAS product and one ``exp`` cost a fraction of that, which is what keeps
    predicting large validation and test splits cheap. The SVM itself is scikit-learn's,
    fitted with ``kernel="precomputed"`` on the same kernel values.
    """

    def __init__(self, base: np.ndarray) -> None:
        self.base = np.asarray(base, dtype=np.float64)
        self.base_sq = (self.base**2).sum(axis=1)

    def sqdist(self, x: np.ndarray) -> np.ndarray:
        """Squared distances ``[len(x), len(base)]`` (clipped at 0 against rounding)."""
        x = np.asarray(x, dtype=np.float64)
        d = (x**2).sum(axis=1)[:, None] + self.base_sq[None, :] - 2.0 * (x @ self.base.T)
        return np.maximum(d, 0.0)

    def apply(
        self, fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, gamma: float
    ) -> np.ndarray:
        """``fn(kernel rows)`` over ``x`` in chunks, so ``[n, fit rows]`` never exists at once."""
        parts = [
            fn(np.exp(-gamma * self.sqdist(x[lo : lo + SVM_CHUNK])))
            for lo in range(0, len(x), SVM_CHUNK)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 1))


def _svm_search(
    scale_gamma: float,
    fit_one: Callable[[float, float], Any],
    tune_score: Callable[[Any, float], tuple[float, float | None]],
    scorer: _Scorer,
) -> tuple[float, float, Any]:
    """C on a log grid at gamma="scale", then gamma around "scale" at that C.

    Returns C, the gamma factor (times "scale") and the fitted model; ties keep the earlier.
    """
    best: tuple[float, float, Any, tuple[float, float | None]] | None = None

    def attempt(c: float, factor: float) -> None:
        nonlocal best
        model = fit_one(c, scale_gamma * factor)
        score = tune_score(model, scale_gamma * factor)
        if best is None or scorer.better(score, best[3]):
            best = (c, factor, model, score)

    for c in SVM_C_GRID:
        attempt(c, 1.0)
    assert best is not None
    best_c = best[0]
    for factor in SVM_GAMMA_FACTORS:
        attempt(best_c, factor)
    return best[0], best[1], best[2]


def _scale_gamma(x: np.ndarray) -> float:
    """gamma="scale" as scikit-learn defines it, as a number that grid factors can multiply."""
    return 1.0 / (x.shape[1] * float(x.var()) or 1.0)


def _decision(model: Any, kernel: np.ndarray) -> np.ndarray:
    """SVC decision values as ``[n, 1]`` (binary) or ``[n, classes]`` (one-vs-rest)."""
    d = model.decision_function(kernel)
    return d[:, None] if d.ndim == 1 else d


def _svc(data: DataSplit, f: _Features) -> Candidate:
    """RBF-kernel SVC; probabilities = temperature-scaled softmax of its decision function.

    ``break_ties=True`` makes ``predict`` the argmax of the one-vs-rest decision function, and a
    softmax (sigmoid for two classes) keeps that argmax, so the accuracy ``evaluate`` computes
    from these rows is the SVC's own. The one temperature only matters for the log-loss that
    breaks accuracy ties; it is fitted on out-of-fold decision values of the training rows
    (3 folds, as Platt scaling does), never on validation: a temperature fitted on validation
    would make the SVM's validation log-loss near 0 whenever it separates validation, and so
    win every tie it should not.
    """
    from sklearn.svm import SVC

    start = time.perf_counter()
    rows, note = _svm_rows(data, len(data.y_train))
    keep = _subsample(len(data.y_train), rows, data.y_train)
    x_fit, y_fit = f.train[keep], data.y_train[keep]
    if len(np.unique(y_fit)) < 2:  # one class in training: the SVC cannot fit
        return _constant_classifier("rbf-svm", data, start, y_fit, {**f.params, "note": note})
    rbf = _Rbf(x_fit)
    d_fit = rbf.sqdist(x_fit)
    tune = _subsample(len(data.y_val), SVM_TUNE_ROWS, data.y_val)
    d_tune = rbf.sqdist(f.val[tune])
    tune_scorer = _Scorer(data, data.y_val[tune])

    def fit_one(c: float, gamma: float) -> Any:
        svc = SVC(C=c, kernel="precomputed", break_ties=True)
        return svc.fit(np.exp(-gamma * d_fit), y_fit)

    def tune_score(model: Any, gamma: float) -> tuple[float, float | None]:
        d = _decision(model, np.exp(-gamma * d_tune))
        return tune_scorer(_softmax(data, model.classes_, d, 1.0))

    scale = _scale_gamma(f.train)
    c, factor, model = _svm_search(scale, fit_one, tune_score, tune_scorer)
    gamma = scale * factor
    temperature = _cv_temperature(data, np.exp(-gamma * d_fit), y_fit, c)

    def proba(x: np.ndarray) -> np.ndarray:
        d = rbf.apply(lambda k: _decision(model, k), x, gamma)
        return _softmax(data, model.classes_, d, temperature)

    val = _Scorer(data, data.y_val)(proba(f.val))
    params = {
        **f.params,
        "C": c,
        "gamma": f"{factor:g} x scale",
        "fit_rows": rows,
        "note": note,
        "temperature": round(temperature, 4),
    }
    return _candidate(
        "rbf-svm", data, start, val_score=val, test_output=proba(f.test), params=params
    )


def _softmax(data: DataSplit, classes: np.ndarray, d: np.ndarray, temperature: float) -> np.ndarray:
    """Decision values to probability columns, keeping the argmax (sigmoid for binary)."""
    z = d / temperature
    if z.shape[1] == 1:  # binary: positive decision = classes[1]
        p1 = 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -500, 500)))
        proba = np.stack([1.0 - p1, p1], axis=1)
    else:
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        proba = e / e.sum(axis=1, keepdims=True)
    return _columns(data, classes, proba)


def _cv_temperature(data: DataSplit, kernel: np.ndarray, y: np.ndarray, c: float) -> float:
    """The temperature (log grid) with the lowest log-loss on out-of-fold training rows.

    ``kernel`` is the fit rows' own kernel matrix; at most ``SVM_CALIBRATION_ROWS`` of them are
    split in 3 folds, each fold's SVC (same C and gamma) scoring the rows it did not see.
    """
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.svm import SVC

    keep = _subsample(len(y), SVM_CALIBRATION_ROWS, y)
    k, y = kernel[np.ix_(keep, keep)], y[keep]
    counts = np.bincount(y)
    folds = 3
    if len(y) < 2 * folds:
        return 1.0  # too few rows to calibrate: leave decision values as they are
    splitter: Any = (
        StratifiedKFold(folds, shuffle=True, random_state=SEED)
        if counts[counts > 0].min() >= folds
        else KFold(folds, shuffle=True, random_state=SEED)
    )
    held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for fit_idx, out_idx in splitter.split(k, y):
        if len(np.unique(y[fit_idx])) < 2:
            return 1.0
        model = SVC(C=c, kernel="precomputed", break_ties=True)
        model.fit(k[np.ix_(fit_idx, fit_idx)], y[fit_idx])
        held.append((_decision(model, k[np.ix_(out_idx, fit_idx)]), out_idx, model.classes_))
    grid = np.geomspace(0.02, 50.0, 41)

    def loss(t: float) -> float:
        return sum(_log_loss(y[idx], _softmax(data, cls, d, t)) * len(idx) for d, idx, cls in held)

    return float(grid[int(np.argmin([loss(float(t)) for t in grid]))])


def _constant_classifier(
    name: str, data: DataSplit, start: float, y_fit: np.ndarray, params: dict[str, Any]
) -> Candidate:
    """The only class seen in training, for every row (a method that cannot fit one class)."""
    proba = np.zeros((1, len(data.labels)))
    proba[0, int(y_fit[0])] = 1.0
    scorer = _Scorer(data, data.y_val)
    val = scorer(np.repeat(proba, len(data.y_val), axis=0))
    test = np.repeat(proba, len(data.y_test), axis=0)
    return _candidate(
        name,
        data,
        start,
        val_score=val,
        test_output=test,
        params={**params, "fallback": "one class"},
    )


def _svr(data: DataSplit, f: _Features) -> Candidate:
    """RBF-kernel SVR on standardised features and a standardised target."""
    from sklearn.svm import SVR

    start = time.perf_counter()
    rows, note = _svm_rows(data, len(data.y_train))
    keep = _subsample(len(data.y_train), rows)
    y_train = data.y_train.astype(np.float64)
    mean, std = float(y_train.mean()), float(y_train.std()) or 1.0
    x_fit, y_fit = f.train[keep], (y_train[keep] - mean) / std
    rbf = _Rbf(x_fit)
    d_fit = rbf.sqdist(x_fit)
    tune = _subsample(len(data.y_val), SVM_TUNE_ROWS)
    d_tune = rbf.sqdist(f.val[tune])
    tune_scorer = _Scorer(data, data.y_val[tune])

    def values(model: Any, kernel: np.ndarray) -> np.ndarray:
        return (mean + std * model.predict(kernel))[:, None]

    def fit_one(c: float, gamma: float) -> Any:
        svr = SVR(C=c, kernel="precomputed", epsilon=0.1)
        return svr.fit(np.exp(-gamma * d_fit), y_fit)

    def tune_score(model: Any, gamma: float) -> tuple[float, float | None]:
        return tune_scorer(values(model, np.exp(-gamma * d_tune)))

    scale = _scale_gamma(f.train)
    c, factor, model = _svm_search(scale, fit_one, tune_score, tune_scorer)

    def predict(x: np.ndarray) -> np.ndarray:
        return rbf.apply(lambda k: values(model, k), x, scale * factor)

    val = _Scorer(data, data.y_val)(predict(f.val))
    params = {
        **f.params,
        "target": "standardised",
        "C": c,
        "gamma": f"{factor:g} x scale",
        "epsilon": 0.1,
        "fit_rows": rows,
        "note": note,
    }
    return _candidate(
        "rbf-svm", data, start, val_score=val, test_output=predict(f.test), params=params
    )


def _boosting(data: DataSplit, f: _Features) -> Candidate:
    """Histogram gradient boosting, early-stopped on the validation split's loss.

    The number of trees is chosen by early stopping on validation (``X_val``); a small grid of
    tree sizes is tried where rows are few, one setting where they are many (the cost is linear
    in the rows, but a grid multiplies it), and past ``GB_TREE_ROWS`` rows x trees (many rows
    and many classes) a seeded subsample is fitted, so the cost stays bounded.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    start = time.perf_counter()
    scorer = _Scorer(data, data.y_val)
    regression = data.task == "regression"
    per_step = 1 if data.task in ("regression", "binary") else max(len(data.labels), 1)
    n = len(data.y_train)
    small = n * per_step <= GB_SMALL_ROWS
    grid = GB_GRID_SMALL if small else GB_GRID_LARGE
    rate, max_iter = (0.1, GB_MAX_ITER) if small else GB_LARGE_STEP
    rows = n if small else min(n, GB_TREE_ROWS // (max_iter * per_step))
    keep = _subsample(n, rows, None if regression else data.y_train)
    x_fit, y_fit = f.train[keep], data.y_train[keep]

    def output(model: Any, x: np.ndarray) -> np.ndarray:
        if regression:
            return model.predict(x)[:, None]
        return _columns(data, model.classes_, model.predict_proba(x))

    def fit(option: tuple[int, int]) -> tuple[Any, tuple[float, float | None]]:
        leaves, min_leaf = option
        cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        model = cls(
            learning_rate=rate,
            max_iter=max_iter,
            max_leaf_nodes=leaves,
            min_samples_leaf=min_leaf,
            early_stopping=True,
            n_iter_no_change=20,
            random_state=SEED,
        )
        with _quiet():
            model.fit(x_fit, y_fit, X_val=f.val, y_val=data.y_val)
        return model, scorer(output(model, f.val))

    if not regression and len(np.unique(y_fit)) < 2:
        return _constant_classifier("gradient-boosting", data, start, y_fit, f.params)
    (leaves, min_leaf), model, score = _grid(grid, fit, scorer)
    params = {
        **f.params,
        "learning_rate": rate,
        "max_leaf_nodes": leaves,
        "min_samples_leaf": min_leaf,
        "trees": int(model.n_iter_),
        "early_stopping": "validation loss, 20 rounds",
        "grid": "small" if small else f"one setting, fewer larger steps (> {GB_SMALL_ROWS} rows)",
        "fit_rows": rows,
        "note": "all training rows"
        if rows == n
        else f"seeded subsample of {rows} from {n} rows (rows x trees <= {GB_TREE_ROWS:.1e})",
    }
    return _candidate(
        "gradient-boosting",
        data,
        start,
        val_score=score,
        test_output=output(model, f.test),
        params=params,
    )


# --------------------------------------------------------------------------- series


def _series(data: DataSplit) -> list[Candidate]:
    """Naive, seasonal naive and linear autoregressions, all from each window alone."""
    found = [_series_rule("naive-last-value", data, 1, {"lag": 1})]
    period, window = data.period, data.x_train.shape[1]
    if period is not None and 2 <= period <= window:
        found.append(_series_rule("seasonal-naive", data, period, {"period": period}))
    found.append(_autoregression(data, differences=False))
    found.append(_autoregression(data, differences=True))
    return found


def _series_rule(name: str, data: DataSplit, lag: int, params: dict[str, Any]) -> Candidate:
    """Predict the value ``lag`` steps before the target (the window's ``-lag``-th value)."""
    start = time.perf_counter()
    val = _Scorer(data, data.y_val)(data.x_val[:, -lag, :])
    return _candidate(
        name, data, start, val_score=val, test_output=data.x_test[:, -lag, :], params=params
    )


def _autoregression(data: DataSplit, *, differences: bool) -> Candidate:
    """Least-squares AR with intercept; order p (last p values of the window) on validation.

    On levels it regresses the next value on the last ``p`` values; on first differences it
    regresses the next change on the last ``p`` changes inside the window and adds it to the
    last value (``p = 0`` is a random walk with drift), which suits trending series whose
    future levels lie outside anything seen in training.
    """
    start = time.perf_counter()
    scorer = _Scorer(data, data.y_val)
    path = "differences" if differences else "levels"

    def fit(p: int) -> tuple[Any, tuple[float, float | None]]:
        model = Autoregression.fit(data.x_train, data.y_train, path, p)
        return model, scorer(model.predict(data.x_val)[:, None])

    window = data.x_train.shape[1]
    max_p = min(window - 1 if differences else window, max(len(data.y_train) - 2, 0))
    orders = range(0 if differences else 1, max_p + 1)
    p, model, score = _grid(list(orders) or [0], fit, scorer)
    name = "ar-differences" if differences else "ar-levels"
    params = {"order": p, "fit": "least squares with intercept", "orders_tried": len(orders)}
    return _candidate(
        name,
        data,
        start,
        val_score=score,
        test_output=model.predict(data.x_test)[:, None],
        params=params,
    )


# --------------------------------------------------------------------------- text


def _text(data: DataSplit) -> list[Candidate]:
    """Interpolated Kneser-Ney over the network's own vocabulary and training tokens."""
    start = time.perf_counter()
    v = len(data.vocabulary)
    stream = np.concatenate([data.x_train[0], data.y_train])  # the training token stream
    window = data.x_train.shape[1]
    model = KneserNey(stream, v, min(KN_MAX_ORDER, window + 1))
    best: tuple[float, int, float] | None = None
    per_order: dict[str, float] = {}
    for order in range(2, model.max_order + 1):
        stats = model.prepare(data.x_val, data.y_val, order)
        for discount in KN_DISCOUNTS:
            p = model.target_probability(stats, data.y_val, discount)
            ce = float(-np.log(np.clip(p, 1e-12, None)).mean())
            per_order[f"val_perplexity_order{order}"] = min(
                per_order.get(f"val_perplexity_order{order}", math.inf), math.exp(ce)
            )
            if best is None or ce < best[0]:
                best = (ce, order, discount)
    if best is None:  # a window of 0 tokens cannot hold a context: unigram only
        best = (math.nan, 1, KN_DISCOUNTS[0])
    _, order, discount = best
    # Validation perplexity through ``evaluate`` itself, like every other candidate's.
    val_metrics = _chunked_evaluate(
        data, model, data.x_val, data.y_val, order=order, discount=discount
    )
    test_metrics = _chunked_evaluate(
        data, model, data.x_test, data.y_test, order=order, discount=discount
    )
    params: dict[str, Any] = {
        "order": order,
        "discount": discount,
        "vocabulary": v,
        "training_tokens": len(stream),
        **{k: round(x, 3) for k, x in per_order.items()},
    }
    return [
        Candidate(
            name="kneser-ney",
            val_metric=val_metrics["perplexity"],
            test_metrics=test_metrics,
            params=params,
            seconds=time.perf_counter() - start,
        )
    ]


def _chunked_evaluate(
    data: DataSplit,
    model: KneserNey,
    history: np.ndarray,
    y: np.ndarray,
    *,
    order: int,
    discount: float,
) -> dict[str, float]:
    """``evaluate`` over full probability rows, chunk by chunk, combined exactly.

    Every next-token metric is a mean over rows (cross-entropy, top-1, top-k), so weighting
    each chunk's value by its rows gives what one call on all rows would, without holding
    ``[n, vocabulary]`` at once; perplexity is then ``exp`` of the combined cross-entropy.
    """
    sums: dict[str, float] = {}
    lo = 0
    for rows in model.probability_rows(history, order, discount):
        part = evaluate(data.task, y[lo : lo + len(rows)], rows)
        for k, value in part.items():
            sums[k] = sums.get(k, 0.0) + value * len(rows)
        lo += len(rows)
    out = {k: s / max(lo, 1) for k, s in sums.items()}
    out["perplexity"] = math.exp(out["cross_entropy"])
    return out
