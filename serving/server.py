"""Assemble and run the server: ``create_server(settings)`` builds, ``serve`` runs.

One process serves gRPC (grpc.aio) and KServe v2 REST (serving/http.py, uvicorn) on the same
event loop, over the same data plane, models and batcher.

Lifecycle (one log line each): the ports are bound and the server answers ServerLive at once;
models load; then ServerReady and the health service switch to SERVING. On SIGTERM/SIGINT health
goes NOT_SERVING and new requests are refused while in-flight ones, on both transports, get
``grace_period_s`` to finish; then the sessions are released and the process exits 0.

``--workers N`` starts N processes that each bind the same ports with SO_REUSEPORT and own their
sessions, sidestepping the GIL on the request path; the parent aggregates their metrics. With
``worker_gpus`` each worker sees one GPU (``CUDA_VISIBLE_DEVICES``, round-robin).

``device="cuda"`` is checked twice before the server can report ready: the GPU provider's
libraries must load (before any port is bound), and every version loaded at start-up must really
run on the GPU; otherwise start-up fails with ``DeviceUnavailableError`` (one line, exit 1) and
health never leaves NOT_SERVING. Nothing is ever served from the CPU in that mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from serving._proto import _pool
from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.auth import BearerTokenInterceptor, authorizer_of
from serving.dataplane import DataPlane
from serving.devices import DeviceUnavailableError, require_device
from serving.errors import UNDECODABLE, MalformedRequestError
from serving.logs import configure, log_event
from serving.metrics import MetricsHTTPServer, ServerMetrics, multiprocess_enabled
from serving.repository import Repository
from serving.servicer import InferenceServicer
from serving.settings import Settings
from serving.sources import DirectorySource, MlflowSource, ModelSource
from serving.status import abort

if TYPE_CHECKING:
    from serving.http import RestServer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _reflection_pool() -> object:
    """Our private descriptor pool, plus the health and reflection files reflection describes."""
    for module in (health_pb2, reflection_pb2):
        with contextlib.suppress(TypeError, ValueError):  # already added in this process
            _pool.POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return _pool.POOL


def make_source(settings: Settings) -> ModelSource:
    """A directory source when ``model_repository`` is set, else the MLflow registry."""
    if settings.model_repository is not None:
        return DirectorySource(settings.model_repository, settings.model_names)
    return MlflowSource(
        settings.tracking_uri(),
        settings.mlflow_alias,
        settings.resolved_cache_dir(),
        settings.model_names,
    )


def _decode_guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler, decoding unary requests itself so a DecodeError becomes
    INVALID_ARGUMENT (a client mistake), instead of grpc.aio's UNKNOWN plus an ERROR traceback
    in the log for every such call."""
    if handler.unary_unary is None or handler.request_deserializer is None:
        return handler
    deserialize, behavior = handler.request_deserializer, handler.unary_unary

    async def guarded(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = deserialize(raw)
        except Exception as exc:
            await abort(context, MalformedRequestError(UNDECODABLE.format(method)))
            raise AssertionError("unreachable: context.abort raises") from exc
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        guarded, request_deserializer=None, response_serializer=handler.response_serializer
    )


class DecodeGuardHandler(grpc.GenericRpcHandler):
    """Wraps a generic handler so its unary methods answer undecodable bytes with
    INVALID_ARGUMENT. Applied once per method at registration time rather than as a server
    interceptor: any interceptor makes grpc.aio await an interceptor chain and build a new
    handler on every RPC, a measurable share of a small model's request time."""

    def __init__(
        self,
        inner: grpc.GenericRpcHandler,
        overrides: dict[str, grpc.RpcMethodHandler] | None = None,
    ) -> None:
        self._inner = inner
        self._cache: dict[str, grpc.RpcMethodHandler] = dict(overrides or {})

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """The guarded handler for a method this generic handler serves, else None."""
        method = handler_call_details.method
        handler = self._cache.get(method)
        if handler is None:
            inner = self._inner.service(handler_call_details)
            if inner is None:  # unknown methods are not cached: names come from clients
                return None
            handler = self._cache[method] = _decode_guarded(inner, method)
        return handler


class _DecodeGuardRegistrar:
    """Stands in for the server in generated ``add_*_to_server`` calls, guarding handlers."""

    def __init__(
        self, server: grpc.aio.Server, overrides: dict[str, grpc.RpcMethodHandler] | None = None
    ) -> None:
        self._server = server
        self._overrides = overrides

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            [DecodeGuardHandler(h, self._overrides) for h in handlers]
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(service, handlers)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from files (mTLS when a CA is given), or None for plaintext."""
    if not settings.tls_enabled():
        if settings.tls_ca_file is not None:
            raise ValueError("tls_ca_file needs tls_cert_file and tls_key_file as well")
        return None
    key, cert = _read(settings.tls_key_file), _read(settings.tls_cert_file)
    assert key is not None and cert is not None
    ca = _read(settings.tls_ca_file)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class InferenceServer:
    """A built (not yet started) server; ``start``/``stop`` drive its lifecycle."""

    def __init__(self, settings: Settings) -> None:
        # --device cuda on a host whose GPU libraries do not load: stop before binding anything.
        require_device(settings.device, settings.providers)
        self.settings = settings
        self.metrics = ServerMetrics()
        self.repository = Repository(make_source(settings), settings, self.metrics)
        self.repository.on_change.append(
            lambda: self.metrics.set_models_loaded(self.repository.ready_count())
        )
        self.repository.on_load.append(
            lambda served: self.metrics.bind_provider(served.name, served.runtime.provider)
        )
        self.dataplane = DataPlane(settings, self.repository, self.metrics)
        # No interceptor unless auth needs one: grpc.aio runs the chain on every RPC.
        self.authorizer = authorizer_of(settings)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.authorizer.enabled:
            interceptors.append(BearerTokenInterceptor(self.authorizer))
        limit = settings.max_message_bytes
        self.grpc_server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            ],
        )
        servicer = InferenceServicer(self.dataplane, self.authorizer)
        # The inference RPCs take and return bytes (see InferenceServicer.raw_handlers).
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            servicer, _DecodeGuardRegistrar(self.grpc_server, servicer.raw_handlers())
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(
            self.health, _DecodeGuardRegistrar(self.grpc_server)
        )
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME],
            self.grpc_server,
            pool=_reflection_pool(),
        )
        address = f"{settings.host}:{settings.grpc_port}"
        credentials = server_credentials(settings)
        try:  # grpcio reports a taken port by returning 0 or, in newer releases, raising
            if credentials is None:
                self.port = self.grpc_server.add_insecure_port(address)
            else:
                self.port = self.grpc_server.add_secure_port(address, credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"could not bind gRPC port {address}: it is in use or not an address of this "
                "host; choose another with --grpc-port (0 picks a free one)"
            )
        # REST binds now too (a taken port fails here, like gRPC's), and serves from start().
        # Imported only when on, so a gRPC-only server does not need uvicorn.
        self.rest: RestServer | None = None
        if settings.http_port >= 0:
            from serving.http import RestServer

            self.rest = RestServer(self.dataplane, settings)
        self.metrics_server: MetricsHTTPServer | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        """``host:port`` gRPC clients connect to."""
        return f"{self.settings.host}:{self.port}"

    @property
    def http_port(self) -> int | None:
        """The REST port (the one bound when ``http_port`` was 0), or None with REST off."""
        return self.rest.port if self.rest is not None else None

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> None:
        """Listen, load the models, then report ready."""
        await self._set_health(False)
        await self.grpc_server.start()
        if self.rest is not None:
            await self.rest.start()
        log_event(
            "server_listening",
            address=self.address,
            http_port=self.http_port or "-",
            tls=self.settings.tls_enabled(),
            mtls=self.settings.tls_ca_file is not None,
            auth=self.settings.auth_token is not None,
            source=self.repository.source.description,
        )
        self.authorizer.log_start()
        if self.settings.metrics_port >= 0 and not multiprocess_enabled():
            self.metrics_server = MetricsHTTPServer(
                self.metrics.registry, self.settings.host, self.settings.metrics_port
            )
        if self.dataplane.capture is not None:
            self.dataplane.capture.start()
        await self.repository.start()
        if self.repository.device_refusals:
            # A version that did not get the GPU is never served; with one at start-up the
            # deployment is misconfigured, so say so and stop instead of half-serving.
            reason = self.repository.device_refusals[0]
            log_event("device_unavailable", logging.ERROR, reason=reason)
            raise DeviceUnavailableError(reason)
        if self.dataplane.capture is not None:
            self.dataplane.capture.warn_unknown_models(self.repository.models)
        self.dataplane.started = True
        await self._set_health(True)
        log_event(
            "server_ready",
            address=self.address,
            http_port=self.http_port or "-",
            models=",".join(sorted(self.repository.models)) or "-",
            ready_models=self.repository.ready_count(),
            metrics_port=self.metrics_server.port if self.metrics_server else "-",
        )

    async def stop(self, grace: float | None = None) -> None:
        """Report not-ready, let in-flight RPCs finish within ``grace``, release everything."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_period_s if grace is None else grace
        self.dataplane.shutting_down = True
        await self._set_health(False)
        log_event("server_draining", grace_s=grace)
        stopping = [self.grpc_server.stop(grace)]
        if self.rest is not None:
            stopping.append(self.rest.stop(grace))
        await asyncio.gather(*stopping)
        await self.repository.close()
        # Flushes the spans still buffered and closes the capture files, when those are on.
        await self.dataplane.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        log_event("server_stopped", address=self.address)


def create_server(settings: Settings) -> InferenceServer:
    """Build the server (bound but not started); call inside a running event loop."""
    return InferenceServer(settings)


async def serve(settings: Settings) -> None:
    """Run one server process until SIGTERM/SIGINT, then shut down gracefully."""
    server = create_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # A signal during start-up (a slow model load, an unreachable registry) must not wait
        # for start-up to finish: race the two and cancel the start.
        starting = asyncio.create_task(server.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # re-raise a start-up failure
            await stopping
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        log_event("signal_received")
    finally:
        await server.stop()


def _pin_gpu(settings: Settings, index: int) -> str:
    """Show worker ``index`` only its GPU of ``worker_gpus`` (round-robin); "-" when unset.

    Runs before any session exists: CUDA reads ``CUDA_VISIBLE_DEVICES`` when it initialises,
    and inside the worker that GPU is device 0.
    """
    if not settings.worker_gpus:
        return "-"
    gpu = str(settings.worker_gpus[index % len(settings.worker_gpus)])
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def _worker(settings: Settings, index: int) -> None:
    configure(settings.log_level)
    gpu = _pin_gpu(settings, index)
    log_event("worker_started", index=index, pid=os.getpid(), gpu=gpu)
    asyncio.run(serve(settings))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run(settings: Settings) -> int:
    """Run the server (``settings.workers`` processes); return the process exit code."""
    configure(settings.log_level)
    if settings.workers == 1:
        _pin_gpu(settings, 0)  # before anything touches CUDA
    require_device(settings.device, settings.providers)  # once, before any worker starts
    if settings.workers == 1:
        asyncio.run(serve(settings))
        return 0
    # Every worker binds the same ports, so a port left to the system (0) is picked here, once.
    port = settings.grpc_port or _free_port(settings.host)
    http_port = settings.http_port or _free_port(settings.host)
    with tempfile.TemporaryDirectory(prefix="neuroserve-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        worker_settings = settings.model_copy(update={"grpc_port": port, "http_port": http_port})
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(target=_worker, args=(worker_settings, i), name=f"neuroserve-worker-{i}")
            for i in range(settings.workers)
        ]
        for proc in procs:
            proc.start()
        metrics = (
            MetricsHTTPServer.aggregating(settings.host, settings.metrics_port)
            if settings.metrics_port >= 0
            else None
        )
        log_event(
            "workers_started",
            workers=len(procs),
            port=port,
            http_port=http_port if http_port >= 0 else "-",
        )

        def forward(signum: int, _frame: object) -> None:
            for proc in procs:
                if proc.pid is not None and proc.is_alive():
                    os.kill(proc.pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for proc in procs:
            proc.join()
        if metrics is not None:
            metrics.close()
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    codes = [proc.exitcode for proc in procs]
    log_event("workers_stopped", exit_codes=",".join(str(c) for c in codes))
    return 0 if all(c == 0 for c in codes) else 1


logging.getLogger("serving").addHandler(logging.NullHandler())
