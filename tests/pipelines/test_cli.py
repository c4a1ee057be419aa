"""The `neuroserve` command: cheap --help, defaults shown, one red line + exit 2 on user errors,
MODEL@ALIAS resolved through the registry, serve/predict forwarded to serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.flows import train_flow
from tests.pipelines.conftest import GOOD

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
        "unknown optimizer 'warp'",
    )


def test_bad_vary_fails_before_anything_runs(home: Path, client: Any) -> None:
    result = runner.invoke(
        app, ["compare", "fnn", "--data", "breast-cancer", "--vary", "activation=relu,nope"]
    )
    _one_red_line(result, "unknown activation 'nope'")
    result = runner.invoke(app, ["compare", "fnn", "--vary", "depth=1,2"])
    _one_red_line(result, "unknown parameter 'depth'", "activation, optimizer, lr")
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
