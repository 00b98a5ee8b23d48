#!/usr/bin/env python3
"""Container health check: gRPC ``grpc.health.v1.Health/Check`` on the local server.

Exit status 0 when the service (default ``""``, the whole server) is SERVING,
1 otherwise. Used by the image's HEALTHCHECK; Kubernetes uses its native gRPC
probes instead. Usage: ``driftd-healthcheck [service]``; the target is
``DRIFTD_HEALTHCHECK_TARGET`` or 127.0.0.1 on the port of ``DRIFTD_HEALTH_ADDRESS``
(the plaintext health listener, needed when the gRPC port speaks TLS), else of
``DRIFTD_ADDRESS``.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    address = os.environ.get("DRIFTD_HEALTH_ADDRESS") or os.environ.get(
        "DRIFTD_ADDRESS", "127.0.0.1:50051"
    )
    target = os.environ.get("DRIFTD_HEALTHCHECK_TARGET", "127.0.0.1:" + address.rpartition(":")[2])
    service = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        with grpc.insecure_channel(target) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3.0
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name} {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
