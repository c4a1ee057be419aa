"""Does the monitor's drift check stay quiet on unchanged data and speak up on a clear shift?

    .venv/bin/python bench/bench_drift.py [--seeds 0,1,2,3,4] [--rows 500] [--data NAME,...]
        [--detail]

Issue #13's requirement: with data drawn from the training distribution ``monitor`` reports no
drift on every built-in data set (no false alarm at the default threshold, over several seeds);
with a clear shift (features scaled, digits rotated or inverted, a series with a level jump,
text from another domain) it reports drift.

For every built-in data set and every seed the script trains a small model of the data set's
family (a few epochs: the check is about the data, not the model's quality), exports it to ONNX,
and builds its reference profile exactly as the train flow does
(``pipelines.monitor.reference_profile``). Then, per condition, it builds ``--rows`` "current"
rows exactly as the server captures them (ONNX Runtime runs the model on the inputs,
``CaptureLayout.rows(inputs, outputs, source="serving")``) and asks
``pipelines.drift.compare`` for the verdict at its defaults. Each seed trains its own model on
its own split, so a seed varies the split, the model, the reference and the current rows.

Conditions (what the inputs are; the model answers them in every case). The reference's inputs
are the training split's (``pipelines/drift.py`` compares inputs with those rows), so
"in-distribution" means rows of the training distribution that the reference does not hold,
where such rows exist:

* tables and images, ``held-out``: the validation and test splits' rows (shuffled splits, so
  unseen samples of the training distribution), drawn with replacement when there are fewer
  than ``--rows`` (wine has 64, each then repeated about eight times: a harsher test than real
  traffic, whose rows are independent);
* series and text, whose validation and test splits are *later* stretches of the series or
  text: ``training windows``, a seeded sample of the training split's windows (with replacement
  when there are fewer; a sunspots profile holds all of its 203 training windows, so there this
  row checks the comparison on the reference's own rows, while pydoc-text's 500 come from 52,000
  windows of which the profile keeps a 5,000 sample), and ``test split (later)``, the latest
  windows as a forecaster meets them. That a later period differs from the training one is a
  finding, not a false alarm, so no verdict is expected there: the row says what the monitor
  makes of it;
* shifts: tables ``features x1.5`` and ``features +1 std`` (the training split's std per
  feature); images ``rotated 90°`` and ``inverted`` (``pixel_max - x``); series
  ``level +2 std`` (the training windows after a level jump of twice the training values'
  std); text ``Python source`` (Python standard-library modules, tokenized by the model's own
  pattern and vocabulary, unknown words as ``<unk>``). Each shift is applied to the rows of the
  first in-distribution condition;
* and ``50 rows``: too few to decide; the verdict must be "not enough data".

Prints a markdown table: the expected verdict, the verdicts over seeds (✗ when any differs
from the expected one; the exit status is then 1), the median share of input columns that
drifted, how often the predictions drifted, and how many columns were compared. ``--detail``
adds, per data set and condition, the columns that drifted in any seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    import onnxruntime as ort
    import pyarrow as pa

    import training
    from pipelines.drift import DriftReport
    from serving.capture import CaptureLayout

#: Family and epochs per built-in data set: enough to make a model that answers sensibly,
#: few enough that all eight train in well under a minute per seed.
MODELS: dict[str, tuple[str, int]] = {
    "breast-cancer": ("fnn", 30),
    "wine": ("fnn", 30),
    "diabetes": ("fnn", 30),
    "digits": ("cnn", 5),
    "mnist": ("cnn", 2),
    "sunspots": ("lstm", 5),
    "co2": ("lstm", 3),
    "pydoc-text": ("lstm", 1),
}
ROWS = 500
TOO_FEW = 50
SEEDS = (0, 1, 2, 3, 4)
#: Standard-library modules whose source is the "other domain" for the text model: code, not
#: the English prose about Python that pydoc's topics are.
PYTHON_MODULES = ("argparse", "subprocess", "textwrap", "json.decoder", "collections", "typing")

Inputs = Callable[["training.DataSplit", np.random.Generator, int], np.ndarray]


def draw(x: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rows of ``x``: a sample without replacement when there are enough, else with."""
    return x[rng.choice(len(x), n, replace=len(x) < n)]


def held_out(data: training.DataSplit, rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows the reference's inputs do not hold: the validation and test splits (tables and
    images: shuffled splits, so unseen samples of the training distribution)."""
    return draw(np.concatenate([data.x_val, data.x_test]), rng, n)


def test_split(data: training.DataSplit, rng: np.random.Generator, n: int) -> np.ndarray:
    """The test split (series, text: the latest stretch, after the validation split)."""
    return draw(data.x_test, rng, n)


def training_windows(data: training.DataSplit, rng: np.random.Generator, n: int) -> np.ndarray:
    """Windows of the training split (series, text: the period the model learned from)."""
    return draw(data.x_train, rng, n)


def scaled(factor: float) -> Inputs:
    """Held-out table rows with every feature multiplied by ``factor``."""

    def make(data: training.DataSplit, rng: np.random.Generator, n: int) -> np.ndarray:
        return (held_out(data, rng, n) * factor).astype(data.x_test.dtype)

    return make


def shifted_by_std(data: training.DataSplit, rng: np.random.Generator, n: int) -> np.ndarray:
    """Held-out table rows with every feature moved up by its training standard deviation."""
    return (held_out(data, rng, n) + data.x_train.std(axis=0)).astype(data.x_test.dtype)


def rotated(data: training.DataSplit, rng: np.random.Generator, n: int) -> np.ndarray:
    """Held-out images turned by 90 degrees."""
    return np.ascontiguousarray(np.rot90(held_out(data, rng, n), k=1, axes=(2, 3)))


def inverted(data: training.DataSplit, rng: np.random.Generator, n: int) -> np.ndarray:
    """Held-out images in negative: the format's largest pixel value minus each pixel."""
    top = data.pixel_max if data.pixel_max is not None else float(data.x_train.max())
    return (top - held_out(data, rng, n)).astype(data.x_test.dtype)


def level_jump(data: training.DataSplit, rng: np.random.Generator, n: int) -> np.ndarray:
    """Training windows after the series jumped up by twice its standard deviation."""
    return (training_windows(data, rng, n) + 2 * data.x_train.std()).astype(data.x_train.dtype)


def python_source(data: training.DataSplit, rng: np.random.Generator, n: int) -> np.ndarray:
    """Windows of Python standard-library source, as a client of this model would send them:
    tokenized by the model's pattern, words outside its vocabulary as ``<unk>`` (id 0)."""
    import importlib
    import inspect

    from training.data import tokenize

    text = "\n".join(inspect.getsource(importlib.import_module(m)) for m in PYTHON_MODULES)
    index = {token: i for i, token in enumerate(data.vocabulary)}
    unk = index[data.unk_token]
    ids = np.array([index.get(t, unk) for t in tokenize(text, data.tokenizer_pattern)], np.int64)
    assert data.window is not None
    windows = np.lib.stride_tricks.sliding_window_view(ids, data.window)
    return np.ascontiguousarray(draw(windows, rng, n))


NO_DRIFT, DRIFT, TOO_FEW_ROWS = "no drift", "drift", "not enough data"
#: Expected for a later period than the training data: nothing (the requirement is about the
#: training distribution; whether a later stretch of a series or text moved is what is measured).
UNJUDGED = "-"


@dataclass(frozen=True)
class Condition:
    """One kind of current traffic: its name, its rows, and the right verdict on it."""

    name: str
    inputs: Inputs
    expected: str
    rows: int = ROWS


def conditions(input_kind: str) -> list[Condition]:
    """What each input kind is tested with (the module docstring's list)."""
    if input_kind == "table":
        base = [
            Condition("held-out", held_out, NO_DRIFT),
            Condition("features x1.5", scaled(1.5), DRIFT),
            Condition("features +1 std", shifted_by_std, DRIFT),
        ]
    elif input_kind == "image":
        base = [
            Condition("held-out", held_out, NO_DRIFT),
            Condition("rotated 90°", rotated, DRIFT),
            Condition("inverted", inverted, DRIFT),
        ]
    elif input_kind == "series":
        base = [
            Condition("training windows", training_windows, NO_DRIFT),
            Condition("test split (later)", test_split, UNJUDGED),
            Condition("level +2 std", level_jump, DRIFT),
        ]
    else:
        base = [
            Condition("training windows", training_windows, NO_DRIFT),
            Condition("test split (later)", test_split, UNJUDGED),
            Condition("Python source", python_source, DRIFT),
        ]
    return [*base, Condition(f"{TOO_FEW} rows", base[0].inputs, TOO_FEW_ROWS, TOO_FEW)]


@dataclass
class Model:
    """A trained, exported model and what the server would capture for it."""

    result: training.TrainResult
    layout: CaptureLayout
    session: ort.InferenceSession
    reference: pa.Table

    def capture(self, x: np.ndarray) -> pa.Table:
        """Rows as the server captures them for a batch ``x``: the model's own answers."""
        (inp,), out = self.layout.inputs, self.layout.outputs[0]
        x = x.astype(inp.dtype)
        y = self.session.run([out.name], {inp.name: x})[0]
        return self.layout.rows({inp.name: x}, {out.name: y}, source="serving")


def build(data: str, seed: int, workdir: Path) -> Model:
    """Train, export and profile a small model of ``data`` as the train flow would."""
    import onnxruntime as ort

    import training
    from pipelines.monitor import reference_profile
    from serving.capture import CaptureLayout

    kind, epochs = MODELS[data]
    result = training.train(training.TrainSpec(kind=kind, data=data, epochs=epochs, seed=seed))
    path = workdir / f"{data}-{seed}.onnx"
    training.export_onnx(result, path)
    name, version = f"{data}-{kind}", str(seed + 1)
    return Model(
        result=result,
        layout=CaptureLayout.from_onnx(path, name, version),
        session=ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]),
        reference=reference_profile(str(path), result, name, version),
    )


@dataclass
class Cell:
    """One data set and condition over all seeds."""

    data: str
    condition: Condition
    reports: list[DriftReport]

    @property
    def wrong(self) -> bool:
        """Any seed's verdict differs from the expected one (never, when none is expected)."""
        expected = self.condition.expected
        return expected != UNJUDGED and any(r.verdict != expected for r in self.reports)

    def row(self) -> str:
        verdicts = Counter(r.verdict for r in self.reports)
        said = ", ".join(f"{v} {n}/{len(self.reports)}" for v, n in verdicts.most_common())
        decided = [r for r in self.reports if r.verdict != "not enough data"]
        share = f"{statistics.median(r.input_share for r in decided):.2f}" if decided else "-"
        predicted = sum(r.prediction_drifted for r in decided)
        columns = sorted({len(r.columns) for r in decided})
        compared = "/".join(map(str, columns)) if columns else "-"
        mark = " ✗" if self.wrong else ""
        return (
            f"| {self.data} | {self.condition.name} | {self.condition.expected} | {said}{mark} | "
            f"{share} | "
            f"{predicted}/{len(decided) if decided else 0} | {compared} |"
        )

    def detail(self) -> str:
        drifted: Counter[str] = Counter()
        for r in self.reports:
            drifted.update(c.column for c in r.columns if c.drifted)
        top = ", ".join(f"{c} {n}" for c, n in drifted.most_common(8)) or "none"
        shares = [r.input_share for r in self.reports if r.verdict != "not enough data"]
        most = f"largest input share {max(shares):.2f}; " if shares else ""
        return f"  {self.data} / {self.condition.name}: {most}drifted columns (seeds) {top}"


def run(datasets: list[str], seeds: list[int], rows: int) -> list[Cell]:
    """Every data set, condition and seed; returns the cells in table order."""
    from pipelines.drift import compare
    from training.catalog import BUILTIN_DATASETS

    cells: dict[tuple[str, str], Cell] = {}
    with tempfile.TemporaryDirectory(prefix="neuroserve-bench-drift-") as tmp:
        for data in datasets:
            started = time.perf_counter()
            for seed in seeds:
                model = build(data, seed, Path(tmp))
                for i, cond in enumerate(conditions(BUILTIN_DATASETS[data].input_kind)):
                    n = cond.rows if cond.rows < ROWS else rows
                    # One stream per (seed, condition): a shift sees other rows than its base.
                    rng = np.random.default_rng([seed, i])
                    current = model.capture(cond.inputs(model.result.data, rng, n))
                    cell = cells.setdefault((data, cond.name), Cell(data, cond, []))
                    cell.reports.append(compare(model.reference, current))
            print(f"{data}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return list(cells.values())


def main() -> int:
    """Run the bench, print the table; exit 1 when any verdict is not the expected one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--data", default=",".join(MODELS), help="data sets, comma-separated")
    parser.add_argument("--detail", action="store_true", help="list the drifted columns")
    args = parser.parse_args()
    datasets = [d for d in args.data.split(",") if d]
    unknown = [d for d in datasets if d not in MODELS]
    if unknown:
        parser.error(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    started = time.perf_counter()
    cells = run(datasets, seeds, args.rows)
    print(
        "| data set | condition | expected | verdicts / seeds | median input share drifted "
        "| predictions drifted | columns compared |"
    )
    print("|---|---|---|---|---|---|---|")
    for cell in cells:
        print(cell.row())
    wrong = [c for c in cells if c.wrong]
    print(
        f"\n{len(cells)} cells, {len(seeds)} seeds, {args.rows} rows each; "
        f"{len(wrong)} with a wrong verdict (✗); {time.perf_counter() - started:.0f} s"
    )
    if args.detail:
        for cell in cells:
            print(cell.detail())
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
