"""Model runtimes: the async base the server talks to, and ONNX Runtime as its implementation.

``OnnxModel`` is the plain synchronous wrapper around one ``onnxruntime.InferenceSession``: it
reads input/output names, datatypes and shapes from the graph and ``metadata_props``, chooses
execution providers, checks which ones the session really uses, and runs feeds. pipelines/ reuses
it for batch scoring, so its surface (``inputs``, ``outputs``, ``metadata``, ``providers``,
``run``) is a contract.

``ModelRuntime`` is the async seam (load / predict / unload, after MLServer's ``MLModel``);
``OnnxRuntimeModel`` implements it on ``OnnxModel`` and runs sessions on a worker thread so the
event loop keeps serving while ONNX Runtime computes (it releases the GIL in ``Run``).
"""

from __future__ import annotations

import abc
import asyncio
import ctypes
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.datatypes import FROM_ONNX, NUMPY_OF
from serving.logs import log_event

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: Inline threshold (ns) when the process may use one core only (see ``OnnxRuntimeModel``).
SINGLE_CORE_INLINE_NS = 3_000_000


@dataclass(frozen=True)
class TensorSpec:
    """Name, KServe datatype (``"FP32"``) and shape (``-1`` for a dynamic axis) of a tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@functools.cache
def _provider_library_loads(provider: str) -> tuple[bool, str]:
    """Can this machine load the shared library behind a GPU provider? (cached per process)

    onnxruntime-gpu lists CUDA/TensorRT as *available* even where their libraries (CUDA, cuDNN)
    are missing; asking a session for them then prints a screen of errors and falls back.
    Loading the provider library ourselves answers the question quietly.
    """
    libname = {CUDA: "cuda", TENSORRT: "tensorrt"}.get(provider)
    if libname is None:
        return True, ""
    if provider not in ort.get_available_providers():
        return False, "not in this onnxruntime build"
    path = Path(ort.__file__).parent / "capi" / f"libonnxruntime_providers_{libname}.so"
    if not path.exists():  # Windows/macOS builds name it differently; let ORT decide there
        return True, ""
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return False, str(exc)
    return True, ""


def select_providers(requested: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Return (providers to ask ONNX Runtime for, notes on the ones left out and why).

    Empty ``requested`` means: CUDA when it can actually load, then CPU. TensorRT only when
    asked for by name (its engine builds take minutes; nobody should get that by surprise).
    CPU is always appended last as the fallback.
    """
    wanted = list(requested) if requested else [CUDA, CPU]
    chosen: list[str] = []
    notes: list[str] = []
    for provider in wanted:
        ok, why = _provider_library_loads(provider)
        if ok and provider in ort.get_available_providers():
            chosen.append(provider)
        else:
            notes.append(f"{provider} unusable ({why or 'not available'})")
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen, notes


def _dim(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else -1


def _specs(args: Sequence[Any]) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=arg.name,
            datatype=FROM_ONNX.get(arg.type, arg.type),
            shape=tuple(_dim(d) for d in (arg.shape or [])),
        )
        for arg in args
    ]


def _as_ort(array: np.ndarray) -> np.ndarray:
    """ONNX Runtime takes string tensors as ``str`` objects; decode UTF-8 ``bytes`` elements."""
    if array.dtype.kind == "S" or (
        array.dtype.kind == "O" and array.size and isinstance(array.flat[0], bytes)
    ):
        return np.vectorize(
            lambda b: b.decode("utf-8") if isinstance(b, bytes) else b, otypes=[object]
        )(array)
    return array


class OnnxModel:
    """One ONNX file in one ONNX Runtime session; synchronous and thread-safe to ``run``.

    Serves any ONNX file (any number of inputs and outputs); our metadata contract
    (docs/contracts.md) adds meaning when present but is never required.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] = (),
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        name: str | None = None,
        version: str = "",
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".onnx" or not self.path.is_file():
            raise ValueError(f"{self.path} is not an .onnx file; only ONNX models are loaded")
        self.name = name or self.path.stem
        self.version = version
        options = ort.SessionOptions()
        threads = intra_op_threads or max(1, os.cpu_count() or 1)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = max(1, inter_op_threads)
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL
            if inter_op_threads > 1
            else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning intra-op threads burn the cores the gRPC event loop needs between calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        asked, notes = select_providers(providers)
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=asked)
        self.providers: list[str] = list(self.session.get_providers())
        for provider in asked:
            if provider not in self.providers:
                notes.append(f"{provider} requested but the session fell back")
        self.inputs: list[TensorSpec] = _specs(self.session.get_inputs())
        self.outputs: list[TensorSpec] = _specs(self.session.get_outputs())
        meta = self.session.get_modelmeta()
        self.metadata: dict[str, str] = dict(meta.custom_metadata_map)
        self._use_io_binding = CUDA in self.providers or TENSORRT in self.providers
        # On the CPU, ``InferenceSession.run`` only re-checks in Python what the codecs have
        # already checked (input names) and adds a GPU-provider fallback that cannot apply;
        # its binding (the long-standing ``_sess``) does the work, skipping that overhead on
        # every call. The public method stays the path anywhere else, or if the binding moves.
        binding: Any = getattr(self.session, "_sess", None)
        cpu_only = self.providers == ["CPUExecutionProvider"]
        self._run: Callable[..., list[Any]] = (
            binding.run if cpu_only and hasattr(binding, "run") else self.session.run
        )
        log_event(
            "session_created",
            model=self.name,
            version=version,
            file=self.path,
            providers=",".join(self.providers),
            intra_op_threads=threads,
            inter_op_threads=options.inter_op_num_threads,
            io_binding=self._use_io_binding,
            notes="; ".join(notes) or "-",
        )

    @functools.cached_property
    def input_names(self) -> list[str]:
        """Input tensor names in graph order."""
        return [spec.name for spec in self.inputs]

    @functools.cached_property
    def output_names(self) -> list[str]:
        """Output tensor names in graph order (built once: ``run`` needs them on every call)."""
        return [spec.name for spec in self.outputs]

    @property
    def batchable(self) -> bool:
        """True when every input and output has a dynamic leading (batch) axis."""
        return all(spec.shape and spec.shape[0] == -1 for spec in self.inputs + self.outputs)

    def run(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the session; return ``{output name: array}`` for the requested (default: all)."""
        names = output_names or self.output_names
        feeds = {k: _as_ort(v) for k, v in feeds.items()}
        if self._use_io_binding:
            return self._run_bound(feeds, names)
        return dict(zip(names, self._run(names, feeds, None), strict=True))

    def _run_bound(
        self, feeds: Mapping[str, np.ndarray], names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """GPU path: bind inputs once, let outputs live on the device, copy back once."""
        binding = self.session.io_binding()
        for key, value in feeds.items():
            binding.bind_cpu_input(key, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))

    def dummy_feeds(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        """Zero inputs of the right dtypes and shapes (dynamic axes: batch_size, then 1)."""
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = [
                batch_size if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(spec.shape)
            ]
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=NUMPY_OF.get(spec.datatype, np.float32))
        return feeds

    def warmup(self, batch_size: int = 1) -> None:
        """Run one dummy batch so lazy initialisation happens before real traffic."""
        self.run(self.dummy_feeds(batch_size))


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _timed_run(
    model: OnnxModel, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None
) -> tuple[dict[str, np.ndarray], int]:
    """``model.run`` and how long it took (ns), measured on the thread that ran it."""
    start = time.perf_counter_ns()
    result = model.run(feeds, output_names)
    return result, time.perf_counter_ns() - start


class ModelRuntime(abc.ABC):
    """The async seam between the server and an inference engine (load / predict / unload)."""

    name: str
    version: str

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """Input tensors."""

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]:
        """Output tensors."""

    @property
    @abc.abstractmethod
    def metadata(self) -> dict[str, str]:
        """Free-form model metadata (ONNX ``metadata_props``)."""

    @property
    @abc.abstractmethod
    def batchable(self) -> bool:
        """True when axis 0 of every tensor is a batch axis the batcher may merge on."""

    @property
    def computes_inline(self) -> bool:
        """True when the next ``predict`` runs on the event loop thread (blocking it)."""
        return False

    def run_inline(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], int]:
        """Run on this thread now: outputs and session time (ns); only while computes_inline."""
        raise NotImplementedError(f"{type(self).__name__} does not compute inline")

    @abc.abstractmethod
    async def load(self) -> None:
        """Load (and warm up) the model; raise on failure."""

    @abc.abstractmethod
    async def predict(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one (possibly merged) batch."""

    @abc.abstractmethod
    async def unload(self) -> None:
        """Release the engine's resources."""


class OnnxRuntimeModel(ModelRuntime):
    """ONNX Runtime behind the async seam: one session, one compute thread per loaded version.

    One thread per session keeps a version's calls serial: ONNX Runtime already spreads one call
    over ``intra_op_threads`` cores, and concurrent calls would only fight over them.
    """

    def __init__(
        self,
        name: str,
        version: str,
        path: Path,
        *,
        providers: Sequence[str] = (),
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        warmup: bool = True,
        inline_compute_us: int = 0,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._providers = list(providers)
        self._intra = intra_op_threads
        self._inter = inter_op_threads
        self._warmup = warmup
        self._model: OnnxModel | None = None
        # On a single usable core the compute thread cannot overlap the event loop: the
        # hand-off is pure overhead (plus waits for the GIL), and a call on the thread would
        # hold the core for a scheduler time slice (a few ms) anyway. Calls up to that run inline.
        self._inline_ns = inline_compute_us * 1000
        if inline_compute_us > 0 and usable_cores() == 1:
            self._inline_ns = max(self._inline_ns, SINGLE_CORE_INLINE_NS)
        self._compute_ns = float("inf")  # moving average of session-call time
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{name}-{version}")

    @property
    def model(self) -> OnnxModel:
        """The loaded session wrapper (raises if ``load`` has not completed)."""
        if self._model is None:
            raise RuntimeError(f"model {self.name!r} version {self.version} is not loaded")
        return self._model

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.model.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.model.outputs

    @property
    def metadata(self) -> dict[str, str]:
        return self.model.metadata

    @property
    def batchable(self) -> bool:
        return self.model.batchable

    @property
    def computes_inline(self) -> bool:
        return self._compute_ns < self._inline_ns

    @property
    def providers(self) -> list[str]:
        """Execution providers the session really uses."""
        return self.model.providers

    def _load_sync(self) -> OnnxModel:
        model = OnnxModel(
            self.path,
            providers=self._providers,
            intra_op_threads=self._intra,
            inter_op_threads=self._inter,
            name=self.name,
            version=self.version,
        )
        if self._warmup:
            model.warmup()
            start = time.perf_counter_ns()
            model.warmup()
            self._compute_ns = float(time.perf_counter_ns() - start)
        return model

    async def load(self) -> None:
        """Create and warm the session on the compute thread, off the event loop."""
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._executor, self._load_sync)

    async def predict(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the session on the compute thread, or inline when calls are known to be tiny.

        Handing a call to a thread and back costs Python overhead of its own; for models whose
        calls take less than ``inline_compute_us`` that hop costs more than it saves, so they run
        on the event loop thread (blocking it only that briefly). With one usable core calls up
        to ``SINGLE_CORE_INLINE_NS`` run inline (the thread could not run alongside the loop
        anyway). With ``fast_paths`` off the threshold is 0: every call takes the thread.
        """
        if self._compute_ns < self._inline_ns:
            return self.run_inline(feeds, output_names)[0]
        loop = asyncio.get_running_loop()
        result, elapsed = await loop.run_in_executor(
            self._executor, _timed_run, self.model, feeds, output_names
        )
        self._observe(elapsed)
        return result

    def run_inline(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], int]:
        """Run the session on this thread now; the outputs and the session time (ns)."""
        result, elapsed = _timed_run(self.model, feeds, output_names)
        self._observe(elapsed)
        return result, elapsed

    def _observe(self, elapsed: int) -> None:
        # The session call alone, timed where it runs: timing the await instead would add the
        # hand-off and any wait for the GIL, so one slow batch would keep a tiny model on the
        # thread (and paying for the hop) for good.
        self._compute_ns = (
            float(elapsed)
            if self._compute_ns == float("inf")
            else 0.8 * self._compute_ns + 0.2 * elapsed
        )

    async def unload(self) -> None:
        """Drop the session once queued calls are done."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))
        self._model = None
