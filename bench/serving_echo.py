"""A bare grpc.aio server answering ModelInfer with fixed bytes: the Python gRPC floor.

No protobuf parsing, no model: requests of the benchmark's size come in, a response of our
server's size goes out. What our server adds on top of this is our overhead. The control RPCs a
client asks first (Triton's perf_analyzer: ServerLive, ModelMetadata, ModelConfig, ...) answer
with fixed bytes too, given as ``--canned METHOD=FILE``, so the same load generator drives both.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _fixed(payload: bytes) -> Handler:
    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return payload

    return answer


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True, help="serialized response bytes")
    parser.add_argument(
        "--canned",
        action="append",
        default=[],
        metavar="METHOD=FILE",
        help="answer METHOD with the serialized bytes in FILE (repeatable)",
    )
    args = parser.parse_args()
    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(_fixed(args.response.read_bytes()))
    }
    for spec in args.canned:
        method, _, file = spec.partition("=")
        handlers[method] = grpc.unary_unary_rpc_method_handler(_fixed(Path(file).read_bytes()))

    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)]
    )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("echo ready", flush=True)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
