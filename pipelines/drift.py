"""Has what a model version serves moved away from what it learned from? Column by column.

Both sides are rows in the capture layout (``serving/capture.py``): the *reference* profile the
train flow stores with the run (training inputs, and the test split's inputs and predictions),
and the *current* rows the server captured. Each comparable column is tested on its own:

* numerical columns (table features; series, image and text summary statistics; a regressor's
  prediction; a classifier's top score): the Wasserstein distance between the two samples,
  divided by the reference's standard deviation;
* categorical columns (a classifier's predicted label; a text model's tokens, the reference's
  most frequent ones and "other"): the Jensen-Shannon distance between the two frequency
  distributions.

A column drifts when the difference is both large and not chance: its distance reaches
:data:`COLUMN_THRESHOLD` (the methods and threshold Evidently's ``DataDriftPreset`` uses above a
thousand rows: effect sizes, so a huge sample of unchanged data or an autocorrelated series does
not raise alarms) *and* a two-sample test rejects "same distribution" at :data:`COLUMN_ALPHA`
(for numbers a permutation test of the same distance, for labels chi-square, the test Evidently
uses below a thousand rows): with few rows a distance alone is mostly noise (a 36-row test split
has no stable spread). The
verdict: *drift* when at least ``drift_share`` of the input columns drifted, or the predictions
did (a model that now answers differently matters even when its inputs look alike). Inputs are
compared with the profile's training rows, predictions with the profile's rows that carry them
(``pipelines/monitor.py`` decides which: the test split, or for splits in time the training
windows).

Why SciPy rather than Evidently itself: Evidently's newest release (0.7.23) fails to import with
pandas 3 (it imports ``pandas.core.dtypes.common.infer_dtype_from_object``, which pandas 3
removed), and holding the whole training stack on pandas 2 for one report is the wrong trade.
The statistics are SciPy's own (``scipy.stats.wasserstein_distance``,
``scipy.spatial.distance.jensenshannon``), the functions Evidently calls for these methods.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import PipelineError
from pipelines.settings import DEFAULT_DRIFT_SHARE

#: A column drifts at this distance (normed Wasserstein or Jensen-Shannon), Evidently's default...
COLUMN_THRESHOLD = 0.1
#: ... when its two-sample test (a permutation test of that distance, chi-square) also has p
#: below this.
COLUMN_ALPHA = 0.01
#: Shuffles per numerical column, and rows a side they use: enough to resolve p < COLUMN_ALPHA.
PERMUTATIONS = 200
PERMUTATION_ROWS = 2000
#: Below this many current rows the verdict is "not enough data yet", never an alarm.
MIN_ROWS = 200
#: Text tokens: the reference's most frequent this many, the rest pooled as "other".
TOP_TOKENS = 50
#: Columns that say who and when, never compared.
META_COLUMNS = frozenset(
    {"model", "version", "source", "request_id", "trace_id", "timestamp", "latency_ms", "row"}
)
PREDICTION_COLUMNS = ("prediction", "prediction.score")
#: The ``source`` of a reference profile's training rows: the inputs are compared with these.
TRAIN_SOURCE = "train"
TOKENS = "input.tokens"
Verdict = Literal["drift", "no drift", "not enough data"]


@dataclass(frozen=True)
class ColumnDrift:
    """One column's comparison."""

    column: str
    group: Literal["input", "prediction"]
    kind: Literal["numerical", "categorical"]
    method: str
    score: float
    p_value: float
    drifted: bool
    reference: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftReport:
    """The verdict and every column behind it."""

    verdict: Verdict
    #: The profile's training rows, which inputs are compared with.
    n_reference: int
    n_current: int
    drift_share: float
    input_share: float
    prediction_drifted: bool
    columns: list[ColumnDrift]

    @property
    def line(self) -> str:
        """The one-line answer for a terminal."""
        if self.verdict == "not enough data":
            return f"not enough data yet (n < {MIN_ROWS}: {self.n_current} rows captured)"
        inputs = [c for c in self.columns if c.group == "input"]
        drifted = [c.column for c in self.columns if c.drifted]
        what = (
            f"{sum(c.drifted for c in inputs)}/{len(inputs)} input columns drifted "
            f"(threshold {self.drift_share:.0%})"
            + ("; predictions drifted" if self.prediction_drifted else "")
        )
        top = ", ".join(drifted[:5]) + (" ..." if len(drifted) > 5 else "")
        return (
            f"{self.verdict}: {what}"
            + (f" [{top}]" if drifted else "")
            + f"; {self.n_current} rows vs {self.n_reference} training rows"
        )

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow: the verdict's inputs and every column's distance."""
        out = {
            "drift.detected": float(self.verdict == "drift"),
            "drift.input_share": self.input_share,
            "drift.prediction": float(self.prediction_drifted),
            "rows.current": float(self.n_current),
            "rows.reference": float(self.n_reference),
        }
        out.update({f"drift.score.{c.column}": c.score for c in self.columns})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "line": self.line}


def comparable_columns(table: pa.Table) -> dict[str, tuple[str, str]]:
    """column -> (group, kind) for what can be compared: scalar numeric or string columns of
    the inputs and the prediction; text tokens when the input is a list of integer ids."""
    out: dict[str, tuple[str, str]] = {}
    for name, type_ in zip(table.column_names, table.schema.types, strict=True):
        if name in META_COLUMNS or name.startswith("output"):
            continue
        group = "prediction" if name in PREDICTION_COLUMNS else "input"
        if group == "input" and not name.startswith("input"):
            continue
        if pa.types.is_floating(type_) or pa.types.is_integer(type_):
            out[name] = (group, "numerical")
        elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
            out[name] = (group, "categorical")
        elif _is_token_list(name, type_, table):
            out[TOKENS] = ("input", "categorical")
    return out


def _is_token_list(name: str, type_: pa.DataType, table: pa.Table) -> bool:
    """The text layout's ``input``: a list of integer token ids with a ``.length`` beside it."""
    return (
        name == "input"
        and pa.types.is_list(type_)
        and pa.types.is_integer(type_.value_type)
        and "input.length" in table.column_names
    )


def _values(table: pa.Table, column: str) -> np.ndarray:
    """Non-null values of a column (text tokens flattened, padding and all)."""
    if column == TOKENS:
        col = pc.list_flatten(table.column("input"))
    else:
        col = table.column(column).drop_null()
    values = col.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    return values


Compared = tuple[float, float, dict[str, float], dict[str, float]]


def _numerical(ref: np.ndarray, cur: np.ndarray) -> Compared:
    """(normed Wasserstein distance, its permutation p-value, reference and current summaries).

    The p-value is of the distance itself: how often rows shuffled between the two sides give a
    distance as large. Kolmogorov-Smirnov, the obvious test, barely sees a change of spread
    (features scaled by 1.5 around their mean, mixed half and half with unchanged rows, gave
    KS p-values of 0.02-0.4 at a normed distance of 0.2).
    """
    from scipy.stats import wasserstein_distance

    ref, cur = ref.astype(np.float64), cur.astype(np.float64)
    spread = float(np.std(ref))
    distance = float(wasserstein_distance(ref, cur))
    # A constant reference: any change at all is a shift.
    score = distance / spread if spread > 0 else (0.0 if distance == 0 else math.inf)
    return score, _permutation_p(ref, cur, distance), _summary(ref), _summary(cur)


def _permutation_p(ref: np.ndarray, cur: np.ndarray, observed: float) -> float:
    """P(distance >= observed) when the sides are exchangeable, from PERMUTATIONS shuffles of
    at most PERMUTATION_ROWS rows a side (seeded: the same data gives the same answer)."""
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    if len(ref) > PERMUTATION_ROWS:
        ref = rng.choice(ref, PERMUTATION_ROWS, replace=False)
    if len(cur) > PERMUTATION_ROWS:
        cur = rng.choice(cur, PERMUTATION_ROWS, replace=False)
    observed = float(wasserstein_distance(ref, cur))  # of the samples the shuffles compare
    pooled, n = np.concatenate([ref, cur]), len(ref)
    hits = 0
    for _ in range(PERMUTATIONS):
        rng.shuffle(pooled)
        hits += wasserstein_distance(pooled[:n], pooled[n:]) >= observed
    return (hits + 1) / (PERMUTATIONS + 1)


def _summary(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(x, [0.05, 0.5, 0.95]) if len(x) else [math.nan] * 3
    return {
        "mean": float(np.mean(x)) if len(x) else math.nan,
        "std": float(np.std(x)) if len(x) else math.nan,
        "p05": float(q[0]),
        "p50": float(q[1]),
        "p95": float(q[2]),
    }


def _categorical(ref: np.ndarray, cur: np.ndarray, top: int | None = None) -> Compared:
    """(Jensen-Shannon distance, chi-square p-value, largest shares on each side)."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    ref_keys, ref_counts = np.unique(ref.astype(str), return_counts=True)
    if top is not None and len(ref_keys) > top:
        keep = set(ref_keys[np.argsort(-ref_counts, kind="stable")[:top]])
    else:
        keep = set(ref_keys)

    def counts(x: np.ndarray) -> dict[str, float]:
        keys, n = np.unique(x.astype(str), return_counts=True)
        out: dict[str, float] = {}
        for k, c in zip(keys, n, strict=True):
            label = k if k in keep else "other"
            out[label] = out.get(label, 0.0) + float(c)
        return out

    p, q = counts(ref), counts(cur)
    keys = sorted(set(p) | set(q))
    table = np.array([[p.get(k, 0.0) for k in keys], [q.get(k, 0.0) for k in keys]])
    score = float(jensenshannon(table[0], table[1]))  # normalises the counts itself
    p_value = float(chi2_contingency(table).pvalue) if len(keys) > 1 else 1.0

    def shares(c: dict[str, float]) -> dict[str, float]:
        total = sum(c.values()) or 1.0
        return _largest({k: v / total for k, v in c.items()})

    return score, p_value, shares(p), shares(q)


def _largest(shares: dict[str, float], n: int = 10) -> dict[str, float]:
    return dict(sorted(shares.items(), key=lambda kv: -kv[1])[:n])


def check_share(drift_share: float) -> None:
    """The one rule for ``--drift-share``: a share of input columns, above 0 and at most 1."""
    if not 0 < drift_share <= 1:
        raise PipelineError(f"--drift-share must be in (0, 1], got {drift_share}")


def compare(
    reference: pa.Table,
    current: pa.Table,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    min_rows: int = MIN_ROWS,
) -> DriftReport:
    """Compare current rows with the reference profile, column by column, and decide."""
    check_share(drift_share)
    n_current = current.num_rows
    learned = _training_rows(reference)
    if n_current < min_rows:
        return DriftReport(
            "not enough data", learned.num_rows, n_current, drift_share, 0.0, False, []
        )
    columns = comparable_columns(reference)
    theirs = comparable_columns(current)
    results: list[ColumnDrift] = []
    for name, (group, kind) in columns.items():
        if name not in theirs:
            continue
        ref = _values(learned if group == "input" else reference, name)
        cur = _values(current, name)
        if len(ref) == 0 or len(cur) == 0:
            continue
        if kind == "numerical":
            score, p_value, rs, cs = _numerical(ref, cur)
            method = "wasserstein (normed) + permutation"
        else:
            top = TOP_TOKENS if name == TOKENS else None
            score, p_value, rs, cs = _categorical(ref, cur, top)
            method = "jensen-shannon + chi-square"
        drifted = bool(score >= COLUMN_THRESHOLD and p_value < COLUMN_ALPHA)
        results.append(
            ColumnDrift(name, group, kind, method, score, p_value, drifted, rs, cs)  # type: ignore[arg-type]
        )
    inputs = [c for c in results if c.group == "input"]
    share = sum(c.drifted for c in inputs) / len(inputs) if inputs else 0.0
    predicted = any(c.drifted for c in results if c.group == "prediction")
    verdict: Verdict = "drift" if (inputs and share >= drift_share) or predicted else "no drift"
    return DriftReport(verdict, learned.num_rows, n_current, drift_share, share, predicted, results)


def _training_rows(reference: pa.Table) -> pa.Table:
    """The rows whose inputs the model learned from: the profile's training rows.

    A profile also holds the test split's inputs, but only so that it can hold the model's
    answers to them (``pipelines/monitor.py``); they are not what the model was fitted to. Where
    the split is in time (series, text) they are a later period, and pooling them with the
    training rows makes a reference that no period matches: the training period itself then
    reads as drift. A table without training rows (or without ``source``) is used whole.
    Predictions are compared with every row that has one (nulls are dropped).
    """
    if "source" not in reference.column_names:
        return reference
    rows = reference.filter(pc.equal(reference.column("source"), TRAIN_SOURCE))
    return rows if rows.num_rows else reference


def report_html(report: DriftReport, title: str) -> str:
    """A self-contained HTML page: the verdict, then one row per column, drifted first."""
    rows: Iterable[ColumnDrift] = sorted(report.columns, key=lambda c: (not c.drifted, c.column))

    def stats(d: dict[str, float]) -> str:
        return ", ".join(f"{html.escape(str(k))}={v:.4g}" for k, v in d.items())

    body = "\n".join(
        f"<tr class={'drift' if c.drifted else 'ok'}><td>{html.escape(c.column)}</td>"
        f"<td>{c.group}</td><td>{c.kind}</td><td>{c.method}</td><td>{c.score:.4f}</td>"
        f"<td>{c.p_value:.2g}</td>"
        f"<td>{'yes' if c.drifted else 'no'}</td><td>{stats(c.reference)}</td>"
        f"<td>{stats(c.current)}</td></tr>"
        for c in rows
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}tr.drift{{background:#fde2e2}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p><b>{html.escape(report.line)}</b></p>
<p>A column drifts when its distance reaches {COLUMN_THRESHOLD} (Wasserstein distance over the
reference's standard deviation for numbers, Jensen-Shannon distance for labels and tokens) and
its two-sample test (a permutation test of the distance, chi-square) gives
p &lt; {COLUMN_ALPHA}. The
verdict is drift when at least {report.drift_share:.0%} of the input columns drifted, or the
predictions did.</p>
<table><tr><th>column</th><th>group</th><th>kind</th><th>method</th><th>distance</th>
<th>p</th><th>drifted</th><th>reference</th><th>current</th></tr>
{body}
</table></body></html>
"""
