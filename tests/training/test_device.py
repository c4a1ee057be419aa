"""Training's device policy: ``--device auto|cpu|cuda`` and ``--amp``.

Unmarked tests run on any machine and are about a machine without a GPU (they skip where torch
sees one): ``auto`` trains on the CPU and the MLflow run says so with the versions that exist,
``--device cuda`` is one red line before anything is recorded, a bad value names the choices.
The whole command runs for real in a subprocess with its own MLflow store and Prefect home.

Tests marked ``gpu`` need CUDA (they skip without it; ``bench/gpu_check.sh`` runs them on a GPU
machine): a CNN trains on the GPU with its data moved there once, the GPU is named in what the
loop announces (which the MLflow callback records as tags, checked above on the CPU), bf16
autocast trains and exports float32, ONNX parity holds on the CUDA provider, and DDP uses NCCL.
Nothing here imports Prefect or MLflow at module level, so the GPU tests collect on a machine
that has neither.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from training import Callback, DeviceError, SpecError, TrainSpec, train
from training import device as devices

ROOT = Path(__file__).resolve().parents[2]

no_gpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="about a machine without a GPU; torch sees one here"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")


class Announced(Callback):
    """Keeps what the loop announces at the start (what MlflowCallback turns into tags)."""

    info: dict[str, Any]

    def on_train_start(self, info: dict[str, Any]) -> None:
        self.info = dict(info)


def _cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``neuroserve <args>`` in its own process, home, MLflow store and Prefect home."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL")
    }
    env.update(
        NEUROSERVE_HOME=str(home),
        PREFECT_HOME=str(home / "prefect"),
        NEUROSERVE_PREFECT_API="ephemeral",
    )
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _runs(home: Path) -> list[Any]:
    """Every MLflow run in ``home``'s store (none when the store was never created)."""
    db = home / "mlflow.db"
    if not db.exists():
        return []
    from mlflow import MlflowClient

    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids)) if ids else []


# --------------------------------------------------------------------------------------------
# any machine (about one without a GPU)


@no_gpu
def test_auto_picks_the_cpu_here_and_ddp_would_use_gloo() -> None:
    assert devices.resolve("auto") == torch.device("cpu")
    assert devices.resolve(None) == torch.device("cpu")
    assert devices.resolve("cpu") == torch.device("cpu")
    assert devices.backend_for("auto") == devices.backend_for("cpu") == "gloo"
    assert devices.fits_on(torch.device("cpu"), torch.zeros(10))


def test_a_bad_device_is_rejected_naming_the_choices() -> None:
    with pytest.raises(SpecError, match=r"unknown device 'gpu'; expected one of: auto, cpu, cuda"):
        TrainSpec("fnn", "wine", device="gpu").validate()
    with pytest.raises(SpecError, match="amp must be true or false"):
        TrainSpec.from_dict({"kind": "fnn", "data": "wine", "amp": "maybe"})
    spec = TrainSpec.from_dict({"kind": "fnn", "data": "wine", "device": "cpu", "amp": "true"})
    assert (spec.device, spec.amp) == ("cpu", True)


def test_a_bad_device_flag_is_one_red_line() -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["train", "fnn", "--data", "wine", "--device", "gpu"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "unknown --device 'gpu'; expected one of: auto, cpu, cuda" in lines[0]


@no_gpu
def test_cuda_without_a_gpu_fails_before_any_data_is_read() -> None:
    start = time.perf_counter()
    with pytest.raises(DeviceError) as caught:
        train(TrainSpec("cnn", "mnist", epochs=1, device="cuda"))
    message = str(caught.value)
    assert "--device cuda asks for a GPU" in message and "--device auto or --device cpu" in message
    assert f"torch {torch.__version__}" in message and "\n" not in message
    assert time.perf_counter() - start < 5  # mnist was not loaded, nothing trained


@no_gpu
def test_cuda_without_a_gpu_is_one_red_line_and_records_nothing(tmp_path: Path) -> None:
    """train, train --nproc (the launcher's check) and a compare variant alike."""
    home = tmp_path / "home"
    commands = [
        ["train", "fnn", "--data", "wine", "--device", "cuda"],
        ["train", "fnn", "--data", "wine", "--device", "cuda", "--nproc", "2"],
        ["compare", "fnn", "--data", "wine", "--vary", "device=cpu,cuda"],
    ]
    for command in commands:
        start = time.perf_counter()
        proc = _cli(home, *command)
        assert time.perf_counter() - start < 60
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: --device cuda asks for a GPU"), lines[0]
        assert "Traceback" not in proc.stdout + proc.stderr
    assert _runs(home) == []


@no_gpu
def test_a_cpu_run_records_the_device_and_the_versions_that_exist(tmp_path: Path) -> None:
    import onnxruntime

    home = tmp_path / "home"
    args = ["train", "fnn", "--data", "wine", "--epochs", "2", "--name", "wine-device", "--amp"]
    proc = _cli(home, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = _runs(home)
    params, tags = run.data.params, run.data.tags
    assert (params["device"], params["amp"]) == ("auto", "True")  # the request, portable
    assert tags["neuroserve.train.device"] == "cpu"  # what it ran on
    assert tags["neuroserve.train.amp"] == "off (bf16 autocast is used on CUDA only)"
    assert tags["neuroserve.train.torch_version"] == torch.__version__
    assert tags["neuroserve.train.onnxruntime_version"] == onnxruntime.__version__
    assert tags["neuroserve.train.data_on_device"] == "True"
    for absent in ("gpu_name", "cuda_version", "cudnn_version", "gpu_capability"):
        assert f"neuroserve.train.{absent}" not in tags, absent
    # Parity: the CPU provider's gates as before; the CUDA provider's says why it was not run.
    assert tags["neuroserve.parity"] == "passed"
    assert tags["neuroserve.parity.cuda"].startswith("not measured: "), tags
    assert "parity_max_diff.cuda" not in run.data.metrics


@no_gpu
def test_auto_and_cpu_train_the_same_model_here() -> None:
    spec = TrainSpec("cnn", "digits", epochs=2, limit=200, batch_size=32)
    auto, cpu = Announced(), Announced()
    a = train(spec, callbacks=[auto])
    b = train(TrainSpec(**{**spec.to_dict(), "device": "cpu"}), callbacks=[cpu])
    assert auto.info["device"] == cpu.info["device"] == "cpu"
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    assert a.test_metrics == b.test_metrics


# --------------------------------------------------------------------------------------------
# GPU (bench/gpu_check.sh runs these; CI deselects them)


def _accuracy(result: Any) -> float:
    return float(result.test_metrics["accuracy"])


@pytest.mark.gpu
@needs_cuda
def test_a_cnn_trains_on_cuda_with_its_data_moved_once_and_names_the_gpu() -> None:
    seen = Announced()
    spec = TrainSpec("cnn", "mnist", epochs=2, limit=2000, batch_size=64, device="cuda")
    result = train(spec, callbacks=[seen])
    info = seen.info
    assert info["device"].startswith("cuda")
    assert info["gpu_name"] == torch.cuda.get_device_name(torch.device(info["device"]))
    assert info["cuda_version"] == torch.version.cuda
    assert info["cudnn_version"].split(".")[0].isdigit()
    assert info["data_on_device"] is True and info["amp"] == "off"
    assert all(p.device.type == "cpu" for p in result.model.parameters())  # exported from here
    assert _accuracy(result) > 0.85, result.test_metrics


@pytest.mark.gpu
@needs_cuda
def test_amp_trains_in_bf16_and_still_exports_float32_with_parity(tmp_path: Path) -> None:
    import onnx

    from training import export_onnx

    seen = Announced()
    spec = TrainSpec("cnn", "mnist", epochs=2, limit=2000, device="cuda", amp=True)
    result = train(spec, callbacks=[seen])
    assert seen.info["amp"] == "bf16"
    assert _accuracy(result) > 0.85, result.test_metrics
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    report = export_onnx(result, tmp_path / "amp.onnx")
    graph = onnx.load(str(report.path)).graph
    assert {init.data_type for init in graph.initializer} <= {onnx.TensorProto.FLOAT}
    assert report.max_diff <= 1e-4


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    "spec",
    [
        TrainSpec("cnn", "mnist", epochs=1, limit=1000, device="cuda"),
        TrainSpec("lstm", "sunspots", epochs=2, window=12, device="cuda"),
        TrainSpec("fnn", "breast-cancer", epochs=3, device="cuda"),
    ],
    ids=lambda s: f"{s.kind}-{s.data}",
)
def test_onnx_parity_holds_on_the_cuda_provider(spec: TrainSpec, tmp_path: Path) -> None:
    from training import export_onnx
    from training.export import CPU_PROVIDER, CUDA_PROVIDER, PARITY_TOLERANCE

    report = export_onnx(train(spec), tmp_path / "model.onnx")
    assert report.provider_notes == {}, report.provider_notes
    assert set(report.provider_diffs) == {CPU_PROVIDER, CUDA_PROVIDER}
    assert report.provider_diffs[CUDA_PROVIDER] <= PARITY_TOLERANCE, report.provider_diffs


@pytest.mark.gpu
@needs_cuda
def test_ddp_trains_over_nccl_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from training import distributed
    from training.run import fit_spec

    assert devices.backend_for("cuda") == devices.backend_for("auto") == "nccl"
    assert devices.backend_for("cpu") == "gloo"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    for key, value in {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    world = distributed.world_from_env("cuda")
    assert world is not None and world.backend == "nccl"
    seen = Announced()
    distributed.join(world)
    try:
        fitted = fit_spec(TrainSpec("cnn", "digits", epochs=2, device="cuda"), [seen])
    finally:
        distributed.leave()
    assert seen.info["backend"] == "nccl" and seen.info["device"] == "cuda:0"
    assert fitted.fitted.history[-1]["val_accuracy"] > 0.8
