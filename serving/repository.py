"""The model repository: which versions are served, loading, hot reload, draining, unloading.

Policy: per model, serve the newest version that loads. A new version is fetched, loaded and
warmed on its own thread (off the request path), then swapped in by replacing one reference, so a
request sees either the old or the new version, never a half-loaded one. Requests hold the version
they started on (``ServedVersion.use``); the old version is closed only once its in-flight count
reaches zero. A version that fails to load is recorded with its reason (RepositoryIndex shows it)
and not retried until its bytes change; whatever was serving keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from serving.batching import Batcher, BatchingConfig, BatchObserver
from serving.devices import TENSORRT, DeviceUnavailableError, GpuOptions
from serving.errors import (
    ModelLoadError,
    ModelNotFoundError,
    ModelUnavailableError,
    VersionNotFoundError,
)
from serving.logs import log_event
from serving.runtime import OnnxRuntimeModel, TensorSpec
from serving.settings import Settings
from serving.signature import ModelSignature
from serving.sources import Candidate, ModelSource, validate_model_name
from serving.statistics import ModelStats
from serving.tokenizer import Tokenizer

READY: Final = "READY"
LOADING: Final = "LOADING"
UNAVAILABLE: Final = "UNAVAILABLE"
UNLOADING: Final = "UNLOADING"

T = TypeVar("T")


async def _off_loop(fn: Callable[..., T], *args: object) -> T:
    """Run blocking source I/O on a *daemon* thread: a scan stuck on an unreachable registry
    must not keep the process alive after shutdown (``asyncio.to_thread`` threads are joined
    at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: object, failed: bool) -> None:
        if not future.done():
            future.set_exception(value) if failed else future.set_result(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, exc, True)
        else:
            loop.call_soon_threadsafe(settle, result, False)

    threading.Thread(target=work, daemon=True, name="repository-io").start()
    return await future


def _incompatible(old: list[TensorSpec], new: list[TensorSpec]) -> str:
    """Why a client of the ``old`` inputs could not call ``new``; empty when it can."""
    before, after = {s.name: s for s in old}, {s.name: s for s in new}
    if set(before) != set(after):
        return f"input names {sorted(before)} -> {sorted(after)}"
    for name, was in before.items():
        now = after[name]
        clash = len(was.shape) != len(now.shape) or any(
            a != b and -1 not in (a, b) for a, b in zip(was.shape, now.shape, strict=False)
        )
        if was.datatype != now.datatype or clash:
            return (
                f"input {name!r} {was.datatype}{list(was.shape)} -> {now.datatype}{list(now.shape)}"
            )
    return ""


def _gpu_memory(runtime: OnnxRuntimeModel) -> str:
    """The load line's ``gpu_memory``: MiB this process holds on the GPU, or why unknown."""
    if runtime.device != "cuda":
        return "-"
    mib, how = runtime.gpu_memory
    return f"{mib:.0f}MiB({how})" if mib is not None else how


class ServedVersion:
    """A loaded version: session, batcher, validation signature, statistics, in-flight count."""

    def __init__(
        self,
        candidate: Candidate,
        runtime: OnnxRuntimeModel,
        batcher: Batcher,
        signature: ModelSignature,
    ) -> None:
        self.candidate = candidate
        self.name = candidate.name
        self.version = candidate.version
        self.runtime = runtime
        self.batcher = batcher
        self.signature = signature
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def acquire(self) -> None:
        """Count a request as in flight on this version; pair with :meth:`release`.

        Two plain calls rather than a context manager: this runs on every request, and a
        generator-based ``with`` costs several times as much.
        """
        self.inflight += 1
        self._idle.clear()

    def release(self) -> None:
        """The request that called :meth:`acquire` is done; wake ``retire`` at zero."""
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def retire(self, reason: str) -> None:
        """Wait for in-flight requests, then stop the batcher and drop the session."""
        await self._idle.wait()
        await self.batcher.close()
        await self.runtime.unload()
        log_event("version_unloaded", model=self.name, version=self.version, reason=reason)


@dataclass
class VersionRecord:
    """State of one version as RepositoryIndex reports it."""

    state: str
    reason: str = ""


@dataclass
class ModelEntry:
    """Everything the repository tracks for one model name."""

    name: str
    current: ServedVersion | None = None
    records: dict[str, VersionRecord] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # version -> fingerprint that failed
    held_unloaded: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Repository:
    """Owns the served versions of every model from one ``ModelSource``."""

    def __init__(
        self, source: ModelSource, settings: Settings, observer: BatchObserver | None = None
    ) -> None:
        self.source = source
        self.settings = settings
        self.observer = observer
        self.models: dict[str, ModelEntry] = {}
        self.stats: dict[tuple[str, str], ModelStats] = {}
        self._poller: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.on_change: list[Callable[[], None]] = []
        #: Called with each version as it is swapped in (the metrics bind its provider label).
        self.on_load: list[Callable[[ServedVersion], None]] = []
        #: Reasons versions were refused for not running on the GPU ``device="cuda"`` demands;
        #: the server will not become ready at start-up with any (serving/server.py).
        self.device_refusals: list[str] = []
        self.gpu = GpuOptions(
            cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
            cuda_graph=settings.cuda_graph,
            tensorrt_cache_dir=(
                settings.resolved_tensorrt_cache_dir() if TENSORRT in settings.providers else None
            ),
        )
        self.batching = BatchingConfig(
            enabled=settings.dynamic_batching,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_us=settings.max_queue_delay_us,
            preferred_batch_sizes=tuple(settings.preferred_batch_sizes),
            max_queue_size=settings.max_queue_size,
            fast_paths=settings.fast_paths,
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load every model once, then poll in the background (if an interval is set)."""
        await self.poll_once()
        if self.settings.poll_interval_s > 0:
            self._poller = asyncio.create_task(self._poll_forever(), name="repository-poller")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll_once()
            except Exception as exc:  # the poller must survive any one bad scan
                log_event("repository_poll_failed", logging.ERROR, error=repr(exc)[:300])

    async def close(self) -> None:
        """Stop polling and unload every version (after their in-flight requests)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for entry in self.models.values():
            async with entry.lock:
                if entry.current is not None:
                    current, entry.current = entry.current, None
                    await current.retire("server shutdown")
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # ------------------------------------------------------------------ scanning
    async def poll_once(self) -> None:
        """Scan the source once and bring every model to its newest loadable version."""
        found = await _off_loop(self.source.scan)
        for name, candidates in found.items():
            entry = self.models.setdefault(name, ModelEntry(name))
            if entry.held_unloaded:
                continue
            await self._reconcile(entry, candidates)
        for name, entry in self.models.items():
            if name not in found and entry.current is not None and not entry.held_unloaded:
                await self._unload(entry, "removed from the repository")

    async def _reconcile(
        self, entry: ModelEntry, candidates: list[Candidate], force: bool = False
    ) -> None:
        async with entry.lock:
            for cand in candidates:
                if cand.version not in entry.records:
                    entry.records[cand.version] = VersionRecord(UNAVAILABLE, "not loaded")
            ordered = sorted(candidates, key=lambda c: int(c.version), reverse=True)
            for cand in ordered:
                current = entry.current
                if current is not None and current.candidate == cand:
                    return  # the newest loadable version is already serving
                if entry.failed.get(cand.version) == cand.fingerprint:
                    continue  # failed before with these exact bytes
                if await self._load(entry, cand, force):
                    return

    async def _load(self, entry: ModelEntry, cand: Candidate, force: bool = False) -> bool:
        """Load, warm and swap in one version; on failure record why and keep the old one.

        A version whose inputs differ from the serving version's is refused unless ``force``
        (an explicit RepositoryModelLoad): polling must not break every existing client.
        """
        entry.records[cand.version] = VersionRecord(LOADING)
        log_event("model_loading", model=cand.name, version=cand.version)
        started = time.perf_counter()
        runtime: OnnxRuntimeModel | None = None
        try:
            path = await _off_loop(self.source.fetch, cand)
            runtime = OnnxRuntimeModel(
                cand.name,
                cand.version,
                path,
                providers=self.settings.providers,
                device=self.settings.device,
                gpu=self.gpu,
                intra_op_threads=self.settings.resolved_intra_op_threads(),
                inter_op_threads=self.settings.inter_op_threads,
                warmup=self.settings.warmup,
                max_batch_size=self.settings.max_batch_size,
                # Computing on the event loop is a shortcut too: fast_paths off keeps it off.
                inline_compute_us=self.settings.inline_compute_us * self.settings.fast_paths,
            )
            await runtime.load()
            if not runtime.inputs or not runtime.outputs:
                raise ValueError("the graph declares no inputs or no outputs")
            if not force and entry.current is not None:
                problem = _incompatible(entry.current.runtime.inputs, runtime.inputs)
                if problem:
                    raise ValueError(
                        f"inputs differ from serving version {entry.current.version} "
                        f"({problem}); load it with RepositoryModelLoad to switch on purpose"
                    )
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
            if isinstance(exc, DeviceUnavailableError):
                self.device_refusals.append(f"{cand.name} version {cand.version}: {exc}")
            entry.failed[cand.version] = cand.fingerprint
            entry.records[cand.version] = VersionRecord(UNAVAILABLE, reason)
            serving_version = entry.current.version if entry.current else "none"
            log_event(
                "model_load_failed",
                logging.WARNING,
                model=cand.name,
                version=cand.version,
                still_serving=serving_version,
                reason=reason,
            )
            if runtime is not None:
                with contextlib.suppress(Exception):
                    await runtime.unload()
            return False
        stats = self.stats.setdefault(
            (cand.name, cand.version), ModelStats(cand.name, cand.version)
        )
        signature = ModelSignature(
            name=cand.name,
            inputs=runtime.inputs,
            outputs=runtime.outputs,
            metadata=runtime.metadata,
            max_batch_size=self.settings.max_batch_size if runtime.batchable else 0,
            batchable=runtime.batchable,
            tokenizer=Tokenizer.from_metadata(runtime.metadata),
        )
        batcher = Batcher(runtime, stats, self.batching, self.observer)
        served = ServedVersion(cand, runtime, batcher, signature)
        previous, entry.current = entry.current, served  # the atomic swap
        entry.failed.pop(cand.version, None)
        entry.records[cand.version] = VersionRecord(READY)
        log_event(
            "model_loaded",
            model=cand.name,
            version=cand.version,
            replaced=previous.version if previous else "none",
            device=runtime.device,
            provider=runtime.provider,
            providers=",".join(runtime.providers),
            gpu_memory=_gpu_memory(runtime),
            notes=runtime.model.notes or "-",
            batching=batcher.batching,
            seconds=f"{time.perf_counter() - started:.3f}",
        )
        for callback in self.on_load:
            callback(served)
        if previous is not None:
            if previous.version != cand.version:
                entry.records[previous.version] = VersionRecord(
                    UNAVAILABLE, f"replaced by version {cand.version}"
                )
            self._retire_later(previous, f"replaced by version {cand.version}")
        self._changed()
        return True

    def _retire_later(self, served: ServedVersion, reason: str) -> None:
        task = asyncio.create_task(served.retire(reason))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _unload(self, entry: ModelEntry, reason: str) -> None:
        current, entry.current = entry.current, None
        if current is not None:
            entry.records[current.version] = VersionRecord(UNAVAILABLE, reason)
            self._retire_later(current, reason)
            self._changed()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    # ------------------------------------------------------------------ control API
    async def load_model(self, name: str) -> None:
        """RepositoryModelLoad: rescan this model and (re)load its newest version now."""
        validate_model_name(name)
        found = await _off_loop(self.source.scan)
        if name not in found:
            raise ModelNotFoundError(name, found)
        entry = self.models.setdefault(name, ModelEntry(name))
        entry.held_unloaded = False
        entry.failed.clear()  # an explicit load retries everything
        await self._reconcile(entry, found[name], force=True)
        if not found[name]:
            raise ModelLoadError(name, "-", "no versions with a model.onnx found")
        newest = max(found[name], key=lambda c: int(c.version))
        if newest.version in entry.failed:
            serving = entry.current.version if entry.current else "none"
            reason = entry.records[newest.version].reason
            raise ModelLoadError(
                name, newest.version, f"{reason} (still serving version {serving})"
            )

    async def unload_model(self, name: str) -> None:
        """RepositoryModelUnload: stop serving the model until it is loaded again."""
        validate_model_name(name)
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFoundError(name, self.models)
        async with entry.lock:
            entry.held_unloaded = True
            await self._unload(entry, "unloaded by request")

    # ------------------------------------------------------------------ lookups
    def get(self, name: str, version: str = "") -> ServedVersion:
        """The version serving ``name`` (``version`` empty: current) or a NOT_FOUND error."""
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFoundError(name, self.models)
        current = entry.current
        if current is None:
            reasons = [r.reason for r in entry.records.values() if r.reason]
            raise ModelUnavailableError(name, reasons[-1] if reasons else "no version loaded")
        if version and version != current.version:
            raise VersionNotFoundError(name, version, [current.version])
        return current

    def ready_count(self) -> int:
        """Number of models with a ready version."""
        return sum(1 for e in self.models.values() if e.current is not None)

    def index(self) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every version the repository has seen."""
        rows: list[tuple[str, str, str, str]] = []
        for name in sorted(self.models):
            entry = self.models[name]
            for version in sorted(entry.records, key=int):
                record = entry.records[version]
                rows.append((name, version, record.state, record.reason))
        return rows
