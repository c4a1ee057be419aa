"""Devices: which execution providers a session asks ONNX Runtime for, and proof it got them.

ONNX Runtime's best-known trap is a session that quietly runs on the CPU when CUDA or cuDNN
cannot load. This module holds the one rule joining ``--device`` and ``--providers``
(:func:`plan_providers`), the quiet library checks that name what is missing and the CUDA and
cuDNN majors this build expects, each GPU provider's options, and the GPU memory a process holds.
``serving.runtime`` builds sessions from a plan and refuses one that does not really run it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, get_args

import onnxruntime as ort

from serving.settings import CudnnConvAlgoSearch, Device

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
#: Providers that run on an NVIDIA GPU, in ONNX Runtime's order of preference.
GPU_PROVIDERS: Final = (TENSORRT, CUDA)
#: The shared library behind each GPU provider (``libonnxruntime_providers_<name>.so``).
_PROVIDER_LIBRARY: Final = {CUDA: "cuda", TENSORRT: "tensorrt"}


class DeviceUnavailableError(RuntimeError):
    """``device="cuda"`` was asked for and a GPU provider is not what the session runs on.

    Raised instead of serving from the CPU; the message is one line naming the provider, what
    failed (the dynamic loader's error when a library is missing) and the CUDA and cuDNN majors
    this onnxruntime build expects.
    """


@dataclass(frozen=True)
class GpuOptions:
    """How sessions on a GPU are configured (ignored by CPU sessions); from ``Settings``."""

    device_id: int = 0
    cudnn_conv_algo_search: CudnnConvAlgoSearch = "EXHAUSTIVE"
    cuda_graph: bool = False
    tensorrt_cache_dir: Path | None = None


@functools.cache
def expected_gpu_versions() -> tuple[str, str]:
    """The CUDA and cuDNN major versions this onnxruntime build expects (``"?"`` if unsaid).

    CUDA's comes from the build information the wheel records (``onnxruntime.cuda_version``,
    e.g. ``"13.0"``, from ``capi/build_and_package_info.py``); onnxruntime 1.31 records no cuDNN
    version, so cuDNN's is read from the library list ``onnxruntime.preload_dlls`` loads for this
    build (``libcudnn.so.9``), which is what its CUDA provider opens at run time.
    """
    cuda = str(getattr(ort, "cuda_version", "") or "")
    cuda_major = cuda.split(".", 1)[0] if cuda else "?"
    cudnn_major = "?"
    dll_paths = getattr(ort, "_get_nvidia_dll_paths", None)
    if callable(dll_paths):
        try:
            names = [str(parts[-1]) for parts in dll_paths(sys.platform == "win32", False, True)]
        except Exception:  # a private helper: any change in it only loses the cuDNN figure
            names = []
        for name in names:
            match = re.search(r"cudnn(?:64_|\.so\.)(\d+)", name)
            if match:
                cudnn_major = match.group(1)
                break
    return cuda_major, cudnn_major


@functools.cache
def _preload_gpu_libraries() -> None:
    """Load CUDA and cuDNN from pip's ``nvidia-*`` packages, where they are (once per process).

    Those packages put the libraries outside the dynamic loader's search path; onnxruntime's
    ``preload_dlls`` loads them from there so its providers find them. It prints what it cannot
    load to stdout; that is swallowed here, since ``library_error`` names the missing library in
    one line anyway.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
        preload(cuda=True, cudnn=True)


def library_error(provider: str) -> str:
    """Why this machine cannot load what ``provider`` needs; ``""`` when it can (not cached).

    onnxruntime-gpu lists CUDA/TensorRT as *available* even where their libraries (CUDA, cuDNN)
    are missing; a session asked for them then logs a screen of errors and runs on the CPU.
    Loading the provider library (and, for CUDA, cuDNN) ourselves answers quietly, with the
    dynamic loader's own message naming the first missing library.
    """
    libname = _PROVIDER_LIBRARY.get(provider)
    if libname is None:
        return ""
    if provider not in ort.get_available_providers():
        return "not in this onnxruntime build"
    path = Path(ort.__file__).parent / "capi" / f"libonnxruntime_providers_{libname}.so"
    if not path.exists():  # Windows/macOS builds name it differently; let ORT decide there
        return ""
    _preload_gpu_libraries()
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return str(exc)
    _cuda, cudnn = expected_gpu_versions()
    if provider == CUDA and cudnn != "?":  # opened by the provider only when a session starts
        try:
            ctypes.CDLL(f"libcudnn.so.{cudnn}")
        except OSError as exc:
            return str(exc)
    return ""


@functools.cache
def _provider_library_loads(provider: str) -> tuple[bool, str]:
    """Can this machine load what ``provider`` needs? (cached; see ``library_error``)"""
    why = library_error(provider)
    return not why, why


def device_error(provider: str, why: str) -> str:
    """The one-line reason a ``device="cuda"`` session is refused."""
    cuda, cudnn = expected_gpu_versions()
    package = getattr(ort, "package_name", "") or "onnxruntime"
    if cuda == "?":  # the CPU wheel: no CUDA version recorded, no CUDA provider inside
        needs = f"this {package} {ort.__version__} is not a CUDA build (install onnxruntime-gpu"
    else:
        needs = (
            f"this {package} {ort.__version__} expects CUDA {cuda}.x and cuDNN {cudnn}.x "
            "(install them"
        )
    return (
        f"device cuda: {provider} cannot run here: {why}; {needs}, or serve with --device auto "
        "or --device cpu)"
    )


def check_device_providers(device: str, requested: Sequence[str]) -> None:
    """Raise ``ValueError`` when ``device`` and ``requested`` providers contradict each other.

    Loads nothing: Settings calls it while validating flags (see ``plan_providers``).
    """
    choices = get_args(Device)
    if device not in choices:
        raise ValueError(f"device must be one of {', '.join(choices)}; got {device!r}")
    gpu = [p for p in requested if p in GPU_PROVIDERS]
    if device == "cpu" and gpu:
        raise ValueError(
            f"--device cpu never uses a GPU, but --providers names {', '.join(gpu)}; drop "
            "them, or use --device auto or cuda"
        )
    if device == "cuda" and requested and not gpu:
        raise ValueError(
            f"--device cuda runs on a GPU provider, but --providers names only "
            f"{', '.join(requested)}; add {CUDA} (or {TENSORRT}), or leave --providers empty"
        )


@dataclass(frozen=True)
class ProviderPlan:
    """What a session asks ONNX Runtime for, and which GPU providers it must really get."""

    asked: tuple[str, ...]  # in order of preference; CPU last
    required: tuple[str, ...]  # device "cuda": each must be among the session's providers
    notes: tuple[str, ...]  # providers left out, and why


def plan_providers(device: Device = "auto", requested: Sequence[str] = ()) -> ProviderPlan:
    """The one rule joining ``device`` and ``providers``: ``device`` decides whether a GPU is
    used; ``providers`` only chooses and orders providers within that decision.

    * ``cpu``: only CPU providers are asked for (``CPUExecutionProvider`` unless ``requested``
      names others); no GPU library is ever loaded, and naming a GPU provider is an error.
    * ``cuda``: ``requested`` empty means CUDA; otherwise it must name CUDA and/or TensorRT, in
      the order wanted. Every GPU provider asked for is *required*: if its libraries do not
      load, this raises ``DeviceUnavailableError`` at once, and ``OnnxModel`` checks the
      session really runs it after creation (ONNX Runtime falls back to the CPU quietly).
    * ``auto``: ``requested`` empty means CUDA when its libraries load, else the CPU; otherwise
      the providers named, less those whose libraries do not load (each noted).

    ``CPUExecutionProvider`` is always appended last: ONNX Runtime runs the nodes a GPU provider
    has no kernel for there (shape arithmetic, say), which is partitioning, not a fallback.
    TensorRT is never chosen unless named: its engine builds take minutes.
    """
    check_device_providers(device, requested)
    wanted = list(requested) or ([CPU] if device == "cpu" else [CUDA, CPU])
    required = tuple(p for p in wanted if p in GPU_PROVIDERS) if device == "cuda" else ()
    asked: list[str] = []
    notes: list[str] = []
    available = ort.get_available_providers()
    for provider in wanted:
        ok, why = _provider_library_loads(provider)
        if ok and provider in available:
            asked.append(provider)
        elif provider in required:
            raise DeviceUnavailableError(device_error(provider, why or "not available"))
        else:
            notes.append(f"{provider} unusable ({why or 'not available'})")
    if CPU not in asked:
        asked.append(CPU)
    return ProviderPlan(tuple(asked), required, tuple(notes))


def select_providers(
    requested: Sequence[str] = (), device: Device = "auto"
) -> tuple[list[str], list[str]]:
    """Return (providers to ask ONNX Runtime for, notes on the ones left out and why).

    ``plan_providers`` without the requirement, for callers that only want the list.
    """
    plan = plan_providers(device, requested)
    return list(plan.asked), list(plan.notes)


def require_device(device: Device, requested: Sequence[str] = ()) -> None:
    """Raise ``DeviceUnavailableError`` now if ``device`` cannot be had on this machine.

    The server calls it before loading anything, so ``--device cuda`` on a host without CUDA
    stops in well under a second with the reason, instead of after every model's fetch.
    """
    plan_providers(device, requested)


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda``: how metrics labels and MLflow keys name a provider."""
    return provider.removesuffix("ExecutionProvider").lower()


def provider_label(providers: Sequence[str]) -> str:
    """The short name of the provider a session runs first (``cuda``, ``tensorrt``, ``cpu``):
    the ``provider`` label of the batch metrics."""
    return short_name(providers[0] if providers else CPU)


def provider_entries(
    asked: Sequence[str], gpu: GpuOptions
) -> list[str | tuple[str, dict[str, str]]]:
    """``asked`` with each GPU provider's options attached (boolean options as "1"/"0")."""
    entries: list[str | tuple[str, dict[str, str]]] = []
    graph = "1" if gpu.cuda_graph else "0"
    for provider in asked:
        if provider == CUDA:
            entries.append(
                (
                    CUDA,
                    {
                        "device_id": str(gpu.device_id),
                        "cudnn_conv_algo_search": gpu.cudnn_conv_algo_search,
                        "enable_cuda_graph": graph,
                    },
                )
            )
        elif provider == TENSORRT:
            options = {"device_id": str(gpu.device_id), "trt_cuda_graph_enable": graph}
            if gpu.tensorrt_cache_dir is not None:
                gpu.tensorrt_cache_dir.mkdir(parents=True, exist_ok=True)
                cache = str(gpu.tensorrt_cache_dir)
                options |= {
                    "trt_engine_cache_enable": "1",
                    "trt_engine_cache_path": cache,
                    "trt_timing_cache_enable": "1",
                    "trt_timing_cache_path": cache,
                }
            entries.append((TENSORRT, options))
        else:
            entries.append(provider)
    return entries


def process_gpu_memory_mib(pid: int | None = None) -> tuple[float | None, str]:
    """GPU memory this process holds, in MiB, and how it was read (or why it could not be).

    NVML through ``pynvml`` (the ``nvidia-ml-py`` package) when importable, else
    ``nvidia-smi``; either lists compute processes by pid. In a container without the host's
    pid namespace NVML reports host pids, so the process is not found: then it says so.
    """
    pid = os.getpid() if pid is None else pid
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                used = 0
                found = False
                for index in range(pynvml.nvmlDeviceGetCount()):
                    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                        if proc.pid == pid:
                            found = True
                            used += int(proc.usedGpuMemory or 0)
            finally:
                pynvml.nvmlShutdown()
        except Exception as exc:
            return None, f"NVML failed ({type(exc).__name__}: {exc})"
        if not found:
            return None, f"pid {pid} not among NVML's compute processes (container pid namespace?)"
        return used / 2**20, "nvml"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, "unknown: neither nvidia-ml-py nor nvidia-smi is installed"
    try:
        out = subprocess.run(
            [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"nvidia-smi failed ({type(exc).__name__})"
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    mine = [float(row[1]) for row in rows if len(row) == 2 and row[0].strip() == str(pid)]
    if not mine:
        return None, f"pid {pid} not among nvidia-smi's compute apps (container pid namespace?)"
    return sum(mine), "nvidia-smi"
