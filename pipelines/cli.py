"""`neuroserve`: one console command, a subcommand per job (docs/design.md, "Commands").

Importing this module is cheap on purpose: typer, rich and the spec's own choices
(``training.spec`` and ``training.catalog``, which import nothing heavy), so help texts and
defaults come from the spec rather than being restated here. Prefect, MLflow, torch and
serving are imported inside the commands, so ``neuroserve --help`` is instant and a serving
image without torch can still run ``neuroserve serve``.

User mistakes (``PipelineError``, ``training.TrainingError``, an unreachable store or API) print
one red line and exit with code 2; anything else is a bug and keeps its traceback.

Adding a command: write a function with typer-annotated parameters in its own module and
register it with :func:`register_command` (or ``app.command(name)(fn)``) at the bottom of this
file. Call :func:`bootstrap` first in any command that imports Prefect.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from pipelines.settings import DEFAULT_BATCH_SIZE, DEFAULT_DRIFT_SHARE
from training.catalog import BUILTIN_DATASETS, KIND_INPUTS
from training.spec import ACTIVATIONS, DEVICES, OPTIMIZERS, POOLS, SCHEDULES, TrainSpec

app = typer.Typer(
    name="neuroserve",
    help="Train, compare, register, schedule and score neural nets; serve them over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

KINDS_HELP = "Model family and the data it learns from: " + ", ".join(
    f"{kind} ({'/'.join(inputs)})" for kind, inputs in KIND_INPUTS.items()
)
DATA_HELP = (
    f"Built-in data set ({', '.join(BUILTIN_DATASETS)}) or a path to a CSV, .npz, image folder "
    "or text file."
)
PER_DATA = "per kind/data"
#: Data set used when --data is not given: a small built-in one that fits the kind.
DEFAULT_DATA = {"fnn": "breast-cancer", "cnn": "digits", "lstm": "sunspots", "gru": "sunspots"}
DATA_DEFAULT_HELP = "per kind: fnn breast-cancer, cnn digits, lstm/gru sunspots"
#: The spec's own defaults, shown in --help (TrainSpec decides them, not this file).
SPEC_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainSpec)}
SIZES = "N,N..."
ARCHITECTURE = "Architecture"
TRAINING = "Training"


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices)


# Options that `train` and `compare` share, declared once. Each is named after its spec field
# (typer turns batch_size into --batch-size, as pipelines.specs.flag does for error messages);
# None means the default that training/ decides for the kind and data.
DataOption = Annotated[
    str | None, typer.Option("--data", "-d", help=DATA_HELP, show_default=DATA_DEFAULT_HELP)
]
TargetOption = Annotated[
    str | None, typer.Option(help="Target column of a CSV.", show_default="last column")
]
LimitOption = Annotated[
    int | None, typer.Option(help="Use at most this many samples.", show_default="all")
]
WindowOption = Annotated[
    int | None,
    typer.Option(help="Look-back length in steps (series, text).", show_default=PER_DATA),
]
SeedOption = Annotated[int, typer.Option(help="Random seed (data split and weights).")]
EpochsOption = Annotated[
    int | None,
    typer.Option(
        help="Training epochs (at most).", show_default=PER_DATA, rich_help_panel=TRAINING
    ),
]
LrOption = Annotated[
    float | None,
    typer.Option(help="Learning rate.", show_default=PER_DATA, rich_help_panel=TRAINING),
]
BatchSizeOption = Annotated[
    int | None,
    typer.Option(help="Mini-batch size.", show_default=PER_DATA, rich_help_panel=TRAINING),
]
OptimizerOption = Annotated[
    str, typer.Option(help=f"Optimizer: {_one_of(OPTIMIZERS)}.", rich_help_panel=TRAINING)
]
WeightDecayOption = Annotated[
    float | None,
    typer.Option(
        help="Weight decay, >= 0 (decoupled with adamw).",
        show_default=PER_DATA,
        rich_help_panel=TRAINING,
    ),
]
ScheduleOption = Annotated[
    str | None,
    typer.Option(
        help=f"Learning-rate schedule: {_one_of(SCHEDULES)}.",
        show_default=PER_DATA,
        rich_help_panel=TRAINING,
    ),
]
PatienceOption = Annotated[
    int,
    typer.Option(
        help="Early stopping: epochs without a better validation score.", rich_help_panel=TRAINING
    ),
]
ActivationOption = Annotated[
    str,
    typer.Option(help=f"fnn: activation, {_one_of(ACTIVATIONS)}.", rich_help_panel=ARCHITECTURE),
]
HiddenOption = Annotated[
    str | None,
    typer.Option(
        help="Hidden sizes, comma-separated: fnn layer widths; lstm/gru units per stacked layer "
        "(e.g. 64,64).",
        metavar=SIZES,
        show_default=PER_DATA,
        rich_help_panel=ARCHITECTURE,
    ),
]
DropoutOption = Annotated[
    float | None,
    typer.Option(
        help="Dropout rate in [0, 1).", show_default=PER_DATA, rich_help_panel=ARCHITECTURE
    ),
]
ConvOption = Annotated[
    str | None,
    typer.Option(
        help="cnn: channels per conv block, comma-separated (e.g. 32,64).",
        metavar=SIZES,
        show_default=PER_DATA,
        rich_help_panel=ARCHITECTURE,
    ),
]
KernelOption = Annotated[
    int | None,
    typer.Option(help="cnn: kernel size.", show_default=PER_DATA, rich_help_panel=ARCHITECTURE),
]
PoolOption = Annotated[
    str | None,
    typer.Option(
        help=f"cnn: pooling after each conv block: {_one_of(POOLS)}.",
        show_default=PER_DATA,
        rich_help_panel=ARCHITECTURE,
    ),
]
DenseOption = Annotated[
    str | None,
    typer.Option(
        help="cnn: dense layer widths before the output, comma-separated (e.g. 128).",
        metavar=SIZES,
        show_default=PER_DATA,
        rich_help_panel=ARCHITECTURE,
    ),
]
BatchNormOption = Annotated[
    bool | None,
    typer.Option(
        "--batch-norm/--no-batch-norm",
        help="cnn: batch normalisation in each conv block.",
        show_default=PER_DATA,
        rich_help_panel=ARCHITECTURE,
    ),
]
AugmentOption = Annotated[
    bool | None,
    typer.Option(
        "--augment/--no-augment",
        help="cnn: random affine augmentation of the training images.",
        show_default=PER_DATA,
        rich_help_panel=ARCHITECTURE,
    ),
]
EmbedOption = Annotated[
    int | None,
    typer.Option(
        help="lstm/gru on text: embedding size.",
        show_default=PER_DATA,
        rich_help_panel=ARCHITECTURE,
    ),
]
TiedOption = Annotated[
    bool | None,
    typer.Option(
        "--tied/--no-tied",
        help="lstm/gru on text: the output layer shares the embedding's weights.",
        show_default=PER_DATA,
        rich_help_panel=ARCHITECTURE,
    ),
]
PointerOption = Annotated[
    bool | None,
    typer.Option(
        "--pointer/--no-pointer",
        help="lstm/gru on text: a pointer cache that can copy a word seen in the window.",
        show_default=PER_DATA,
        rich_help_panel=ARCHITECTURE,
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(
        help=f"Where to train: {_one_of(DEVICES)} (auto = CUDA when torch sees a GPU; cuda "
        "without one is an error before anything is recorded).",
        rich_help_panel=TRAINING,
    ),
]
AmpOption = Annotated[
    bool,
    typer.Option(
        "--amp/--no-amp",
        help="Mixed precision: bf16 autocast on CUDA (off on the CPU, and the run says so).",
        rich_help_panel=TRAINING,
    ),
]


def _spec_from(kind: str, options: dict[str, Any]) -> Any:
    """The validated TrainSpec of a command's options (its spec fields; the rest is ignored).

    A bad value is a ``training.SpecError`` naming the flag, shown as one red line.
    """
    from pipelines import specs

    chosen = {k: v for k, v in options.items() if k in SPEC_DEFAULTS and k not in ("kind", "data")}
    data = options.get("data")
    if data is None:  # not given; an empty --data "" is the user's and is rejected as such
        data = DEFAULT_DATA.get(kind, "digits")
    return specs.build_spec(kind, data, **chosen)


def fail(message: str, code: int = 2) -> None:
    """Print one red line (never wrapped) and exit with ``code``."""
    text = escape(" ".join(str(message).split()))  # a user's value is text, never markup
    err_console.print(
        f"[bold red]error:[/bold red] {text}", soft_wrap=True, markup=True, highlight=False
    )
    raise typer.Exit(code)


#: click's usage error (typer's base of BadParameter): typer >= 0.2x vendors its own click, so
#: the class is found through typer's public BadParameter rather than imported from click.
_UsageError: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class OneLineUsage(TyperCommand):
    """A command whose usage errors (a value of the wrong type, an unknown or missing option)
    are one red line naming the flag, like every other user error, instead of a usage panel."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _UsageError as exc:
            fail(exc.format_message())
            raise  # unreachable: fail exits


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's (or the environment's) doing, imported lazily."""
    from pipelines.errors import PipelineError

    types: list[type[BaseException]] = [PipelineError]
    try:
        from training import TrainingError

        types.append(TrainingError)
    except ImportError:  # serving-only install: no training errors can occur
        pass
    return tuple(types)


def user_errors(fn: F) -> F:
    """Turn user errors into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            if isinstance(exc, _user_error_types()):
                fail(str(exc))
            if _is_connection_error(exc):
                fail(f"cannot reach a service: {exc}")
            if isinstance(exc, RuntimeError) and "ephemeral Prefect API server" in str(exc):
                fail(
                    "Prefect's embedded server did not start in time (busy machine?); raise "
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL "
                    f"to a running server ({str(exc).splitlines()[0][:200]})"
                )
            raise

    return wrapper  # type: ignore[return-value]


def _is_connection_error(exc: BaseException) -> bool:
    """httpx / OS connection failures reaching Prefect's API."""
    try:
        import httpx

        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return True
    except ImportError:
        pass
    return isinstance(exc, ConnectionError)


def bootstrap(prefect: bool = True) -> None:
    """Environment first (PREFECT_HOME, analytics off), then quiet library loggers, then (for
    commands that run flows) the Prefect API: the user's ``PREFECT_API_URL`` must answer, else the
    shared local server is found or started in the background while the command imports the rest.
    """
    from pipelines import prefect_api, settings

    settings.prepare_environment()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("serving").setLevel(logging.WARNING)
    if prefect:
        prefect_api.select()


def run_flow(flow: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a flow that records in MLflow, in this process, on the chosen Prefect API.

    The tracking store is opened first: while a just-started local Prefect server boots, MLflow
    creates and migrates a new store (seconds of the first command in a fresh home) instead of
    that work waiting for the server, and an unreachable store is one red line before any flow
    run exists. A failure of the server's artifact store is one red line too.
    """
    from pipelines import settings, tracking

    tracking.connect()
    try:
        with settings.flow_settings():
            return flow(*args, **kwargs)
    except Exception as exc:
        clear = tracking.artifact_store_error(exc, settings.tracking_uri())
        if clear is None:
            raise
        raise clear from exc


def register_command(fn: Callable[..., Any], name: str | None = None, **kwargs: Any) -> None:
    """Add a subcommand (e.g. the lead's ``demo``) with user-error handling."""
    app.command(name, **kwargs)(user_errors(fn))


# --------------------------------------------------------------------------------------------
# train


def _print_train(outcome: Any) -> None:
    o = outcome
    better = "higher" if o.higher_is_better else "lower"
    table = Table(title=f"{o.model_name} v{o.version}: test metrics vs baseline")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("baseline", justify="right")
    for key in sorted(set(o.test_metrics) | set(o.baseline_metrics)):
        mark = " *" if key == o.metric_name else ""
        model_v = o.test_metrics.get(key)
        base_v = o.baseline_metrics.get(key)
        table.add_row(
            key + mark,
            "-" if model_v is None else f"{model_v:.4f}",
            "-" if base_v is None else f"{base_v:.4f}",
        )
    console.print(table)
    console.print(f"* primary metric ({better} is better); parity max diff {o.parity_max_diff:.2e}")
    if o.baselines:
        _print_baselines(o)
    colour = "green" if o.alias == "champion" else "yellow"
    console.print(
        f"[bold {colour}]{o.model_name} v{o.version} -> @{o.alias}[/bold {colour}]: {o.reason}",
        soft_wrap=True,
    )
    console.print(
        f"MLflow run {o.run_id} at {o.tracking_uri}; model {o.model_uri}",
        soft_wrap=True,
        highlight=False,
    )


def _print_baselines(o: Any) -> None:
    """Every classical candidate: the gate's baseline is the one best on validation."""
    m = o.metric_name
    table = Table(title=f"classical baselines ({m}; chosen on validation, never on test)")
    for col in ("method", f"val {m}", f"test {m}", "seconds", "settings"):
        table.add_column(col, justify="left" if col in ("method", "settings") else "right")
    for c in o.baselines:
        settings = ", ".join(f"{k}={v}" for k, v in c["params"].items())
        table.add_row(
            c["name"] + (" (baseline)" if c["chosen"] else ""),
            f"{c['val_metric']:.4f}",
            f"{c['test_metrics'][m]:.4f}",
            f"{c['seconds']:.2f}",
            settings,
        )
    console.print(table)


class TrainCommand(OneLineUsage):
    """``train`` keeps its arguments as given, so ``--nproc N`` can start the same command in N
    processes (sys.argv is not the command line when the app is invoked from Python)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[TRAIN_ARGV] = list(args)
        return super().parse_args(ctx, args)


TRAIN_ARGV = "neuroserve.train.argv"


@app.command(cls=TrainCommand)
@user_errors
def train(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help=KINDS_HELP, show_default=False)],
    *,
    data: DataOption = None,
    target: TargetOption = None,
    limit: LimitOption = None,
    window: WindowOption = None,
    seed: SeedOption = SPEC_DEFAULTS["seed"],
    epochs: EpochsOption = None,
    lr: LrOption = None,
    batch_size: BatchSizeOption = None,
    optimizer: OptimizerOption = SPEC_DEFAULTS["optimizer"],
    weight_decay: WeightDecayOption = None,
    schedule: ScheduleOption = None,
    patience: PatienceOption = SPEC_DEFAULTS["patience"],
    activation: ActivationOption = SPEC_DEFAULTS["activation"],
    hidden: HiddenOption = None,
    dropout: DropoutOption = None,
    conv: ConvOption = None,
    kernel: KernelOption = None,
    pool: PoolOption = None,
    dense: DenseOption = None,
    batch_norm: BatchNormOption = None,
    augment: AugmentOption = None,
    embed: EmbedOption = None,
    tied: TiedOption = None,
    pointer: PointerOption = None,
    device: DeviceOption = SPEC_DEFAULTS["device"],
    amp: AmpOption = SPEC_DEFAULTS["amp"],
    name: Annotated[
        str | None,
        typer.Option(help="Registered model name.", show_default="<data set>-<kind>"),
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote", help="Make it champion even if the gate says no.")
    ] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            help="Training processes on this machine (DistributedDataParallel through torchrun): "
            "one per GPU (NCCL), else one per CPU core (gloo); rank 0 records the run. Leave it "
            "out under your own torchrun.",
            show_default="1",
            rich_help_panel=TRAINING,
        ),
    ] = None,
) -> None:
    """Train one model, evaluate it against a baseline, export ONNX, record it in MLflow,
    register a version and gate it to @champion or @challenger."""
    spec = _spec_from(kind, dict(locals()))  # first: locals() is exactly the options here
    # torchrun sets WORLD_SIZE in every process it starts; training.distributed reads the rest.
    if (nproc is not None or "WORLD_SIZE" in os.environ) and _train_distributed(
        spec, nproc, ctx.meta.get(TRAIN_ARGV, []), name=name, promote=promote
    ):
        return
    bootstrap()
    from training.device import check

    # --device cuda without a GPU: one red line before a flow run or an MLflow run exists (torch
    # loads while the Prefect server bootstrap() may have started comes up).
    check(spec.device, spec.amp)
    from pipelines.flows import train_flow

    outcome = run_flow(train_flow, spec.to_dict(), model_name=name, promote=promote, progress=True)
    _print_train(outcome)


def _train_distributed(
    spec: Any, nproc: int | None, argv: list[str], *, name: str | None, promote: bool
) -> bool:
    """``--nproc N`` and torchrun: False when training stays in this one process.

    Outside torchrun this process is only the launcher: it starts ``neuroserve train`` with the
    same arguments in N processes and reports the one that failed first. Inside, rank 0 runs the
    train flow (MLflow, export, gate) and the other ranks only train their shard.
    """
    from training import distributed

    world = distributed.world_from_env(spec.device)  # its backend follows --device
    count = distributed.check_nproc(nproc, world, spec.device)
    if world is None and count == 1:
        return False
    resolved = spec.resolved()
    if world is None:
        distributed.check_batch_size(resolved.batch_size, count)  # before any process starts
        try:
            distributed.launch(count, [sys.executable, "-m", "pipelines", "train", *argv])
        except distributed.LaunchError as exc:
            if exc.printed:  # rank 0 showed its own red line
                raise typer.Exit(exc.exit_code) from None
            fail(str(exc), exc.exit_code)
        return True
    if world.rank != 0:
        raise typer.Exit(distributed.run_worker(world, spec))
    distributed.check_batch_size(resolved.batch_size, world.world_size)
    try:
        with distributed.as_rank_zero(world):
            bootstrap()
            from pipelines.flows import train_flow

            outcome = run_flow(
                train_flow, spec.to_dict(), model_name=name, promote=promote, progress=True
            )
    except (distributed.PeerError, distributed.LauncherStop):  # the launcher names the cause
        raise typer.Exit(distributed.PEER_EXIT) from None
    _print_train(outcome)
    return True


# --------------------------------------------------------------------------------------------
# compare


@app.command(cls=OneLineUsage)
@user_errors
def compare(
    kind: Annotated[str, typer.Argument(help=KINDS_HELP, show_default=False)],
    *,
    vary: Annotated[
        list[str],
        typer.Option(
            help="NAME=V1,V2,... with NAME any option below but --data and --target (e.g. "
            "activation=relu,sigmoid); layer sizes of one variant joined by x "
            "(hidden=32,64x64 is 32 vs 64,64); default = the field's default; repeat for a grid.",
            metavar="NAME=V1,V2",
            show_default=False,
        ),
    ],
    seeds: Annotated[
        int,
        typer.Option(
            help="Train each variant with this many seeds (--seed, --seed+1, ...); the table "
            "shows mean ± standard deviation and the winner has the best mean validation score.",
        ),
    ] = 1,
    data: DataOption = None,
    target: TargetOption = None,
    limit: LimitOption = None,
    window: WindowOption = None,
    seed: SeedOption = SPEC_DEFAULTS["seed"],
    epochs: EpochsOption = None,
    lr: LrOption = None,
    batch_size: BatchSizeOption = None,
    optimizer: OptimizerOption = SPEC_DEFAULTS["optimizer"],
    weight_decay: WeightDecayOption = None,
    schedule: ScheduleOption = None,
    patience: PatienceOption = SPEC_DEFAULTS["patience"],
    activation: ActivationOption = SPEC_DEFAULTS["activation"],
    hidden: HiddenOption = None,
    dropout: DropoutOption = None,
    conv: ConvOption = None,
    kernel: KernelOption = None,
    pool: PoolOption = None,
    dense: DenseOption = None,
    batch_norm: BatchNormOption = None,
    augment: AugmentOption = None,
    embed: EmbedOption = None,
    tied: TiedOption = None,
    pointer: PointerOption = None,
    device: DeviceOption = SPEC_DEFAULTS["device"],
    amp: AmpOption = SPEC_DEFAULTS["amp"],
    name: Annotated[
        str | None,
        typer.Option(help="Experiment (model) name.", show_default="<data set>-<kind>"),
    ] = None,
) -> None:
    """Train variants side by side under one parent MLflow run; name the winner on validation."""
    spec = _spec_from(kind, dict(locals()))  # first: locals() is exactly the options here
    bootstrap()  # before Prefect is imported (pipelines.compare imports it)
    from pipelines import compare as compare_mod

    # Checked before anything runs: unknown parameters or values are one red line, and so is a
    # variant on --device cuda without a GPU.
    todo = compare_mod.variants(spec, [compare_mod.parse_vary(v) for v in vary], seeds)
    from training.device import check

    for _, variant in todo:
        check(variant.device, variant.amp)

    outcome = run_flow(
        compare_mod.compare_flow,
        spec.to_dict(),
        list(vary),
        model_name=name,
        progress=True,
        seeds=seeds,
    )
    _print_compare(outcome)


def _print_compare(outcome: Any) -> None:
    """The comparison table (mean ± spread over seeds when there are several) and the winner."""
    from pipelines.compare import SPREAD, pm

    m = outcome.metric_name
    several = len(outcome.seeds) > 1
    over = f"mean ± {SPREAD} over seeds {', '.join(map(str, outcome.seeds))}" if several else None
    table = Table(
        title=f"{outcome.model_name}: variants ({m}, "
        f"{'higher' if outcome.higher_is_better else 'lower'} is better)",
        caption=over,
    )
    widest = max(len(r.variant) for r in outcome.rows)
    table.add_column("variant", no_wrap=True, min_width=min(widest, 40))
    # Short headers (the metric is in the title) so mean ± spread fits on an 80-column terminal;
    # cells wrap rather than being cut.
    for col in ("val", "test", "baseline", "epoch", "s/run"):
        table.add_column(col, justify="right", overflow="fold")
    for r in outcome.rows:
        style = "bold green" if r.variant == outcome.winner else None
        table.add_row(
            r.variant,
            pm(r.val_metric, r.val_spread),
            pm(r.test_metric, r.test_spread),
            f"{r.baseline_metric:.4f}",
            f"{r.best_epoch:.3g}",
            f"{r.train_seconds:.1f}",
            style=style,
        )
    console.print(table)
    console.print(
        f"[bold green]winner: {outcome.winner}[/bold green] (best "
        f"{'mean ' if several else ''}validation {m}; test never chooses)"
        + (f"; {outcome.note}" if outcome.note else "")
        + f"; parent MLflow run {outcome.parent_run_id}",
        soft_wrap=True,
    )


# --------------------------------------------------------------------------------------------
# retrain, schedule


@app.command()
@user_errors
def retrain(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Only these registered models.", show_default="all"),
    ] = None,
) -> None:
    """Retrain registered models from their champion's stored spec, through the same gate."""
    bootstrap()
    from pipelines.flows import retrain_flow

    reports = run_flow(retrain_flow, list(model) if model else None)
    table = Table(title="retrain")
    table.add_column("model")
    table.add_column("result")
    for r in reports:
        table.add_row(r.model_name, ("[green]" if r.ok else "[yellow]") + r.detail)
    console.print(table)


@app.command()
@user_errors
def schedule(
    cron: Annotated[str, typer.Option(help="Cron expression for retraining.")] = "0 3 * * *",
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Only these registered models.", show_default="all"),
    ] = None,
    start_server: Annotated[
        bool,
        typer.Option(
            help="Start a local Prefect server when PREFECT_API_URL is unset (schedules need one)."
        ),
    ] = True,
    monitor: Annotated[
        str | None,
        typer.Option(
            help="Also check every champion for drift on this cron (e.g. '*/30 * * * *'), "
            "retraining on drift; see `neuroserve monitor`.",
            show_default="no monitoring",
        ),
    ] = None,
) -> None:
    """Serve retraining (and, with --monitor, drift checks) on cron schedules (Prefect serve);
    blocks until Ctrl-C."""
    bootstrap(prefect=False)
    from pipelines import schedule as schedule_mod

    models = list(model) if model else None
    schedule_mod.deployments(cron, models, monitor)  # validate before starting
    schedule_mod.serve(
        cron,
        models,
        start_server=start_server,
        say=lambda text: console.print(text, soft_wrap=True, highlight=False),
        monitor=monitor,
    )


# --------------------------------------------------------------------------------------------
# monitor


@app.command(cls=OneLineUsage)
@user_errors
def monitor(
    model: Annotated[
        str,
        typer.Argument(
            help="NAME (its champion), NAME@ALIAS or NAME/VERSION: the served version to check.",
            show_default=False,
        ),
    ],
    *,
    since: Annotated[
        str, typer.Option(help="How far back to read captures: 30m, 24h, 7d ...")
    ] = "24h",
    drift_share: Annotated[
        float,
        typer.Option(
            help="Drift when at least this share of input columns drifted (or the predictions "
            "did), in (0, 1]."
        ),
    ] = DEFAULT_DRIFT_SHARE,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain/--no-retrain",
            help="On drift, retrain from the champion's spec; the quality gate decides.",
        ),
    ] = True,
    retrain_data: Annotated[
        str | None,
        typer.Option(
            help="Retrain on this data set or file instead of the spec's own.",
            show_default="the spec's",
        ),
    ] = None,
    capture_dir: Annotated[
        str | None,
        typer.Option(
            help="Where the server wrote captures (directory or s3://bucket/prefix).",
            show_default="$NEUROSERVE_CAPTURE_DIR or $NEUROSERVE_HOME/captures",
        ),
    ] = None,
) -> None:
    """Compare what a served version captured with its training-time reference; on drift,
    retrain (through the gate). Prints one line; the report is on an MLflow run."""
    from pipelines import drift

    drift.check_share(drift_share)  # before a flow starts: a bad share is one quick line
    bootstrap()
    from pipelines import monitor as monitor_mod

    window = monitor_mod.parse_since(since)
    outcome = run_flow(
        monitor_mod.monitor_flow,
        model,
        since_hours=window.total_seconds() / 3600,
        drift_share=drift_share,
        retrain=retrain,
        retrain_data=retrain_data,
        capture_dir=capture_dir,
    )
    colour = {"drift": "red", "no drift": "green"}.get(outcome.verdict, "yellow")
    console.print(
        f"[bold {colour}]{outcome.model_name} v{outcome.version}[/bold {colour}]: "
        f"{escape(outcome.line)} (last {since}; report on MLflow run {outcome.run_id})",
        soft_wrap=True,
        highlight=False,
    )
    if outcome.retrain is not None:
        console.print(f"retrained: {escape(outcome.retrain)}", soft_wrap=True, highlight=False)


# --------------------------------------------------------------------------------------------
# score, models


@app.command()
@user_errors
def score(
    model: Annotated[
        str,
        typer.Argument(
            help="NAME (alias champion), NAME@ALIAS, NAME/VERSION or a .onnx file.",
            show_default=False,
        ),
    ],
    *,
    input: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="CSV/Parquet table or series, .npz, or image folder; local or s3://BUCKET/KEY "
            "(s3://BUCKET/PREFIX/ for images).",
            show_default=False,
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="Output .csv or .parquet, local or s3://.", show_default=False
        ),
    ],
    batch_size: Annotated[
        int, typer.Option(help="Rows per ONNX Runtime call.", min=1)
    ] = DEFAULT_BATCH_SIZE,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            help="Rows per chunk (one Prefect task each).",
            min=1,
            show_default="enough chunks to keep every core (or Dask thread) busy",
        ),
    ] = None,
    dask: Annotated[
        str | None,
        typer.Option(
            help="Dask scheduler address (tcp://host:8786) to run chunks on.",
            show_default="local threads",
        ),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(help="Column holding row ids to keep.", show_default="id/row_id/... if any"),
    ] = None,
) -> None:
    """Score a file in chunks with ONNX Runtime; keep row ids, add predictions.

    s3:// paths use the AWS_* keys and the endpoint in AWS_ENDPOINT_URL or MLFLOW_S3_ENDPOINT_URL.
    """
    bootstrap()
    from pipelines import registry
    from pipelines.score import run_score

    ref = registry.parse_ref(model)
    client = None
    if ref.path is None:
        from pipelines import tracking

        client = tracking.connect()
    resolved = registry.resolve(client, ref)
    label = str(ref) if ref.path else f"{resolved.name} v{resolved.version} ({ref})"
    outcome = run_score(
        str(resolved.path),
        input,
        output,
        batch_size=batch_size,
        chunk_size=chunk_size,
        dask_address=dask,
        id_column=id_column,
        model_label=label,
    )
    console.print(
        f"scored {outcome.rows} rows with {label} in {outcome.chunks} chunk(s) "
        f"({'Prefect tasks' if outcome.as_tasks else 'flow threads'}, batches of "
        f"{outcome.batch_size}), "
        f"{outcome.seconds:.2f} s ({outcome.rows_per_second:,.0f} rows/s) -> {outcome.output}",
        soft_wrap=True,
        highlight=False,
    )


@app.command()
@user_errors
def models() -> None:
    """Registered models: champion version, its primary test metric, aliases and the champion's
    last monitoring verdict."""
    bootstrap(prefect=False)
    from pipelines import listing, settings

    rows = listing.summarize(settings.tracking_uri())
    table = Table(title="registered models")
    widest = max((len(r.name) for r in rows), default=5)
    # Names whole (a cut name cannot be typed back); the other cells wrap on a narrow terminal.
    table.add_column("model", no_wrap=True, min_width=min(widest, 40))
    for col in ("champion", "metric", "value", "latest", "aliases", "monitored"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.name,
            f"v{r.champion_version}" if r.champion_version else "-",
            r.metric_name or "-",
            "-" if r.metric_value is None else f"{r.metric_value:.4f}",
            f"v{r.latest_version}",
            ", ".join(f"{a}=v{v}" for a, v in sorted(r.aliases.items())) or "-",
            f"{r.verdict} ({r.verdict_at})" if r.verdict else "-",
        )
    if not rows:
        console.print(
            "no registered models yet; train one with `neuroserve train cnn --data digits`"
        )
        return
    console.print(table)


# --------------------------------------------------------------------------------------------
# server: the shared local Prefect API (not the model server, which is `serve`)

server_app = typer.Typer(
    help="The local Prefect API server that flows share, started in the background by the first "
    "command that needs one (not the model server: that is `neuroserve serve`).",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")


def _describe_server() -> tuple[bool, str]:
    """(running and answering, one line saying so)."""
    from pipelines import prefect_api

    bootstrap(prefect=False)
    st = prefect_api.status()
    user_url = os.environ.get("PREFECT_API_URL")
    note = f"; commands use PREFECT_API_URL={user_url} instead" if user_url else ""
    if st.state is None or not st.running:
        return False, f"local Prefect server: not running (log {st.log}){note}"
    s = st.state
    up = time.time() - s.started_at
    health = "answering" if st.healthy else "NOT answering"
    return st.healthy, (
        f"local Prefect server: {health} at {s.api_url} (pid {s.pid}, up {up:.0f} s, "
        f"Prefect {s.prefect_version}; UI {s.api_url.removesuffix('/api')}; log {st.log}){note}"
    )


@server_app.command("status")
@user_errors
def server_status() -> None:
    """Say whether the local Prefect server runs and answers; exit 1 when it does not."""
    ok, line = _describe_server()
    console.print(line, soft_wrap=True, highlight=False)
    if not ok:
        raise typer.Exit(1)


@server_app.command("start")
@user_errors
def server_start() -> None:
    """Start the local Prefect server now (commands start it themselves when needed)."""
    from pipelines import prefect_api

    bootstrap(prefect=False)
    prefect_api.ensure()
    console.print(_describe_server()[1], soft_wrap=True, highlight=False)


@server_app.command("stop")
@user_errors
def server_stop() -> None:
    """Stop the local Prefect server; the next command that needs one starts it again."""
    from pipelines import prefect_api

    bootstrap(prefect=False)
    state = prefect_api.stop()
    if state is None:
        console.print("local Prefect server: was not running")
    else:
        console.print(f"local Prefect server: stopped (pid {state.pid}, {state.api_url})")


# --------------------------------------------------------------------------------------------
# serving (forwarded; no torch, no Prefect)

_FORWARD = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_FORWARD, add_help_option=False)
def serve(ctx: typer.Context) -> None:
    """Start the gRPC server (arguments go to serving; `neuroserve serve --help`)."""
    from serving.cli import serve_main

    raise typer.Exit(serve_main(list(ctx.args)))


@app.command(context_settings=_FORWARD, add_help_option=False)
def predict(ctx: typer.Context) -> None:
    """Send a prediction over gRPC (arguments go to serving; `neuroserve predict --help`)."""
    from serving.cli import predict_main

    raise typer.Exit(predict_main(list(ctx.args)))


def _register_demo() -> None:
    from pipelines.demo import demo

    register_command(demo, "demo")


_register_demo()


def main() -> None:
    """Console-script entry point."""
    app()
