"""The device policy (``--device auto|cpu|cuda``), the provider in use, IO binding and the GPU.

Unmarked tests run anywhere. On a host whose CUDA provider cannot load (CI, the development
machine) they prove for real that ``--device cuda`` refuses instead of serving from the CPU; the
"hidden provider" case (the libraries load, yet ONNX Runtime builds the session on the CPU) is
produced by skipping only our own library check, so ONNX Runtime itself falls back.

Tests marked ``gpu`` need a CUDA provider that really runs a session; they skip, saying why,
anywhere else. On a GPU host: ``pytest -m gpu tests/serving/test_device.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from serving import devices, runtime
from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving._proto import model_config_pb2 as mc
from serving.cli import serve_main
from serving.devices import CPU, CUDA, GPU_PROVIDERS, TENSORRT, DeviceUnavailableError, GpuOptions
from serving.metrics import ServerMetrics
from serving.runtime import OnnxModel, OnnxRuntimeModel
from serving.server import _pin_gpu, create_server
from serving.settings import Settings
from tests.serving import onnx_models
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import infer_request

ROOT = Path(__file__).resolve().parents[2]
#: Why CUDA's libraries do not load here ("" where they do): the real dynamic loader's answer.
CUDA_WHY = devices.library_error(CUDA)
without_cuda = pytest.mark.skipif(
    not CUDA_WHY, reason="CUDA's libraries load on this host: the refusal needs one without"
)


def _cnn(seed: int = 0) -> onnx.ModelProto:
    """An MNIST-shaped CNN ([batch, 1, 28, 28] -> 10 probabilities): convolutions are what
    cuDNN's algorithm search and CUDA's numerics are about."""
    rng = np.random.default_rng(seed)
    return onnx_models._model(
        [
            helper.make_node("Conv", ["input", "K", "KB"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
            helper.make_node("Flatten", ["pool"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "K"),
            numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "KB"),
            numpy_helper.from_array(rng.normal(size=(8, 10)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.normal(size=(10,)).astype(np.float32), "B"),
        ],
        {"task": "multiclass", "input_kind": "image"},
    )


def _wide(seed: int) -> onnx.ModelProto:
    """[batch, 2048] -> [batch, 2048] through a 16 MiB weight: a session leaked per reload
    would show in GPU memory at once."""
    weight = np.random.default_rng(seed).normal(size=(2048, 2048)).astype(np.float32)
    return onnx_models._model(
        [helper.make_node("MatMul", ["input", "W"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2048])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2048])],
        [numpy_helper.from_array(weight, "W")],
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("device-models")
    return {
        "classifier": onnx_models.save(onnx_models.classifier(), root / "classifier.onnx"),
        "two": onnx_models.save(onnx_models.two_in_two_out(), root / "two.onnx"),
        "cnn": onnx_models.save(_cnn(), root / "cnn.onnx"),
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory repository with the classifier and the CNN, version 1 each."""
    root = tmp_path_factory.mktemp("device-repo")
    onnx_models.save(onnx_models.classifier(), root / "classifier" / "1" / "model.onnx")
    onnx_models.save(_cnn(), root / "cnn" / "1" / "model.onnx")
    return root


def _load_lines(caplog: pytest.LogCaptureFixture, model: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("event=model_loaded ") and f" model={model} " in r.getMessage()
    ]


def _instance_kind(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> int:
    config = stub.ModelConfig(pb.ModelConfigRequest(name=model)).config
    return config.instance_group[0].kind


# ------------------------------------------------------------------ settings and the CLI
def test_a_bad_device_is_a_clear_error(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--device", "gpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device: invalid choice: 'gpu'" in err
    assert "'auto', 'cpu', 'cuda'" in err

    monkeypatch.setenv("NEUROSERVE_DEVICE", "gpu")
    assert serve_main(["--model-repository", str(ROOT)]) == 2
    err = capsys.readouterr().err
    assert "device: Input should be 'auto', 'cpu' or 'cuda'" in err


def test_device_and_providers_that_contradict_are_refused():
    with pytest.raises(ValidationError, match=r"--device cpu never uses a GPU.*CUDAExecution"):
        Settings(device="cpu", providers="CUDAExecutionProvider,CPUExecutionProvider")
    with pytest.raises(ValidationError, match=r"--device cuda runs on a GPU provider.*add CUDA"):
        Settings(device="cuda", providers="CPUExecutionProvider")
    assert Settings(device="cuda", providers=f"{TENSORRT},{CUDA}").providers == [TENSORRT, CUDA]
    assert Settings(device="cpu").providers == []


def test_plan_joins_device_and_providers_by_one_rule(monkeypatch):
    def loads(provider: str) -> tuple[bool, str]:
        return True, ""

    monkeypatch.setattr(devices, "_provider_library_loads", loads)
    plan = devices.plan_providers
    assert plan("cpu").asked == (CPU,) and plan("cpu").required == ()
    assert plan("auto").asked == (CUDA, CPU) and plan("auto").required == ()
    assert plan("cuda").asked == (CUDA, CPU) and plan("cuda").required == (CUDA,)
    trt = plan("cuda", [TENSORRT, CUDA])
    assert trt.asked == (TENSORRT, CUDA, CPU) and trt.required == (TENSORRT, CUDA)

    monkeypatch.setattr(devices, "_provider_library_loads", lambda p: (p == CPU, "libgone.so.1"))
    auto = plan("auto", [TENSORRT, CUDA])
    assert auto.asked == (CPU,)
    assert any("libgone.so.1" in note for note in auto.notes)
    with pytest.raises(DeviceUnavailableError, match=r"TensorrtExecutionProvider.*libgone\.so\.1"):
        plan("cuda", [TENSORRT, CUDA])


def test_worker_gpus_are_dealt_round_robin(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    settings = Settings(workers=4, worker_gpus="0,1")
    assert settings.worker_gpus == [0, 1]
    assert [_pin_gpu(settings, i) for i in range(4)] == ["0", "1", "0", "1"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert _pin_gpu(Settings(workers=2), 1) == "-"
    with pytest.raises(ValidationError, match="GPU indices are 0 or more"):
        Settings(worker_gpus="-1")


# ------------------------------------------------------------------ strict cuda on a CPU host
@without_cuda
@pytest.mark.parametrize("how", ["flag", "env"])
def test_strict_cuda_exits_with_one_line_on_a_host_without_cuda(repo, tmp_path, how):
    """``neuroserve serve --device cuda`` (or NEUROSERVE_DEVICE=cuda) with no usable CUDA: exit
    1 well within 30 s, one line naming the library the loader could not find and the majors
    ONNX Runtime expects, and no model loaded, let alone served."""
    script = Path(sys.executable).with_name("neuroserve")
    command = [str(script), "serve"] if script.exists() else [sys.executable, "-m", "serving"]
    command += ["--model-repository", str(repo), "--grpc-port", "0", "--http-port", "-1"]
    command += ["--metrics-port", "-1"]
    env = {**os.environ, "NEUROSERVE_HOME": str(tmp_path)}
    if how == "flag":
        command += ["--device", "cuda"]
    else:
        env["NEUROSERVE_DEVICE"] = "cuda"
    started = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=30, env=env, check=False
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert elapsed < 30
    reason = [line for line in result.stderr.splitlines() if line.startswith("neuroserve serve:")]
    assert len(reason) == 1, result.stderr
    missing_library = CUDA_WHY.split(":", 1)[0]
    cuda, cudnn = devices.expected_gpu_versions()
    assert missing_library in reason[0]
    assert f"expects CUDA {cuda}.x and cuDNN {cudnn}.x" in reason[0]
    assert "model_loaded" not in result.stderr + result.stdout
    assert "server_ready" not in result.stderr + result.stdout


@pytest.fixture
def hidden_cuda(monkeypatch) -> None:
    """Our library check says CUDA loads; ONNX Runtime then tries it for real and, unable to,
    builds the session on the CPU: the quiet fallback strict mode exists to catch."""
    monkeypatch.setattr(devices, "_provider_library_loads", lambda provider: (True, ""))


@without_cuda
def test_a_session_hiding_its_cpu_fallback_is_refused(models, hidden_cuda):
    with pytest.raises(DeviceUnavailableError) as refused:
        OnnxModel(models["classifier"], device="cuda")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("device cuda: CUDAExecutionProvider cannot run here: ")
    assert CUDA_WHY.split(":", 1)[0] in message
    # auto takes the CPU session, and says why
    model = OnnxModel(models["classifier"], device="auto")
    assert model.providers == [CPU] and model.device == "cpu"
    assert "CUDAExecutionProvider requested but the session fell back" in model.notes


@without_cuda
def test_hidden_fallback_at_start_up_never_becomes_ready(repo, hidden_cuda, caplog):
    """In the server: the version is not loaded, start-up fails with the reason, health and
    ServerReady stay NOT_SERVING, inference is refused, and no batch ran on any provider."""

    async def scenario() -> None:
        server = create_server(make_settings(repo, device="cuda", http_port=-1, metrics_port=-1))
        try:
            with pytest.raises(DeviceUnavailableError, match="CUDAExecutionProvider"):
                await server.start()
            async with grpc.aio.insecure_channel(server.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                check = await health.Check(health_pb2.HealthCheckRequest(service=""))
                assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
                model = pb.ModelReadyRequest(name="classifier")
                assert not (await stub.ModelReady(model)).ready
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ModelInfer(
                        infer_request("classifier", {"input": np.ones((1, 4), np.float32)})
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            states = {(name, state) for name, _v, state, _r in server.repository.index()}
            assert states == {("classifier", "UNAVAILABLE"), ("cnn", "UNAVAILABLE")}
            assert all("DeviceUnavailableError" in r for *_x, r in server.repository.index())
            samples = [
                s
                for metric in server.metrics.registry.collect()
                if metric.name == "neuroserve_batch_size"
                for s in metric.samples
            ]
            assert samples == []
        finally:
            await server.stop(0)

    with caplog.at_level(logging.INFO, logger="serving"):
        asyncio.run(scenario())
    assert not _load_lines(caplog, "classifier") and not _load_lines(caplog, "cnn")
    assert any("event=device_unavailable" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ auto and cpu
@without_cuda
def test_auto_falls_back_to_the_cpu_and_says_so_in_one_line(repo, caplog):
    with caplog.at_level(logging.INFO, logger="serving"):
        thread = ServerThread(make_settings(repo, model_names=["classifier"])).start()
    try:
        lines = _load_lines(caplog, "classifier")
        assert len(lines) == 1, lines
        assert " device=cpu provider=cpu " in lines[0]
        assert "CUDAExecutionProvider unusable" in lines[0]
        assert CUDA_WHY.split(":", 1)[0] in lines[0]
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(infer_request("classifier", {"input": np.ones((3, 4), np.float32)}))
            assert _instance_kind(stub, "classifier") == mc.ModelInstanceGroup.KIND_CPU
        assert thread.server is not None
        registry = thread.server.metrics.registry
        labels = {"model": "classifier", "provider": "cpu"}
        assert registry.get_sample_value("neuroserve_batch_size_sum", labels) == 3
        assert registry.get_sample_value("neuroserve_compute_latency_seconds_count", labels) == 1
    finally:
        thread.stop()


def test_device_cpu_never_asks_for_a_gpu_library(repo, models, monkeypatch):
    def forbidden(provider: str) -> tuple[bool, str]:
        assert provider not in GPU_PROVIDERS, f"--device cpu looked for {provider}"
        return True, ""

    monkeypatch.setattr(devices, "_provider_library_loads", forbidden)
    monkeypatch.setattr(devices, "library_error", forbidden)
    monkeypatch.setattr(runtime, "library_error", forbidden)
    model = OnnxModel(models["cnn"], device="cpu")
    assert model.providers == [CPU] and model.binder is None and model.notes == ""
    thread = ServerThread(make_settings(repo, device="cpu")).start()
    try:
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            x = np.zeros((2, 1, 28, 28), np.float32)
            stub.ModelInfer(infer_request("cnn", {"input": x}))
            assert _instance_kind(stub, "cnn") == mc.ModelInstanceGroup.KIND_CPU
        assert thread.server is not None
        registry = thread.server.metrics.registry
        labels = {"model": "cnn", "provider": "cpu"}
        assert registry.get_sample_value("neuroserve_batch_size_sum", labels) == 2
    finally:
        thread.stop()


def test_the_provider_label_is_bound_at_load_and_rebound_on_change():
    metrics = ServerMetrics()
    metrics.observe_batch("m", 4, 0.001)  # before any load: labelled as unknown
    metrics.bind_provider("m", "cuda")
    metrics.observe_batch("m", 2, 0.001)
    metrics.bind_provider("m", "cuda")  # the same provider again keeps the bound children
    metrics.observe_batch("m", 3, 0.001)
    metrics.bind_provider("m", "cpu")
    metrics.observe_batch("m", 1, 0.001)
    value = metrics.registry.get_sample_value
    assert value("neuroserve_batch_size_sum", {"model": "m", "provider": "unknown"}) == 4
    assert value("neuroserve_batch_size_sum", {"model": "m", "provider": "cuda"}) == 5
    assert value("neuroserve_batch_size_sum", {"model": "m", "provider": "cpu"}) == 1


# ------------------------------------------------------------------ IO binding, on the CPU
def test_io_binding_reuses_its_buffers_per_batch_size(models):
    model = OnnxModel(models["classifier"], io_binding=True)
    plain = OnnxModel(models["classifier"])
    assert model.binder is not None and model.binder.device == "cpu" and model.binder.reuse
    rng = np.random.default_rng(3)
    x1, x2, x5 = (rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 3, 5))
    first = model.run({"input": x1})["output"]
    addresses = model.binder.buffer_addresses()
    second = model.run({"input": x2})["output"]
    assert model.binder.buffer_addresses() == addresses, "batch 3 got new buffers"
    model.run({"input": x5})
    after = model.binder.buffer_addresses()
    assert set(after) == {((3, 4),), ((5, 4),)}
    assert after[((3, 4),)] == addresses[((3, 4),)]
    assert after[((5, 4),)]["output"] != addresses[((3, 4),)]["output"]
    # equal to the plain run, and an answer already handed out is not overwritten by the next
    np.testing.assert_array_equal(first, plain.run({"input": x1})["output"])
    np.testing.assert_array_equal(second, plain.run({"input": x2})["output"])
    # the caller's arrays are copied in, never bound (the next call must not write into them)
    assert all(a != x1.ctypes.data for a in addresses[((3, 4),)].values())


def test_io_binding_with_two_inputs_and_an_output_subset(models):
    model = OnnxModel(models["two"], io_binding=True)
    a, b = np.full((4, 2), 3, np.float32), np.full((4, 2), 2, np.float32)
    assert set(model.run({"a": a, "b": b}, ["product"])) == {"product"}
    out = model.run({"a": a, "b": b})
    np.testing.assert_array_equal(out["sum"], a + b)
    np.testing.assert_array_equal(out["product"], a * b)
    assert list(model.binder.buffer_addresses()) == [((4, 2), (4, 2))]  # type: ignore[union-attr]


def test_warm_up_forms_every_batch_size_before_the_version_is_ready(models):
    """With IO binding (a GPU's path; forced here on the CPU) the load warms every batch size
    up to max_batch_size, so none of them meets an unseen shape on the request path."""

    async def scenario() -> None:
        served = OnnxRuntimeModel(
            "classifier", "1", models["classifier"], io_binding=True, max_batch_size=6
        )
        await served.load()
        binder = served.model.binder
        assert binder is not None
        warmed = binder.buffer_addresses()
        assert set(warmed) == {((n, 4),) for n in range(1, 7)}
        await served.predict({"input": np.ones((4, 4), np.float32)})
        assert binder.buffer_addresses() == warmed
        await served.unload()

    asyncio.run(scenario())


def test_gpu_memory_report_says_how_or_why_not():
    mib, how = devices.process_gpu_memory_mib()
    if mib is None:
        assert how and how not in {"nvml", "nvidia-smi"}
    else:
        assert mib >= 0 and how in {"nvml", "nvidia-smi"}


# ------------------------------------------------------------------ on a GPU
@pytest.fixture(scope="module")
def cuda(models) -> None:
    """Skip unless a session really runs on CUDA here (libraries, driver and a GPU)."""
    try:
        OnnxModel(models["classifier"], device="cuda")
    except DeviceUnavailableError as exc:
        pytest.skip(f"no usable CUDA provider: {exc}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["classifier", "two", "cnn"])
def test_cuda_outputs_match_the_cpu_within_1e4(models, cuda, name):
    on_gpu = OnnxModel(models[name], device="cuda")
    on_cpu = OnnxModel(models[name], device="cpu")
    assert on_gpu.providers[0] == CUDA and on_gpu.device == "cuda"
    assert on_gpu.binder is not None and on_gpu.binder.device == "cuda"
    rng = np.random.default_rng(7)
    for batch in (1, 7, 32):
        feeds = {
            spec.name: rng.normal(size=(batch, *spec.shape[1:])).astype(np.float32)
            for spec in on_cpu.inputs
        }
        gpu, cpu = on_gpu.run(feeds), on_cpu.run(feeds)
        for key in cpu:
            np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_io_binding_reuses_buffers_on_cuda(models, cuda):
    model = OnnxModel(models["cnn"], device="cuda")
    binder = model.binder
    assert binder is not None and binder.device == "cuda"
    x = np.random.default_rng(1).normal(size=(4, 1, 28, 28)).astype(np.float32)
    first = model.run({"input": x})["output"]
    addresses = binder.buffer_addresses()
    second = model.run({"input": x * 2})["output"]
    assert binder.buffer_addresses() == addresses
    bound = next(iter(binder._bound.values()))
    assert {v.device_name() for v in [*bound.inputs.values(), *bound.outputs.values()]} == {"cuda"}
    reference = OnnxModel(models["cnn"], device="cpu")
    np.testing.assert_allclose(first, reference.run({"input": x})["output"], atol=1e-4)
    np.testing.assert_allclose(second, reference.run({"input": x * 2})["output"], atol=1e-4)


@pytest.mark.gpu
def test_cuda_graphs_replay_each_batch_size_correctly(models, cuda):
    model = OnnxModel(models["classifier"], device="cuda", gpu=GpuOptions(cuda_graph=True))
    reference = OnnxModel(models["classifier"], device="cpu")
    rng = np.random.default_rng(5)
    for _round in range(4):  # the first runs of a graph id capture it, the later ones replay
        for batch in (1, 4, 8):
            x = rng.normal(size=(batch, 4)).astype(np.float32)
            np.testing.assert_allclose(
                model.run({"input": x})["output"],
                reference.run({"input": x})["output"],
                rtol=1e-4,
                atol=1e-4,
            )


@pytest.mark.gpu
def test_served_on_cuda_the_label_says_so_and_nothing_runs_on_the_cpu(repo, cuda, caplog):
    with caplog.at_level(logging.INFO, logger="serving"):
        thread = ServerThread(make_settings(repo, device="cuda")).start()
    try:
        line = _load_lines(caplog, "cnn")[0]
        assert " device=cuda provider=cuda " in line and "gpu_memory=" in line
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            x = np.zeros((1, 1, 28, 28), np.float32)
            for _ in range(20):
                stub.ModelInfer(infer_request("cnn", {"input": x}))
            assert _instance_kind(stub, "cnn") == mc.ModelInstanceGroup.KIND_GPU
        assert thread.server is not None
        value = thread.server.metrics.registry.get_sample_value
        assert value("neuroserve_batch_size_sum", {"model": "cnn", "provider": "cuda"}) == 20
        assert value("neuroserve_batch_size_sum", {"model": "cnn", "provider": "cpu"}) is None
    finally:
        thread.stop()


def _gpu_memory() -> float:
    mib, how = devices.process_gpu_memory_mib()
    if mib is None:
        pytest.skip(f"GPU memory of this process cannot be read: {how}")
    return mib


@pytest.fixture
def wide_repo(tmp_path: Path) -> Iterator[Path]:
    onnx_models.save(_wide(1), tmp_path / "wide" / "1" / "model.onnx")
    yield tmp_path


@pytest.mark.gpu
def test_twenty_reloads_keep_gpu_memory_flat(wide_repo, cuda):
    thread = ServerThread(make_settings(wide_repo, device="cuda", max_batch_size=4)).start()
    try:
        samples: list[float] = []
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            x = np.ones((2, 2048), np.float32)
            for version in range(2, 22):
                path = wide_repo / "wide" / str(version) / "model.onnx"
                onnx_models.save(_wide(version), path)
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="wide"))
                stub.ModelInfer(infer_request("wide", {"input": x}))
                time.sleep(0.2)  # the replaced version retires once its requests are done
                samples.append(_gpu_memory())
        assert thread.server is not None
        assert thread.server.repository.get("wide").version == "21"
        settled, last = samples[4], max(samples[-5:])
        # one leaked session would hold its 16 MiB weight at least: 15 of them, 240 MiB
        assert last - settled < 64, f"GPU memory per reload (MiB): {samples}"
    finally:
        thread.stop()


@pytest.mark.gpu
def test_tensorrt_engines_are_cached_across_restarts(models, cuda, tmp_path):
    why = devices.library_error(TENSORRT)
    if why:
        pytest.skip(f"TensorRT's libraries do not load: {why}")
    options = GpuOptions(tensorrt_cache_dir=tmp_path / "trt")
    first = OnnxModel(models["classifier"], device="cuda", providers=[TENSORRT], gpu=options)
    assert first.providers[0] == TENSORRT
    first.warmup(4)
    engines = {p: p.stat().st_mtime_ns for p in (tmp_path / "trt").rglob("*") if p.is_file()}
    assert any(re.search(r"engine", p.name) for p in engines), sorted(engines)
    again = OnnxModel(models["classifier"], device="cuda", providers=[TENSORRT], gpu=options)
    again.warmup(4)
    after = {p: p.stat().st_mtime_ns for p in engines}
    assert after == engines, "a restart rebuilt the engines"
