"""The `neuroserve` command: cheap --help, defaults shown, one red line + exit 2 on user errors,
MODEL@ALIAS resolved through the registry, serve/predict forwarded to serving; every spec field a
flag on train and compare that reaches the recorded spec, bad values one line naming the flag."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import pipelines.flows
from pipelines import specs
from pipelines.cli import app
from pipelines.errors import PipelineError
from pipelines.flows import train_flow
from tests.pipelines.conftest import GOOD
from training import TrainSpec
from training.spec import ACTIVATIONS, OPTIMIZERS, POOLS, SCHEDULES

runner = CliRunner()


def _one_red_line(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error:") and "Traceback" not in result.output
    for needle in needles:
        assert needle in text, text


def test_help_is_cheap_and_shows_defaults() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pipelines.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "t = CliRunner().invoke(app, ['train', '--help'], terminal_width=200)\n"
        "assert r.exit_code == 0 and t.exit_code == 0\n"
        "heavy = [m for m in ('torch', 'serving', 'prefect', 'mlflow') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "print(t.output)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "HEAVY []" in out
    for shown in (
        "default: adam",
        "default: relu",
        "default: 42",
        "<data set>-<kind>",
        "--promote",
    ):
        assert shown in out, shown


def test_unreachable_tracking_uri_is_one_red_line(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    result = runner.invoke(app, ["train", "lstm", "--data", "sunspots", "--epochs", "1"])
    _one_red_line(result, "http://127.0.0.1:1", "unreachable")


def test_training_errors_are_one_red_line(home: Path) -> None:
    _one_red_line(runner.invoke(app, ["train", "fnn", "--data", "mnist"]), "cannot train on")
    _one_red_line(
        runner.invoke(app, ["train", "fnn", "--data", "breast-cancer", "--optimizer", "warp"]),
        "unknown --optimizer 'warp'",
    )


def test_bad_vary_fails_before_anything_runs(home: Path, client: Any) -> None:
    result = runner.invoke(
        app, ["compare", "fnn", "--data", "breast-cancer", "--vary", "activation=relu,nope"]
    )
    _one_red_line(result, "unknown activation 'nope'")
    result = runner.invoke(app, ["compare", "fnn", "--vary", "depth=1,2"])
    _one_red_line(result, "unknown parameter 'depth'", "epochs, lr, batch_size")
    assert [e.name for e in client.search_experiments()] == ["Default"]


def test_score_resolves_registry_references(home: Path) -> None:
    outcome = train_flow(GOOD)
    values = np.abs(np.sin(np.arange(40) / 5.0)) * 100
    pd.DataFrame({"value": values}).to_csv(home / "s.csv", index=False)
    for ref in ("sunspots-gru", "sunspots-gru@champion", f"sunspots-gru/{outcome.version}"):
        result = runner.invoke(
            app, ["score", ref, "--input", str(home / "s.csv"), "--output", str(home / "o.csv")]
        )
        assert result.exit_code == 0, result.output
        assert "scored 21 rows" in result.stdout
        assert len(pd.read_csv(home / "o.csv")) == 21
    args = ["--input", str(home / "s.csv"), "--output", str(home / "x.csv")]
    _one_red_line(
        runner.invoke(app, ["score", "nope@champion", *args]),
        "no registered model named 'nope'",
        "sunspots-gru",
    )
    _one_red_line(
        runner.invoke(app, ["score", "sunspots-gru@staging", *args]),
        "has no alias 'staging'",
        "aliases: champion",
    )
    _one_red_line(
        runner.invoke(app, ["score", "sunspots-gru/9", *args]), "has no version 9", "versions: 1"
    )
    _one_red_line(runner.invoke(app, ["score", "missing.onnx", *args]), "does not exist")
    assert not (home / "x.csv").exists()

    result = runner.invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0
    assert "sunspots-gru" in result.stdout and "rmse" in result.stdout and "v1" in result.stdout


def test_serve_and_predict_forward_their_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.cli

    seen: dict[str, list[str]] = {}

    def fake(name: str) -> Any:
        def main(argv: list[str]) -> int:
            seen[name] = argv
            return 3

        return main

    monkeypatch.setattr(serving.cli, "serve_main", fake("serve"))
    monkeypatch.setattr(serving.cli, "predict_main", fake("predict"))
    r = runner.invoke(app, ["serve", "--grpc-port", "9001", "--help"])
    assert r.exit_code == 3 and seen["serve"] == ["--grpc-port", "9001", "--help"]
    r = runner.invoke(app, ["predict", "digits-cnn", "--input", "x.npz", "--top-k", "3"])
    assert r.exit_code == 3 and seen["predict"] == [
        "digits-cnn",
        "--input",
        "x.npz",
        "--top-k",
        "3",
    ]


def test_unreachable_prefect_api_is_one_red_line(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    result = runner.invoke(app, ["train", "gru", "--data", "sunspots", "--epochs", "1"])
    _one_red_line(result, "PREFECT_API_URL=http://127.0.0.1:1/api", "does not answer")


def _flat(text: str) -> str:
    """Help output with the panels' borders and line wraps taken out."""
    return " ".join(text.replace("│", " ").split())


def test_every_spec_field_is_a_flag_on_train_and_compare() -> None:
    from typer.main import get_command

    group: Any = get_command(app)
    fields = {f.name for f in dataclasses.fields(TrainSpec)} - {"kind"}
    for command in ("train", "compare"):
        opts = {p.name: p.opts for p in group.commands[command].params}
        for name in fields:
            assert specs.flag(name) in opts.get(name, []), (command, name)
    assert specs.flag("batch_size") == "--batch-size"


def test_help_derives_choices_and_defaults_from_the_spec() -> None:
    for command in ("train", "compare"):
        out = _flat(runner.invoke(app, [command, "--help"]).output)
        for choices in (OPTIMIZERS, ACTIVATIONS, SCHEDULES, POOLS):
            assert ", ".join(choices) in out, (command, choices)
        assert "default: (per kind/data)" in out
        assert "--batch-norm --no-batch-norm" in out and "--tied --no-tied" in out


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "cnn", "--conv", "32,abc"], ("--conv must be layer sizes", "'32,abc'")),
        (["train", "cnn", "--conv", "0,64"], ("--conv must be one or more positive", "'0,64'")),
        (["train", "cnn", "--dense", "0"], ("--dense must be one or more positive",)),
        (["train", "fnn", "--hidden", "8,-4"], ("--hidden must be",)),
        (["train", "fnn", "--dropout", "1.5"], ("--dropout must be in [0, 1)", "1.5")),
        (["train", "fnn", "--dropout", "abc"], ("'--dropout'", "number")),
        (["train", "cnn", "--pool", "sum"], ("unknown --pool 'sum'", "max, avg, none")),
        (["train", "fnn", "--schedule", "step"], ("unknown --schedule 'step'", "cosine")),
        (["train", "fnn", "--optimizer", "adagrad"], ("unknown --optimizer", "adamw")),
        (["train", "fnn", "--weight-decay", "-1"], ("--weight-decay must be a number >= 0",)),
        (["train", "cnn", "--kernel", "0"], ("--kernel must be a positive integer",)),
        (["train", "lstm", "--data", "pydoc-text", "--embed", "0"], ("--embed must be",)),
        (["train", "fnn", "--batch-size", "0"], ("--batch-size must be a positive integer",)),
        (["train", "gru", "--window", "1"], ("--window must be at least 2",)),
        (["train", "fnn", "--data", ""], ("--data is empty",)),
        (["train", "fnn", "--hiden", "8"], ("No such option: --hiden",)),
        (["compare", "cnn", "--conv", "0", "--vary", "lr=0.1,0.2"], ("--conv must be",)),
        (["compare", "fnn", "--vary", "hidden=8,4x0"], ("--vary hidden", "positive layer")),
        (["compare", "fnn"], ("Missing option '--vary'",)),
        (
            ["compare", "fnn", "--vary", "seed=1,2", "--seeds", "2"],
            ("--vary seed cannot be combined with --seeds 2",),
        ),
        (
            ["compare", "fnn", "--vary", "lr=0.1,0.2", "--seeds", "0"],
            ("--seeds must be a positive integer",),
        ),
    ],
)
def test_bad_values_are_one_red_line_naming_the_flag(
    home: Path, client: Any, args: list[str], needles: tuple[str, ...]
) -> None:
    _one_red_line(runner.invoke(app, args), *needles)
    assert [e.name for e in client.search_experiments()] == ["Default"]


def test_a_kernel_larger_than_the_image_names_the_flag(home: Path) -> None:
    result = runner.invoke(
        app, ["train", "cnn", "--data", "digits", "--kernel", "9", "--limit", "60"]
    )
    _one_red_line(result, "--kernel 9", "8x8")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["train", "cnn", "--data", "./pets", "--conv", "32,64", "--dense", "128"],
            {"kind": "cnn", "data": "./pets", "conv": [32, 64], "dense": [128]},
        ),
        (
            ["train", "lstm", "--data", "./series.csv", "--hidden", "64,64", "--window", "30"],
            {"kind": "lstm", "hidden": [64, 64], "window": 30},
        ),
        (
            ["train", "cnn", "--no-batch-norm", "--augment", "--pool", "none", "--kernel", "5"],
            {"data": "digits", "batch_norm": False, "augment": True, "pool": "none", "kernel": 5},
        ),
        (
            ["train", "gru", "--data", "pydoc-text", "--embed", "48", "--no-tied", "--no-pointer"],
            {"embed": 48, "tied": False, "pointer": False, "hidden": None, "dropout": None},
        ),
        (
            ["train", "fnn", "--optimizer", "adamw", "--weight-decay", "0.01"],
            {"optimizer": "adamw", "weight_decay": 0.01, "schedule": None, "seed": 42},
        ),
    ],
)
def test_seed_examples_parse_into_the_spec(
    home: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: dict[str, Any]
) -> None:
    seen: dict[str, Any] = {}

    def fake_train_flow(spec_dict: dict[str, Any], **_: Any) -> None:
        seen.update(spec_dict)
        raise PipelineError("stopped before training")

    monkeypatch.setattr(pipelines.flows, "train_flow", fake_train_flow)
    _one_red_line(runner.invoke(app, args), "stopped before training")
    assert {k: seen[k] for k in expected} == expected


def test_architecture_flags_reach_the_recorded_run(home: Path, client: Any) -> None:
    args = ["--data", "diabetes", "--hidden", "8,4", "--dropout", "0.1", "--optimizer", "adamw"]
    args += ["--weight-decay", "0.001", "--schedule", "cosine", "--epochs", "1", "--limit", "60"]
    result = runner.invoke(app, ["train", "fnn", *args])
    assert result.exit_code == 0, result.output
    (experiment,) = [e for e in client.search_experiments() if e.name == "diabetes-fnn"]
    (run,) = client.search_runs([experiment.experiment_id])
    params = run.data.params
    assert params["hidden"] == "[8, 4]" and params["dropout"] == "0.1"
    assert (params["optimizer"], params["weight_decay"], params["schedule"]) == (
        "adamw",
        "0.001",
        "cosine",
    )
    stored = json.loads(run.data.tags["neuroserve.spec"])
    assert stored["hidden"] == [8, 4]
    assert TrainSpec.from_dict(stored).hidden == (8, 4)


def test_compare_with_seeds_prints_mean_and_spread(home: Path) -> None:
    args = ["--data", "breast-cancer", "--vary", "activation=relu,sigmoid", "--seeds", "2"]
    result = runner.invoke(app, ["compare", "fnn", *args, "--epochs", "1", "--limit", "80"])
    assert result.exit_code == 0, result.output
    out = _flat(result.stdout)
    assert "mean ± sample standard deviation over seeds 42, 43" in out
    assert out.count(" ± ") >= 4  # val and test, both variants
    assert "winner: activation=" in out and "best mean validation accuracy" in out
