"""Compare variants of one spec side by side: one parent MLflow run, one nested child run per
variant, a comparison table and a plot of every variant's validation curves on the parent.

``--vary`` is checked completely (parameter names and every value, through
``TrainSpec.validate``) before any run is created, so a typo costs nothing.
The winner is chosen on the *validation* primary metric (best epoch); the test metric is shown
but never used to choose, which would leak the test split into model selection.
Variants are not registered: comparing is an experiment, promoting the winner is a
``neuroserve train`` with the winning flags.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import training
from pipelines import figures, flows, specs, tracking
from pipelines.errors import VaryError

#: Parameters ``--vary`` accepts, with the type of their values.
VARYABLE: dict[str, type] = {
    "activation": str,
    "optimizer": str,
    "lr": float,
    "batch_size": int,
    "epochs": int,
    "seed": int,
}


@dataclass(frozen=True)
class Vary:
    """One ``--vary name=v1,v2`` option, parsed."""

    name: str
    values: tuple[Any, ...]


def parse_vary(text: str) -> Vary:
    """Parse ``name=v1,v2,...``; unknown names and unparsable values raise VaryError."""
    if "=" not in text:
        raise VaryError(
            f"--vary {text!r}: expected NAME=V1,V2 (e.g. activation=relu,sigmoid); "
            f"NAME is one of {', '.join(VARYABLE)}"
        )
    name, _, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if name not in VARYABLE:
        raise VaryError(
            f"--vary: unknown parameter {name!r}; expected one of {', '.join(VARYABLE)}"
        )
    kind = VARYABLE[name]
    items = [v.strip() for v in raw.split(",") if v.strip()]
    if not items:
        raise VaryError(f"--vary {name}: no values given; expected {name}=V1,V2")
    values: list[Any] = []
    for item in items:
        try:
            values.append(kind(item))
        except ValueError:
            raise VaryError(f"--vary {name}: value {item!r} is not a {kind.__name__}") from None
    if len(set(values)) != len(values):
        raise VaryError(f"--vary {name}: values repeat ({raw})")
    return Vary(name, tuple(values))


def variants(base: training.TrainSpec, varies: list[Vary]) -> list[tuple[str, training.TrainSpec]]:
    """Every combination as (label, validated spec); a value the spec rejects raises VaryError."""
    if not varies:
        raise VaryError("compare needs at least one --vary NAME=V1,V2")
    names = [v.name for v in varies]
    if len(set(names)) != len(names):
        raise VaryError(f"--vary: parameter given twice ({', '.join(names)})")
    base_dict = base.to_dict()
    out = []
    for combo in itertools.product(*(v.values for v in varies)):
        overrides = dict(zip(names, combo, strict=True))
        try:
            spec = specs.spec_from_dict({**base_dict, **overrides})
        except training.SpecError as exc:
            bad = ", ".join(f"{k}={v}" for k, v in overrides.items())
            raise VaryError(f"--vary: variant {bad} is not a valid spec: {exc}") from None
        label = ",".join(f"{k}={v}" for k, v in overrides.items())
        out.append((label, spec))
    return out


@dataclass
class VariantRow:
    """One line of the comparison table."""

    variant: str
    run_id: str
    val_metric: float
    test_metric: float
    baseline_metric: float
    best_epoch: int
    train_seconds: float


@dataclass
class CompareOutcome:
    """The comparison: rows, the winner, and where it is recorded."""

    model_name: str
    metric_name: str
    higher_is_better: bool
    parent_run_id: str
    experiment_id: str
    winner: str
    rows: list[VariantRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for printing."""
        return asdict(self)


def _best_val(history: list[dict[str, Any]], metric: str, higher: bool) -> float:
    values = [float(h[f"val_{metric}"]) for h in history if f"val_{metric}" in h]
    if not values:
        return math.nan
    return max(values) if higher else min(values)


def curves_figure(
    histories: dict[str, list[dict[str, Any]]], metric: str, title: str
) -> figures.Figure:
    """Validation loss and validation primary metric per epoch, one line per variant."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for label, history in histories.items():
        epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
        ax_loss.plot(epochs, [float(h.get("val_loss", np.nan)) for h in history], label=label)
        ax_m.plot(epochs, [float(h.get(f"val_{metric}", np.nan)) for h in history], label=label)
    ax_loss.set_title("validation loss")
    ax_m.set_title(f"validation {metric}")
    for ax in (ax_loss, ax_m):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def table_markdown(o: CompareOutcome) -> str:
    """The comparison as a markdown table (Prefect artifact and MLflow artifact)."""
    m = o.metric_name
    lines = [
        f"# {o.model_name}: compare ({m}, {'higher' if o.higher_is_better else 'lower'} is better)",
        "",
        f"**Winner (best validation {m}): {o.winner}**",
        "",
        f"| variant | val {m} | test {m} | baseline {m} | best epoch | seconds | run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in o.rows:
        mark = " (winner)" if r.variant == o.winner else ""
        lines.append(
            f"| {r.variant}{mark} | {r.val_metric:.4f} | {r.test_metric:.4f} | "
            f"{r.baseline_metric:.4f} | {r.best_epoch} | {r.train_seconds:.1f} | `{r.run_id}` |"
        )
    lines += ["", f"Parent MLflow run: `{o.parent_run_id}` (experiment `{o.experiment_id}`)"]
    return "\n".join(lines) + "\n"


@flow(name="compare", log_prints=True)
def compare_flow(
    spec_dict: dict[str, Any],
    vary: list[str],
    model_name: str | None = None,
    progress: bool = False,
) -> CompareOutcome:
    """Train each variant under one parent run and name the winner."""
    logger = get_run_logger()
    base = specs.spec_from_dict(spec_dict)
    todo = variants(base, [parse_vary(v) for v in vary])
    name = model_name or specs.default_model_name(str(base.kind), str(base.data))
    uri = flows.open_tracking()
    flows.describe_data(base.to_dict())
    varied = ",".join(parse_vary(v).name for v in vary)
    experiment_id, parent = flows.start_run(
        uri,
        name,
        base.to_dict(),
        run_name=f"{name}-compare-{varied}",
        extra_tags={"neuroserve.compare": varied},
    )
    try:
        rows: list[VariantRow] = []
        histories: dict[str, list[dict[str, Any]]] = {}
        metric, higher = "", True
        for label, spec in todo:
            _, child = flows.start_run(
                uri,
                name,
                spec.to_dict(),
                run_name=label,
                parent_run_id=parent,
                extra_tags={"neuroserve.variant": label},
            )
            try:
                result, _ = flows.train_and_log(
                    uri, child, spec.to_dict(), f"{name} {label}", progress
                )
            except BaseException as exc:
                flows.end_run(uri, child, "FAILED", f"{type(exc).__name__}: {exc}")
                raise
            flows.end_run(uri, child, "FINISHED")
            metric, higher = str(result.primary_metric), bool(result.higher_is_better)
            histories[label] = list(result.history)
            rows.append(
                VariantRow(
                    variant=label,
                    run_id=child,
                    val_metric=_best_val(list(result.history), metric, higher),
                    test_metric=float(result.test_metrics[metric]),
                    baseline_metric=float(result.baseline_metrics[metric]),
                    best_epoch=int(result.best_epoch),
                    train_seconds=float(result.train_seconds),
                )
            )
        ranked = sorted(
            rows,
            key=lambda r: (math.isnan(r.val_metric), -r.val_metric if higher else r.val_metric),
        )
        outcome = CompareOutcome(
            model_name=name,
            metric_name=metric,
            higher_is_better=higher,
            parent_run_id=parent,
            experiment_id=experiment_id,
            winner=ranked[0].variant,
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
    uri: str, outcome: CompareOutcome, histories: dict[str, list[dict[str, Any]]]
) -> None:
    """Table (markdown, CSV and MLflow table), curves plot and the winner on the parent run."""
    import pandas as pd

    client = tracking.client_for(uri)
    run_id = outcome.parent_run_id
    frame = pd.DataFrame([asdict(r) for r in outcome.rows])
    client.log_table(run_id, data=frame, artifact_file="comparison.json")
    client.log_text(run_id, frame.to_csv(index=False), "comparison.csv")
    client.log_text(run_id, table_markdown(outcome), "comparison.md")
    fig = curves_figure(histories, outcome.metric_name, f"{outcome.model_name}: variants")
    client.log_figure(run_id, fig, "figures/validation_curves.png")
    figures.close(fig)
    client.set_tag(run_id, "neuroserve.winner", outcome.winner)
    winner = next(r for r in outcome.rows if r.variant == outcome.winner)
    tracking.log_metrics(
        client,
        run_id,
        {
            f"winner_val_{outcome.metric_name}": winner.val_metric,
            f"winner_test_{outcome.metric_name}": winner.test_metric,
        },
    )
