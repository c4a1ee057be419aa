"""Where a run trains, in what precision, and what it records about both.

One module decides every device rule the loop, the launcher and the pipelines follow:

* :func:`resolve`: the spec's ``device`` (``auto``, ``cpu`` or ``cuda``, see ``DEVICES``) to a
  ``torch.device``. ``auto`` is CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU
  is a :class:`DeviceError` with a one-line reason, raised before data is loaded or anything is
  recorded. The spec keeps the request, so a stored spec retrains on whatever the next machine
  has unless it insisted on ``cuda``.
* :func:`autocast`: ``--amp`` is bf16 autocast around the forward pass and loss on CUDA. bf16
  keeps float32's exponent range, so no loss scaling is needed and the weights, the validation
  and the exported ONNX stay float32. On the CPU it is off and the run records so: measured
  there, CPU bf16 autocast bought the built-in models no speed, so it would cost precision for
  nothing.
* :func:`fits_on`: training tensors that take at most ``RESIDENT_SHARE`` of the GPU's memory are
  moved there once before the first epoch (the built-in sets are a few MB), so no batch is copied
  from the host; larger ones are copied batch by batch.
* :func:`describe`: what a run really used (device, GPU name, CUDA, cuDNN, torch and ONNX Runtime
  versions), which the loop announces to its callbacks and MLflow records as tags.
"""

from __future__ import annotations

import contextlib
import os

import torch

from training.errors import DeviceError, SpecError
from training.spec import DEVICES

__all__ = [
    "AMP_DTYPE",
    "RESIDENT_SHARE",
    "amp_mode",
    "autocast",
    "backend_for",
    "check",
    "describe",
    "fits_on",
    "resolve",
]

#: The mixed-precision type on CUDA: bf16 needs no gradient scaling (its range is float32's).
AMP_DTYPE = torch.bfloat16
#: Largest share of a GPU's memory the training tensors may take to be moved there once.
RESIDENT_SHARE = 0.25


def _why_no_cuda() -> str:
    """The likeliest reason torch sees no GPU, for the one-line error."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if hidden is not None and hidden.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU"
    return (
        f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no usable GPU "
        "(no NVIDIA driver, or one too old for that CUDA)"
    )


def resolve(requested: str | None) -> torch.device:
    """The device a run with ``device=requested`` trains on (None means ``auto``).

    Raises ``DeviceError`` for ``cuda`` when torch sees no GPU, and ``SpecError`` for a value
    outside ``DEVICES``.
    """
    choice = requested or "auto"
    if choice not in DEVICES:
        raise SpecError(f"unknown device {choice!r}; expected one of: {', '.join(DEVICES)}")
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if choice == "cuda":
        raise DeviceError(
            f"--device cuda asks for a GPU, but {_why_no_cuda()}; "
            "use --device auto or --device cpu to train on the CPU"
        )
    return torch.device("cpu")


def check(requested: str | None, amp: bool = False) -> torch.device:
    """``resolve`` and ``amp_mode`` together: every ``DeviceError`` a run can meet, raised before
    it loads data or records anything. Returns the device the run will train on."""
    device = resolve(requested)
    amp_mode(device, amp)
    return device


def backend_for(requested: str | None = "auto") -> str:
    """The process-group backend for a data-parallel run on ``requested``: NCCL (one process
    per GPU) where the run trains on CUDA, gloo on CPU cores."""
    import torch.distributed as dist

    on_cuda = resolve(requested).type == "cuda"
    return "nccl" if on_cuda and dist.is_nccl_available() else "gloo"


def amp_mode(device: torch.device, amp: bool) -> str:
    """What ``--amp`` does on ``device``: ``bf16``, or ``off`` with the reason when asked for.

    Raises ``DeviceError`` for a GPU without bf16 (before Ampere), where autocast would emulate
    it slowly; such a GPU trains in float32 without ``--amp``.
    """
    if not amp:
        return "off"
    if device.type != "cuda":
        return "off (bf16 autocast is used on CUDA only)"
    if not torch.cuda.is_bf16_supported():
        raise DeviceError(
            f"--amp trains in bf16, which {torch.cuda.get_device_name(device)} does not support; "
            "leave --amp out to train in float32"
        )
    return "bf16"


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[object]:
    """The context around a training step's forward pass and loss (reusable, enter per step)."""
    if amp_mode(device, amp) == "bf16":
        return torch.autocast(device_type="cuda", dtype=AMP_DTYPE)
    return contextlib.nullcontext()


def fits_on(device: torch.device, *tensors: torch.Tensor) -> bool:
    """Whether ``tensors`` go to ``device`` once (always on the CPU, where they already are)."""
    if device.type != "cuda":
        return True
    size = sum(t.numel() * t.element_size() for t in tensors)
    return size <= RESIDENT_SHARE * torch.cuda.get_device_properties(device).total_memory


def _cudnn_version() -> str | None:
    """cuDNN's version as ``9.10.2`` (torch reports 91002), or None without cuDNN."""
    raw = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if not raw:
        return None
    major, rest = divmod(int(raw), 10000 if raw >= 10000 else 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def describe(device: torch.device, amp: bool = False) -> dict[str, str]:
    """What a run on ``device`` used, as text: only the versions that exist on this machine.

    Keys: ``device`` (``cpu``, ``cuda:0``), ``amp``, ``torch_version``, and where present
    ``onnxruntime_version``; on CUDA also ``gpu_name``, ``gpu_capability``, ``gpu_memory_gib``,
    ``gpu_count``, ``cuda_version`` (the CUDA torch was built for) and ``cudnn_version``.
    """
    info = {
        "device": str(device),
        "amp": amp_mode(device, amp),
        "torch_version": str(torch.__version__),
    }
    try:
        import onnxruntime

        info["onnxruntime_version"] = str(onnxruntime.__version__)
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=str(props.name),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=f"{props.total_memory / 2**30:.1f}",
            gpu_count=str(torch.cuda.device_count()),
        )
        if torch.version.cuda:
            info["cuda_version"] = str(torch.version.cuda)
        cudnn = _cudnn_version()
        if cudnn:
            info["cudnn_version"] = cudnn
    return info
