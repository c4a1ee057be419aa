"""Training past one process: ``neuroserve train ... --nproc 2`` on two CPU processes (gloo).

The whole command runs for real (torch's elastic launcher, two `neuroserve train` processes,
DDP, the train flow on rank 0 against its own MLflow store) and is held to the single-process
run of the same spec: the same quality within a stated tolerance, and exactly one run, one ONNX
file and one registered version. A worker killed mid-run is one red line naming it, and the run
it belonged to ends FAILED with nothing registered. The loop's agreement rules (rank 0's stop
decision and logs on every rank) are checked on a two-process gloo group directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import torch.multiprocessing as mp

from tests.ports import free_port
from training import Callback, TrainSpec, distributed
from training.loop import LoopConfig, fit

ROOT = Path(__file__).resolve().parents[2]

#: Small enough for seconds per run on two shared cores, large enough that accuracy means
#: something: 600 digits leave a test split of 120 images.
SPEC: dict[str, Any] = {
    "kind": "cnn",
    "data": "digits",
    "limit": 600,
    "epochs": 6,
    "batch_size": 32,
}
#: How far the two-process test accuracy may fall below the single-process one. The runs differ
#: by design (each process draws its own shard order, augmentation and dropout; batch norm sees
#: 16 images per process instead of 32), so they are not bit-identical; on 120 test images one
#: image is 0.8 points, and 5 points is six images.
ACCURACY_TOLERANCE = 0.05

two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="two training processes need two CPU cores"
)


def _cli_args(name: str, **extra: Any) -> list[str]:
    spec = {**SPEC, **extra}
    args = ["train", str(spec.pop("kind")), "--name", name]
    for key, value in spec.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _env(home: Path, prefect_home: Path) -> dict[str, str]:
    """The command's environment: its own MLflow home, the module's local Prefect server."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL")
    }
    # The shared local server (the default), not Prefect's per-process one: the launcher stops
    # a failed job by signalling each process's whole group, which would take an embedded
    # server down with rank 0 before its flow could mark the run FAILED.
    env.pop("NEUROSERVE_PREFECT_API", None)
    env.pop("OMP_NUM_THREADS", None)  # the launcher shares the cores out itself
    env.update(NEUROSERVE_HOME=str(home), PREFECT_HOME=str(prefect_home))
    return env


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One local Prefect server for the module's commands, stopped at the end."""
    home = tmp_path_factory.mktemp("prefect")
    env = _env(home / "neuroserve", home)
    server = [sys.executable, "-m", "pipelines", "server"]
    subprocess.run([*server, "start"], cwd=ROOT, env=env, check=True, timeout=240)
    yield home
    subprocess.run([*server, "stop"], cwd=ROOT, env=env, check=False, timeout=120)


def _client(home: Path) -> Any:
    from mlflow import MlflowClient

    # Registry URI explicit: other tests may have set MLflow's process-wide one.
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(home: Path, name: str) -> list[Any]:
    client = _client(home)
    experiment = client.get_experiment_by_name(name)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@two_cores
def test_two_processes_reach_single_process_quality_with_one_run_onnx_and_version(
    tmp_path: Path, prefect_home: Path
) -> None:
    home, name = tmp_path / "home", "digits-ddp"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", *_cli_args(name), "--nproc", "2"],
        cwd=ROOT,
        env=_env(home, prefect_home),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{name} v1 -> @" in proc.stdout

    runs = _runs(home, name)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["neuroserve.train.world_size"] == "2"
    assert tags["neuroserve.train.backend"] == "gloo"
    assert tags["neuroserve.train.batch_size_per_process"] == "16"
    assert run.data.params["batch_size"] == "32"  # the spec is the same spec
    onnx_files = sorted(p.relative_to(home) for p in home.rglob("*.onnx"))
    assert len(onnx_files) == 1, onnx_files
    versions = _client(home).search_model_versions(f"name='{name}'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]

    from training import train  # here: the spawned ranks below import this module too

    single = train(TrainSpec(**SPEC))
    ddp_accuracy = run.data.metrics["test_accuracy"]
    single_accuracy = single.test_metrics["accuracy"]
    print(
        f"2 processes: accuracy {ddp_accuracy:.4f} in {seconds:.1f} s (whole command); "
        f"1 process: {single_accuracy:.4f}"
    )
    assert ddp_accuracy >= single_accuracy - ACCURACY_TOLERANCE
    assert ddp_accuracy > run.data.metrics["baseline_accuracy"] - ACCURACY_TOLERANCE


@two_cores
def test_a_killed_worker_is_one_red_line_and_the_run_fails_with_nothing_registered(
    tmp_path: Path, prefect_home: Path
) -> None:
    home, name = tmp_path / "home", "digits-ddp-killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines",
            *_cli_args(name, epochs=200, patience=200),
            "--nproc",
            "2",
        ],
        cwd=ROOT,
        env=_env(home, prefect_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        victim = _wait_for_rank_one_training(proc, home)
        victim.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
        print(stderr[-4000:])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stdout[-2000:] + stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "training process rank 1 of 2 was killed" in errors[0] and "SIGKILL" in errors[0]
    assert "Traceback" not in stderr, stderr[-3000:]
    runs = _runs(home, name)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "PeerError" in runs[0].data.tags["neuroserve.error"]
    assert _client(home).search_model_versions(f"name='{name}'") == []


def test_the_launchers_stop_outside_a_collective_fails_the_run_as_a_peer_error(
    tmp_path: Path, prefect_home: Path
) -> None:
    """The race behind the killed-worker test, made certain: the launcher's SIGTERM reaching rank
    0 while it is *not* in a collective (the dead peer not yet noticed). Rank 0 of a one-process
    world is signalled directly once it trains; Prefect's flow engine installs its own SIGTERM
    bridge over the launcher handler, which must not turn the stop into a bare TerminationSignal."""
    home, name = tmp_path / "home", "digits-ddp-stopped"
    port = free_port()
    env = _env(home, prefect_home)
    env.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    args = [sys.executable, "-m", "pipelines", *_cli_args(name, epochs=200, patience=200)]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_training(proc, home)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == distributed.PEER_EXIT, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    runs = _runs(home, name)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["neuroserve.error"] == f"PeerError: {distributed.STOPPED_BY_LAUNCHER}"
    assert _client(home).search_model_versions(f"name='{name}'") == []


def _wait_for_training(proc: subprocess.Popen[str], home: Path) -> None:
    """Until the command's run has logged a first epoch.

    The store is read with sqlite3, read-only: an MLflow client here would migrate the new
    store while the command does.
    """
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{home / 'mlflow.db'}?mode=ro", uri=True)
            ) as db:
                if db.execute("SELECT 1 FROM metrics WHERE key = 'train_loss'").fetchone():
                    return
        except sqlite3.Error:  # no store, or no tables yet
            pass
        time.sleep(0.5)
    raise AssertionError("the command never started training")


def _wait_for_rank_one_training(proc: subprocess.Popen[str], home: Path) -> Any:
    """Rank 1's process, once rank 0's run has logged a first epoch (both are training)."""
    _wait_for_training(proc, home)
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == "1":
                return child
    raise AssertionError("rank 1 is not among the command's processes")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--nproc", "0"], "--nproc must be 1 or more"),
        (["--nproc", "-2"], "--nproc must be 1 or more"),
        (["--nproc", "100000"], "--nproc 100000 but this machine has"),
        (["--nproc", "2", "--batch-size", "33"], "--batch-size 33 cannot be split evenly over 2"),
    ],
)
def test_bad_nproc_is_one_red_line_before_anything_starts(
    extra: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if extra[1] == "2" and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPU cores to get past the --nproc check")
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.setenv("NEUROSERVE_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["train", "cnn", "--data", "digits", *extra])
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert len(text.splitlines()) == 1 and text.startswith("error:"), text
    assert needle in text, text
    assert not (tmp_path / "home").exists()  # nothing started, nothing written


# --------------------------------------------------------------------------------------------
# the loop's agreement rules, on a real two-process gloo group


class _StopOnRankZero(Callback):
    """Asks to stop after epoch 2, on rank 0 only: every rank must still stop there."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.stop_training = torch.distributed.get_rank() == 0 and epoch >= 2


def _fit_rank(rank: int, port: int, out: dict[int, Any]) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        x = torch.randn(64, 4)
        y = x.sum(dim=1, keepdim=True)
        calls = {"n": 0}

        def validate(m: torch.nn.Module) -> dict[str, float]:
            calls["n"] += 1
            return {"val_loss": float(torch.nn.functional.mse_loss(m(x), y))}

        result = fit(
            model,
            torch.nn.functional.mse_loss,
            x,
            y,
            validate=validate,
            config=LoopConfig(epochs=5, batch_size=16, lr=0.05),
            callbacks=[_StopOnRankZero()],
        )
        out[rank] = {
            "history": result.history,
            "epochs": len(result.history),
            "validated": calls["n"],
            "weights": [p.detach().clone() for p in model.parameters()],
        }
    finally:
        torch.distributed.destroy_process_group()


def test_rank_zero_decides_and_every_rank_agrees() -> None:
    port = free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_fit_rank, args=(port, out), nprocs=2, join=True)
        results = dict(out)
    assert results[0]["epochs"] == results[1]["epochs"] == 2  # rank 0's stop, on both
    assert results[0]["history"] == results[1]["history"]  # rank 0's logs, on both
    assert (results[0]["validated"], results[1]["validated"]) == (2, 0)  # rank 0 validates
    for a, b in zip(results[0]["weights"], results[1]["weights"], strict=True):
        assert torch.equal(a, b)  # DDP kept the replicas identical
    assert distributed.current() is None  # the test process itself never joined a group


def _signalled_inside_a_library() -> None:
    """The launcher's SIGTERM landing inside a library call that wraps every ``Exception`` it
    sees, as MLflow's store session does."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, mid-call
    except Exception as exc:
        raise RuntimeError("the library wrapped what interrupted it") from exc


class _StopInsideALibrary(Callback):
    """The signal lands in a callback's library call after epoch 1 (inside the loop)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch == 1:
            _signalled_inside_a_library()


def _stopped_rank(rank: int, port: int, out: dict[str, Any], where: str) -> None:
    import gc

    from torch.nn.parallel import DistributedDataParallel

    world = distributed.World(rank=0, world_size=1, local_rank=0, local_world_size=1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    epochs = {"n": 0}

    def validate(m: torch.nn.Module) -> dict[str, float]:
        epochs["n"] += 1
        return {"val_loss": 0.0}

    x = torch.randn(64, 4)
    gc.disable()  # what leave() frees must not depend on when the collector happens to run
    try:
        with distributed.as_rank_zero(world):
            fit(
                torch.nn.Linear(4, 1),
                torch.nn.functional.mse_loss,
                x,
                x.sum(dim=1, keepdim=True),
                validate=validate,
                config=LoopConfig(epochs=5, batch_size=16, lr=0.05),
                callbacks=[_StopInsideALibrary()] if where == "loop" else [],
            )
            if where == "after":  # e.g. MLflow logging the model, after training
                _signalled_inside_a_library()
    except BaseException as exc:  # what escaped is the result
        out["raised"] = f"{type(exc).__name__}: {exc}"
    out["epochs"] = epochs["n"]
    out["wrappers"] = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())


def _stopped(where: str) -> dict[str, Any]:
    port = free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_stopped_rank, args=(port, out, where), nprocs=1, join=True)
        return dict(out)


def test_a_stop_inside_a_library_call_waits_for_the_next_step() -> None:
    """A SIGTERM that lands in a callback's library call must not raise there (the library
    would wrap it and the run be tagged with its error): the loop stops at its next step with
    PeerError. And no DDP wrapper outlives leaving the group (freed at interpreter exit, one
    aborts the process)."""
    result = _stopped("loop")
    assert result["raised"] == f"PeerError: {distributed.STOPPED_BY_LAUNCHER}"
    assert result["epochs"] == 1  # stopped at epoch 2's first step
    assert result["wrappers"] == 0


def test_a_stop_after_the_loop_raises_at_once_through_a_library_that_wraps_exceptions() -> None:
    """Outside the loop there is no next step to wait for: the stop raises where it lands, as
    a BaseException the library's ``except Exception`` cannot wrap."""
    result = _stopped("after")
    assert result["raised"] == f"LauncherStop: {distributed.STOPPED_BY_LAUNCHER}"
    assert result["epochs"] == 5
