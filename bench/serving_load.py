"""Closed-loop async load generator: C concurrent callers sending one pre-serialized request.

Runs in its own process (pinned to its own core by the benchmark). Requests and responses stay
bytes (no protobuf work on the client), spread over several channels with private subchannel pools
so ``--workers N`` servers see several TCP connections. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def run(
    target: str, request: bytes, concurrency: int, duration: float, warmup: float
) -> dict:
    channels = [
        grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        for _ in range(min(concurrency, 4))
    ]
    calls = [ch.unary_unary(METHOD) for ch in channels]
    for call in calls:  # connect every channel before measuring
        await call(request, timeout=30)
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + duration

    async def caller(i: int) -> None:
        nonlocal errors
        call = calls[i % len(calls)]
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                await call(request, timeout=30)
            except grpc.RpcError:
                errors += 1
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    for ch in channels:
        await ch.close()
    lat = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": errors,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "throughput": len(lat) / duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--request", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    result = asyncio.run(
        run(args.target, args.request.read_bytes(), args.concurrency, args.duration, args.warmup)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
