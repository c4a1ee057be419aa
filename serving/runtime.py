"""Model runtimes: the async base the server talks to, and ONNX Runtime as its implementation.

``OnnxModel`` is the plain synchronous wrapper around one ``onnxruntime.InferenceSession``: it
reads input/output names, datatypes and shapes from the graph and ``metadata_props``, chooses
execution providers (by ``serving.devices``' plan), checks which ones the session really uses,
and runs feeds. pipelines/ reuses it for batch scoring, so its surface (``inputs``,
``outputs``, ``metadata``, ``providers``, ``run``) is a contract.

``ModelRuntime`` is the async seam (load / predict / unload, after MLServer's ``MLModel``);
``OnnxRuntimeModel`` implements it on ``OnnxModel`` and runs sessions on a worker thread so the
event loop keeps serving while ONNX Runtime computes (it releases the GIL in ``Run``).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.datatypes import FROM_ONNX, NUMPY_OF
from serving.devices import (
    CPU,
    GPU_PROVIDERS,
    DeviceUnavailableError,
    GpuOptions,
    ProviderPlan,
    device_error,
    library_error,
    plan_providers,
    process_gpu_memory_mib,
    provider_entries,
    provider_label,
)
from serving.logs import log_event
from serving.settings import Device

#: Inline threshold (ns) when the process may use one core only (see ``OnnxRuntimeModel``).
SINGLE_CORE_INLINE_NS = 3_000_000

#: Batch shapes whose IO-binding buffers one session keeps. The server's shapes are bounded by
#: ``max_batch_size`` already; this only stops a caller of ``OnnxModel`` that sends every batch
#: size under the sun (pipelines/ scoring odd-sized files) from growing device memory for good.
MAX_BOUND_SHAPES = 256

#: Warm-up runs per batch size on a GPU: the first allocates and searches cuDNN's algorithms,
#: the next ones let ONNX Runtime capture the CUDA graph (when on) before traffic arrives.
GPU_WARMUP_RUNS = 3


@dataclass(frozen=True)
class TensorSpec:
    """Name, KServe datatype (``"FP32"``) and shape (``-1`` for a dynamic axis) of a tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]


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


class _Bound:
    """One input shape's IO binding: its device buffers stay bound between calls."""

    __slots__ = ("binding", "inputs", "outputs", "run_options")

    def __init__(
        self,
        binding: ort.IOBinding,
        inputs: dict[str, ort.OrtValue],
        outputs: dict[str, ort.OrtValue],
        run_options: ort.RunOptions | None,
    ) -> None:
        self.binding = binding
        self.inputs = inputs
        self.outputs = outputs
        self.run_options = run_options


class IoBinder:
    """IO binding with device buffers reused per input shape; outputs copied to the host once.

    The first call of a shape allocates its inputs on ``device`` and lets ONNX Runtime allocate
    its outputs there; later calls of that shape copy the new inputs into the same buffers
    (``update_inplace``), run, and copy the outputs to the host in one step. Those fixed
    addresses are what a CUDA graph needs (each shape gets its own ``gpu_graph_id``).
    Parametrised by device so the reuse is testable on the CPU; calls are serialised (one
    shape's buffers serve one call at a time).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        device: str = "cuda",
        device_id: int = 0,
        cuda_graph: bool = False,
    ) -> None:
        self.session = session
        self.device = device
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        self.output_names = [spec.name for spec in outputs]
        self._output_index = {name: i for i, name in enumerate(self.output_names)}
        # Buffers are kept only where a shape is decided by the batch size alone: any other
        # dynamic axis (a sequence length) would make the number of shapes unbounded, and an
        # output whose shape depends on the data cannot be pre-bound at all.
        self.reuse = all(all(d >= 0 for d in spec.shape[1:]) for spec in [*inputs, *outputs])
        self._bound: dict[tuple[tuple[str, tuple[int, ...], str], ...], _Bound] = {}
        self._lock = threading.Lock()
        self._skip_graph: ort.RunOptions | None = None
        if cuda_graph:
            self._skip_graph = ort.RunOptions()
            self._skip_graph.add_run_config_entry("gpu_graph_id", "-1")

    def run(self, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run with bound buffers; ``{name: host array}`` for the ``names`` requested."""
        key = tuple((name, value.shape, value.dtype.str) for name, value in feeds.items())
        with self._lock:
            bound = self._bound.get(key)
            if bound is None:
                bound = self._first(key, feeds)
            else:
                for name, value in feeds.items():
                    bound.inputs[name].update_inplace(np.ascontiguousarray(value))
                self.session.run_with_iobinding(bound.binding, bound.run_options)
            arrays = bound.binding.copy_outputs_to_cpu()
        index = self._output_index
        return {name: arrays[index[name]] for name in names}

    def _first(
        self, key: tuple[tuple[str, tuple[int, ...], str], ...], feeds: Mapping[str, np.ndarray]
    ) -> _Bound:
        binding = self.session.io_binding()
        inputs: dict[str, ort.OrtValue] = {}
        for name, value in feeds.items():
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(
                list(value.shape), value.dtype.type, self.device, self.device_id
            )
            buffer.update_inplace(np.ascontiguousarray(value))
            binding.bind_ortvalue_input(name, buffer)
            inputs[name] = buffer
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        keep = self.reuse and len(self._bound) < MAX_BOUND_SHAPES
        run_options = self._skip_graph
        if keep and self.cuda_graph:
            run_options = ort.RunOptions()  # 0 is ORT's own; ids count from 1
            run_options.add_run_config_entry("gpu_graph_id", str(len(self._bound) + 1))
        self.session.run_with_iobinding(binding, run_options)
        outputs = dict(zip(self.output_names, binding.get_outputs(), strict=True))
        bound = _Bound(binding, inputs, outputs, run_options)
        if keep:
            for name, value in outputs.items():
                binding.bind_ortvalue_output(name, value)
            self._bound[key] = bound
        return bound

    def buffer_addresses(self) -> dict[tuple[tuple[int, ...], ...], dict[str, int]]:
        """Device addresses of every kept buffer, by the input shapes they serve (for tests and
        diagnostics: a shape's addresses never change while the session lives)."""
        with self._lock:
            return {
                tuple(shape for _name, shape, _dtype in key): {
                    name: value.data_ptr()
                    for name, value in [*bound.inputs.items(), *bound.outputs.items()]
                }
                for key, bound in self._bound.items()
            }


class OnnxModel:
    """One ONNX file in one ONNX Runtime session; synchronous and thread-safe to ``run``.

    Serves any ONNX file (any number of inputs and outputs); our metadata contract
    (docs/contracts.md) adds meaning when present but is never required. ``device`` and
    ``providers`` follow ``plan_providers``; with ``device="cuda"`` a session that does not
    really run its GPU provider raises ``DeviceUnavailableError`` instead of computing on the
    CPU. ``io_binding`` (default: on exactly when a GPU provider runs) routes calls through an
    ``IoBinder`` on the session's device.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] = (),
        device: Device = "auto",
        gpu: GpuOptions | None = None,
        io_binding: bool | None = None,
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
        gpu = gpu or GpuOptions()
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
        plan = plan_providers(device, providers)
        notes = list(plan.notes)
        self.session = self._create(options, plan, gpu, notes)
        self.providers: list[str] = list(self.session.get_providers())
        missing = [p for p in plan.required if p not in self.providers]
        if missing:
            # The libraries loaded, yet ONNX Runtime built the session without the provider (no
            # GPU visible, a driver too old for this CUDA, cuDNN failing at start): its log above
            # says why; the library check is repeated uncached in case that is the reason.
            why = library_error(missing[0]) or (
                f"the session runs {','.join(self.providers)} without it (ONNX Runtime fell "
                "back; its log above says why)"
            )
            raise DeviceUnavailableError(device_error(missing[0], why))
        for provider in plan.asked:
            if provider not in self.providers:
                notes.append(f"{provider} requested but the session fell back")
        self.inputs: list[TensorSpec] = _specs(self.session.get_inputs())
        self.outputs: list[TensorSpec] = _specs(self.session.get_outputs())
        meta = self.session.get_modelmeta()
        self.metadata: dict[str, str] = dict(meta.custom_metadata_map)
        #: ``cuda`` when a GPU provider runs this session, else ``cpu``.
        self.device = "cuda" if any(p in GPU_PROVIDERS for p in self.providers) else "cpu"
        #: The provider that runs first (``cuda``, ``tensorrt``, ``cpu``): the metrics label.
        self.provider = provider_label(self.providers)
        #: Why the session is not on the GPU, when it could have been (auto), else "".
        self.notes = "; ".join(notes)
        self.binder: IoBinder | None = None
        strings = any(spec.datatype == "BYTES" for spec in [*self.inputs, *self.outputs])
        if (self.device == "cuda" if io_binding is None else io_binding) and not strings:
            self.binder = IoBinder(
                self.session,
                self.inputs,
                self.outputs,
                device=self.device,
                device_id=gpu.device_id,
                cuda_graph=gpu.cuda_graph and self.device == "cuda",
            )
        # On the CPU, ``InferenceSession.run`` only re-checks in Python what the codecs have
        # already checked (input names) and adds a GPU-provider fallback that cannot apply;
        # its binding (the long-standing ``_sess``) does the work, skipping that overhead on
        # every call. The public method stays the path anywhere else, or if the binding moves.
        binding: Any = getattr(self.session, "_sess", None)
        cpu_only = self.providers == [CPU]
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
            io_binding=self.binder is not None,
            notes=self.notes or "-",
        )

    def _create(
        self,
        options: ort.SessionOptions,
        plan: ProviderPlan,
        gpu: GpuOptions,
        notes: list[str],
    ) -> ort.InferenceSession:
        """The session, built without ONNX Runtime's silent retry on the CPU.

        ``enable_fallback=0`` makes a failure to build the GPU session (CUDA graphs asked for a
        graph with CPU nodes, say) an error here, and keeps a failing GPU call at run time from
        quietly moving the session to the CPU. The model is then built on the CPU once: if that
        fails too, the model is at fault and its error is raised; if not, ``cuda`` refuses
        (``DeviceUnavailableError``) and ``auto`` keeps the CPU session and says why.
        """
        path = str(self.path)
        try:
            return ort.InferenceSession(
                path,
                sess_options=options,
                providers=provider_entries(plan.asked, gpu),
                enable_fallback=0,
            )
        except (RuntimeError, ValueError) as exc:
            if plan.asked == (CPU,):
                raise
            reason = str(exc).replace("\n", " ")[:300]
            session = ort.InferenceSession(
                path, sess_options=options, providers=[CPU], enable_fallback=0
            )
            if plan.required:
                raise DeviceUnavailableError(device_error(plan.required[0], reason)) from exc
            notes.append(f"GPU session failed ({reason}); on the CPU instead")
            return session

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
        if self.binder is not None:
            return self.binder.run(feeds, names)
        feeds = {k: _as_ort(v) for k, v in feeds.items()}
        return dict(zip(names, self._run(names, feeds, None), strict=True))

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

    def warmup_batch_sizes(self, max_batch_size: int) -> list[int]:
        """The batch sizes to warm before traffic: every size a request or the batcher can
        form (1 to ``max_batch_size``) when calls go through IO binding, whose buffers, cuDNN
        algorithm choices and CUDA graphs are per shape; else, and for a model without a
        batch axis, one."""
        if self.binder is None or not self.batchable:
            return [1]
        return list(range(1, max(1, max_batch_size) + 1))


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
        device: Device = "auto",
        gpu: GpuOptions | None = None,
        io_binding: bool | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        warmup: bool = True,
        max_batch_size: int = 1,
        inline_compute_us: int = 0,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._providers = list(providers)
        self._device: Device = device
        self._gpu = gpu
        self._io_binding = io_binding
        self._max_batch_size = max_batch_size
        #: GPU memory this process held after the load, and how it was read (GPU sessions).
        self.gpu_memory: tuple[float | None, str] = (None, "not on a GPU")
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

    @property
    def device(self) -> str:
        """``cuda`` when a GPU provider runs the session, else ``cpu``."""
        return self.model.device

    @property
    def provider(self) -> str:
        """The provider that runs first, short (``cuda``, ``tensorrt``, ``cpu``)."""
        return self.model.provider

    def _load_sync(self) -> OnnxModel:
        model = OnnxModel(
            self.path,
            providers=self._providers,
            device=self._device,
            gpu=self._gpu,
            io_binding=self._io_binding,
            intra_op_threads=self._intra,
            inter_op_threads=self._inter,
            name=self.name,
            version=self.version,
        )
        if self._warmup:
            # Every shape a request can bring, before readiness: on a GPU each new shape costs
            # cuDNN's algorithm search, new IO-binding buffers and a CUDA graph capture.
            runs = GPU_WARMUP_RUNS if model.device == "cuda" else 1
            for size in model.warmup_batch_sizes(self._max_batch_size):
                for _ in range(runs):
                    model.warmup(size)
            start = time.perf_counter_ns()
            model.warmup()
            self._compute_ns = float(time.perf_counter_ns() - start)
        if model.device == "cuda":
            self.gpu_memory = process_gpu_memory_mib()
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
