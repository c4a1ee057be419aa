"""A bare grpc.aio server answering ModelInfer with fixed bytes: the Python gRPC floor.

No protobuf parsing, no model: requests of the benchmark's size come in, a response of our
server's size goes out. What our server adds on top of this is our overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True, help="serialized response bytes")
    args = parser.parse_args()
    response = args.response.read_bytes()

    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
            )
        ]
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
