"""Fixtures: tiny ONNX model repositories and REAL grpc.aio servers on free loopback ports.

Each server runs on its own event loop in a background thread, so tests can use the synchronous
stubs and clients (ours and Triton's) exactly as applications do, and drive async code with
``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.server import InferenceServer, create_server
from serving.settings import Settings
from tests.serving import onnx_models

T = TypeVar("T")


class ServerThread:
    """An InferenceServer on its own event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.server: InferenceServer | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="test-server")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def boot() -> None:
            self.server = create_server(self.settings)
            await self.server.start()

        try:
            self.loop.run_until_complete(boot())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self._thread.start()
        self._started.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    def stop(self, grace: float = 0) -> None:
        if self.server is not None:
            self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def make_settings(repo: Path, **overrides: Any) -> Settings:
    """Settings for a test server: free ports, no polling, quick batching, fast shutdown."""
    values: dict[str, Any] = {
        "model_repository": repo,
        "grpc_port": 0,
        "http_port": 0,
        "metrics_port": 0,
        "poll_interval_s": 0,
        "max_batch_size": 8,
        "max_queue_delay_us": 2000,
        "grace_period_s": 2,
        "intra_op_threads": 1,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory repository holding every test model as version 1."""
    return onnx_models.write_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session", params=[True, False], ids=["fast-paths", "plain-path"])
def server(model_repo: Path, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """The shared in-process server (directory source, batching on), once with the request
    path's shortcuts and once without: every test using it checks a shortcut against the
    plain path it must agree with."""
    thread = ServerThread(
        make_settings(model_repo, max_message_bytes=8 * 1024 * 1024, fast_paths=request.param)
    ).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    limit = 64 * 1024 * 1024
    ch = grpc.insecure_channel(
        server.address,
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ],
    )
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    """A raw protobuf stub on the shared server."""
    return pb_grpc.GRPCInferenceServiceStub(channel)
