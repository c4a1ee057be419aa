"""`python -m serving.healthcheck`: exit 0 when the server's grpc.health.v1 says SERVING.

Container health checks need a probe that ships in the serving image; this one uses only grpcio
and grpcio-health-checking, which the image has anyway, instead of a separate grpc_health_probe
binary.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(url: str, service: str = "", timeout: float = 3.0) -> str:
    """Return the serving status name of ``service`` ("" = the whole server) at ``url``."""
    with grpc.insecure_channel(url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def main(argv: list[str] | None = None) -> int:
    """Print the status in one line; exit 0 only for SERVING."""
    parser = argparse.ArgumentParser(prog="python -m serving.healthcheck", description=__doc__)
    parser.add_argument("--url", default="localhost:8001", help="host:port of the gRPC server")
    parser.add_argument("--service", default="", help="health service name ('' = server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    args = parser.parse_args(argv)
    try:
        status = check(args.url, args.service, args.timeout)
    except grpc.RpcError as exc:
        print(f"{args.url}: {exc.code().name}: {exc.details()}")
        return 1
    print(f"{args.url}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
