"""Compare variants of one spec side by side: one parent MLflow run, one nested child run per
variant and seed, a comparison table and a plot of every run's validation curves on the parent.

Every spec field but ``kind``, ``data`` and ``target`` can be varied (``VARYABLE`` is derived from
``TrainSpec``, so a new field is variable the day it is added). Commas separate variants, so the
layer sizes of one variant are joined by ``x``: ``--vary hidden=32,64x64`` is ``(32,)`` against
``(64, 64)``; ``default`` stands for the field's default (``--vary dropout=default,0.3``).

``--vary`` and ``--seeds`` are checked completely (parameter names and every value, through
``TrainSpec.from_dict``) before any run is created, so a typo costs nothing.

``--seeds N`` trains every variant with seeds S, S+1, ..., S+N-1 (S the spec's seed; the seed
sets the data split and the initial weights, so every variant sees the same N splits). The table
reports the mean and the sample standard deviation over the seeds, and the winner is the variant
with the best *mean validation* metric. The test metric is shown but never used to choose, which
would leak the test split into model selection. When the winner's lead is within one standard
deviation, the outcome says so rather than crowning a lucky seed.

Variants are not registered: comparing is an experiment, promoting the winner is a
``neuroserve train`` with the winning flags.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import training
from pipelines import figures, flows, specs, tracking
from pipelines.errors import VaryError

#: Spec fields that are the experiment's frame rather than a choice to compare.
FIXED: tuple[str, ...] = ("kind", "data", "target")
#: Parameters ``--vary`` accepts: every other spec field.
VARYABLE: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(training.TrainSpec) if f.name not in FIXED
)
#: The ``--vary`` value that leaves a field to its default (shown so in labels, too).
DEFAULT = "default"
#: How the spread over seeds is measured (shown in tables and artifacts).
SPREAD = "sample standard deviation"


@dataclass(frozen=True)
class Vary:
    """One ``--vary name=v1,v2`` option, parsed; values stay text until ``variants`` types them."""

    name: str
    values: tuple[str, ...]


def parse_vary(text: str) -> Vary:
    """Parse ``name=v1,v2,...``; an unknown name or no values raise VaryError."""
    if "=" not in text:
        raise VaryError(
            f"--vary {text!r}: expected NAME=V1,V2 (e.g. activation=relu,sigmoid); "
            f"NAME is one of {', '.join(VARYABLE)}"
        )
    name, _, raw = text.partition("=")
    name = name.strip().removeprefix("--").replace("-", "_")
    if name not in VARYABLE:
        raise VaryError(
            f"--vary: unknown parameter {name!r}; expected one of {', '.join(VARYABLE)}"
        )
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    if not values:
        raise VaryError(f"--vary {name}: no values given; expected {name}=V1,V2")
    return Vary(name, values)


def show(value: Any) -> str:
    """A value as a variant label shows it: sizes as ``64x64``, None as ``default``."""
    if value is None:
        return DEFAULT
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "x".join(str(v) for v in value)
    return str(value)


def seed_list(base_seed: int, seeds: int) -> list[int]:
    """The seeds each variant is trained with: ``base_seed`` and the ``seeds - 1`` after it."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise VaryError(
            f"--seeds must be a positive integer (runs per variant, with seeds "
            f"{base_seed}, {base_seed + 1}, ...); got {seeds!r}"
        )
    return [base_seed + i for i in range(seeds)]


def variants(
    base: training.TrainSpec, varies: list[Vary], seeds: int = 1
) -> list[tuple[str, training.TrainSpec]]:
    """Every combination as (label, validated spec); a value the spec rejects raises VaryError.

    With ``seeds`` > 1 the seed is ``--seeds``' to set, so varying it as well is an error.
    """
    if not varies:
        raise VaryError("compare needs at least one --vary NAME=V1,V2")
    names = [v.name for v in varies]
    if len(set(names)) != len(names):
        raise VaryError(f"--vary: parameter given twice ({', '.join(names)})")
    runs = seed_list(base.seed, seeds)
    if seeds > 1 and "seed" in names:
        raise VaryError(
            f"--vary seed cannot be combined with --seeds {seeds}, which already trains each "
            f"variant with seeds {', '.join(map(str, runs))}; drop one of them"
        )
    base_dict = base.to_dict()
    typed: list[list[Any]] = []
    for vary in varies:
        values: list[Any] = []
        for raw in vary.values:
            if raw.lower() == DEFAULT:
                values.append(None)
                continue
            try:
                spec = specs.spec_from_dict({**base_dict, vary.name: raw})
            except training.SpecError as exc:
                raise VaryError(f"--vary {vary.name}: value {raw!r}: {exc}") from None
            values.append(getattr(spec, vary.name))
        if len(set(values)) != len(values):
            raise VaryError(f"--vary {vary.name}: values repeat ({', '.join(vary.values)})")
        typed.append(values)
    out = []
    for combo in itertools.product(*typed):
        overrides = dict(zip(names, combo, strict=True))
        label = ",".join(f"{k}={show(v)}" for k, v in overrides.items())
        try:
            spec = specs.spec_from_dict({**base_dict, **overrides})
        except training.SpecError as exc:
            raise VaryError(f"--vary: variant {label} is not a valid spec: {exc}") from None
        out.append((label, spec))
    return out


@dataclass
class SeedRun:
    """One training run of one variant: its seed, nested MLflow run and scores."""

    seed: int
    run_id: str
    val_metric: float
    test_metric: float
    baseline_metric: float
    best_epoch: int
    train_seconds: float


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if len(finite) == len(values) and finite else math.nan


def _spread(values: list[float]) -> float:
    """Sample standard deviation; NaN for a single run, which has no spread to report."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return math.nan
    return statistics.stdev(values)


@dataclass
class VariantRow:
    """One line of the comparison table: a variant's runs and their mean and spread."""

    variant: str
    runs: list[SeedRun]
    val_metric: float  # mean over the seeds: what the winner is chosen on
    val_spread: float  # sample standard deviation over the seeds (NaN for one seed)
    test_metric: float
    test_spread: float
    baseline_metric: float  # mean of each seed's baseline (chosen on that seed's validation)
    best_epoch: float
    train_seconds: float  # mean per run

    @classmethod
    def of(cls, variant: str, runs: list[SeedRun]) -> VariantRow:
        """Summarise the runs of one variant."""
        val = [r.val_metric for r in runs]
        test = [r.test_metric for r in runs]
        return cls(
            variant=variant,
            runs=runs,
            val_metric=_mean(val),
            val_spread=_spread(val),
            test_metric=_mean(test),
            test_spread=_spread(test),
            baseline_metric=_mean([r.baseline_metric for r in runs]),
            best_epoch=statistics.fmean(r.best_epoch for r in runs),
            train_seconds=statistics.fmean(r.train_seconds for r in runs),
        )

    def summary(self) -> dict[str, Any]:
        """The row without its runs (one CSV line)."""
        out = {k: v for k, v in asdict(self).items() if k != "runs"}
        out["seeds"] = " ".join(str(r.seed) for r in self.runs)
        out["run_ids"] = " ".join(r.run_id for r in self.runs)
        return out


def pm(mean: float, spread: float) -> str:
    """``0.9650 ± 0.0100``, or just the mean when there is no spread (one seed)."""
    return f"{mean:.4f}" if math.isnan(spread) else f"{mean:.4f} ± {spread:.4f}"


@dataclass
class CompareOutcome:
    """The comparison: rows, the winner, how clear its lead is, and where it is recorded."""

    model_name: str
    metric_name: str
    higher_is_better: bool
    parent_run_id: str
    experiment_id: str
    winner: str
    seeds: list[int] = field(default_factory=list)
    note: str = ""  # the winner's lead against the spread over seeds
    rows: list[VariantRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for printing."""
        return asdict(self)


def rank(rows: list[VariantRow], higher: bool) -> list[VariantRow]:
    """Best mean validation metric first (NaN last); ties keep the order given."""
    return sorted(
        rows,
        key=lambda r: (math.isnan(r.val_metric), -r.val_metric if higher else r.val_metric),
    )


def lead_note(ranked: list[VariantRow], metric: str) -> str:
    """How clear the winner is: tied with the runner-up, or its lead against the spread over
    seeds (larger or smaller than one standard deviation of either); empty when not measurable.
    """
    if len(ranked) < 2:
        return ""
    best, second = ranked[0], ranked[1]
    lead = abs(best.val_metric - second.val_metric)
    if math.isnan(lead):
        return ""
    mean = "" if math.isnan(best.val_spread) else "mean "
    if lead <= 1e-12:
        return (
            f"tied with {second.variant} on {mean}validation {metric} ({best.val_metric:.4f}); "
            "named because it was given first"
        )
    spread = max(best.val_spread, second.val_spread)
    if math.isnan(spread):
        return ""
    verdict = "exceeds" if lead > spread else "is within"
    tail = "" if lead > spread else ": not a clear winner"
    return (
        f"lead over {second.variant} in mean validation {metric} ({lead:.4f}) {verdict} one "
        f"{SPREAD} ({spread:.4f}){tail}"
    )


def _best_val(history: list[dict[str, Any]], metric: str, higher: bool) -> float:
    values = [float(h[f"val_{metric}"]) for h in history if f"val_{metric}" in h]
    if not values:
        return math.nan
    return max(values) if higher else min(values)


def _val_metric(result: training.TrainResult, metric: str, higher: bool) -> float:
    """The validation metric of the checkpoint that was tested (best epoch's logs)."""
    value = result.val_metrics.get(f"val_{metric}")
    if value is not None:
        return float(value)
    return _best_val(list(result.history), metric, higher)


def curves_figure(
    histories: dict[str, list[list[dict[str, Any]]]], metric: str, title: str
) -> figures.Figure:
    """Validation loss and validation primary metric per epoch: one colour per variant, one
    line per seed."""
    import matplotlib

    fig = figures.Figure(figsize=(11, 4))
    ax_loss, ax_m = fig.subplots(1, 2)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", [None])
    for i, (label, runs) in enumerate(histories.items()):
        colour = colours[i % len(colours)]
        alpha = 1.0 if len(runs) == 1 else 0.6
        for j, history in enumerate(runs):
            epochs = [int(h.get("epoch", k + 1)) for k, h in enumerate(history)]
            name = label if j == 0 else None
            ax_loss.plot(
                epochs,
                [float(h.get("val_loss", np.nan)) for h in history],
                color=colour,
                alpha=alpha,
                label=name,
            )
            ax_m.plot(
                epochs,
                [float(h.get(f"val_{metric}", np.nan)) for h in history],
                color=colour,
                alpha=alpha,
                label=name,
            )
    ax_loss.set_title("validation loss")
    ax_m.set_title(f"validation {metric}")
    for ax in (ax_loss, ax_m):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    runs_per = max((len(r) for r in histories.values()), default=1)
    fig.suptitle(title if runs_per == 1 else f"{title} (one line per seed)")
    fig.tight_layout()
    return fig


def table_markdown(o: CompareOutcome) -> str:
    """The comparison as a markdown table (Prefect artifact and MLflow artifact)."""
    m = o.metric_name
    several = len(o.seeds) > 1
    over = f"mean ± {SPREAD} over seeds {', '.join(map(str, o.seeds))}" if several else ""
    lines = [
        f"# {o.model_name}: compare ({m}, {'higher' if o.higher_is_better else 'lower'} is better)",
        "",
        f"**Winner (best {'mean ' if several else ''}validation {m}): {o.winner}**"
        + (f" — {o.note}" if o.note else ""),
        "",
    ]
    if several:
        lines += [f"Values are the {over}; the test metric is never used to choose.", ""]
    lines += [
        f"| variant | val {m} | test {m} | baseline {m} | best epoch | seconds | runs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in o.rows:
        mark = " (winner)" if r.variant == o.winner else ""
        lines.append(
            f"| {r.variant}{mark} | {pm(r.val_metric, r.val_spread)} | "
            f"{pm(r.test_metric, r.test_spread)} | {r.baseline_metric:.4f} | "
            f"{r.best_epoch:.3g} | {r.train_seconds:.1f} | "
            + " ".join(f"`{s.run_id}`" for s in r.runs)
            + " |"
        )
    if several:
        lines += [
            "",
            "## Every run",
            "",
            f"| variant | seed | val {m} | test {m} | baseline {m} | best epoch | seconds | run |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in o.rows:
            for s in r.runs:
                lines.append(
                    f"| {r.variant} | {s.seed} | {s.val_metric:.4f} | {s.test_metric:.4f} | "
                    f"{s.baseline_metric:.4f} | {s.best_epoch} | {s.train_seconds:.1f} | "
                    f"`{s.run_id}` |"
                )
    lines += ["", f"Parent MLflow run: `{o.parent_run_id}` (experiment `{o.experiment_id}`)"]
    return "\n".join(lines) + "\n"


@flow(name="compare", log_prints=True)
def compare_flow(
    spec_dict: dict[str, Any],
    vary: list[str],
    model_name: str | None = None,
    progress: bool = False,
    seeds: int = 1,
) -> CompareOutcome:
    """Train each variant (with each seed) under one parent run and name the winner."""
    logger = get_run_logger()
    base = specs.spec_from_dict(spec_dict)
    parsed = [parse_vary(v) for v in vary]
    todo = variants(base, parsed, seeds)
    seed_runs = seed_list(base.seed, seeds)
    name = model_name or specs.default_model_name(str(base.kind), str(base.data))
    uri = flows.open_tracking()
    flows.describe_data(base.to_dict())
    varied = ",".join(v.name for v in parsed)
    experiment_id, parent = flows.start_run(
        uri,
        name,
        base.to_dict(),
        run_name=f"{name}-compare-{varied}" + (f"-{seeds}-seeds" if seeds > 1 else ""),
        extra_tags={
            "neuroserve.compare": varied,
            "neuroserve.seeds": ",".join(map(str, seed_runs)),
        },
    )
    try:
        rows: list[VariantRow] = []
        histories: dict[str, list[list[dict[str, Any]]]] = {}
        metric, higher = "", True
        for label, spec in todo:
            runs: list[SeedRun] = []
            histories[label] = []
            for seed in seed_list(spec.seed, seeds):
                seeded = dataclasses.replace(spec, seed=seed)
                run_name = label if seeds == 1 else f"{label} seed={seed}"
                _, child = flows.start_run(
                    uri,
                    name,
                    seeded.to_dict(),
                    run_name=run_name,
                    parent_run_id=parent,
                    extra_tags={"neuroserve.variant": label, "neuroserve.seed": str(seed)},
                )
                try:
                    result, _ = flows.train_and_log(
                        uri, child, seeded.to_dict(), f"{name} {run_name}", progress
                    )
                except BaseException as exc:
                    flows.end_run(uri, child, "FAILED", f"{type(exc).__name__}: {exc}")
                    raise
                flows.end_run(uri, child, "FINISHED")
                metric, higher = str(result.primary_metric), bool(result.higher_is_better)
                histories[label].append(list(result.history))
                runs.append(
                    SeedRun(
                        seed=seed,
                        run_id=child,
                        val_metric=_val_metric(result, metric, higher),
                        test_metric=float(result.test_metrics[metric]),
                        baseline_metric=float(result.baseline_metrics[metric]),
                        best_epoch=int(result.best_epoch),
                        train_seconds=float(result.train_seconds),
                    )
                )
            rows.append(VariantRow.of(label, runs))
        ranked = rank(rows, higher)
        outcome = CompareOutcome(
            model_name=name,
            metric_name=metric,
            higher_is_better=higher,
            parent_run_id=parent,
            experiment_id=experiment_id,
            winner=ranked[0].variant,
            seeds=seed_runs,
            note=lead_note(ranked, metric),
            rows=rows,
        )
        _log_parent(uri, outcome, histories)
        create_markdown_artifact(
            key=f"compare-{flows._artifact_key(name).removeprefix('train-')}",
            markdown=table_markdown(outcome),
            description=f"{name}: winner {outcome.winner}",
        )
    except BaseException as exc:
        flows.end_run(uri, parent, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    flows.end_run(uri, parent, "FINISHED")
    logger.info("compare %s: winner %s", name, outcome.winner)
    return outcome


@task(
    name="log-comparison",
    retries=flows.IO_RETRIES,
    retry_delay_seconds=flows.IO_RETRY_DELAY,
    cache_policy=NO_CACHE,
)
def _log_parent(
    uri: str, outcome: CompareOutcome, histories: dict[str, list[list[dict[str, Any]]]]
) -> None:
    """Tables (per variant and per run: markdown, CSV and MLflow table), curves plot and the
    winner on the parent run."""
    import pandas as pd

    client = tracking.client_for(uri)
    run_id = outcome.parent_run_id
    frame = pd.DataFrame([r.summary() for r in outcome.rows])
    runs = pd.DataFrame([{"variant": r.variant, **asdict(s)} for r in outcome.rows for s in r.runs])
    client.log_table(run_id, data=frame, artifact_file="comparison.json")
    client.log_text(run_id, frame.to_csv(index=False), "comparison.csv")
    client.log_text(run_id, runs.to_csv(index=False), "runs.csv")
    client.log_text(run_id, table_markdown(outcome), "comparison.md")
    fig = curves_figure(histories, outcome.metric_name, f"{outcome.model_name}: variants")
    client.log_figure(run_id, fig, "figures/validation_curves.png")
    client.set_tag(run_id, "neuroserve.winner", outcome.winner)
    if outcome.note:
        client.set_tag(run_id, "neuroserve.winner_note", outcome.note)
    winner = next(r for r in outcome.rows if r.variant == outcome.winner)
    m = outcome.metric_name
    metrics = {f"winner_val_{m}": winner.val_metric, f"winner_test_{m}": winner.test_metric}
    if not math.isnan(winner.val_spread):
        metrics[f"winner_val_{m}_std"] = winner.val_spread
        metrics[f"winner_test_{m}_std"] = winner.test_spread
    tracking.log_metrics(client, run_id, metrics)
