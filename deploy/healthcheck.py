"""Container health check: ask the server's standard gRPC health service.

    python healthcheck.py HOST:PORT [SERVICE]

Exits 0 when the server answers SERVING, 1 otherwise (not serving, unreachable, or
too slow). The empty service name asks about the server as a whole, which is what
Docker and Kubernetes probes ask too.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The probe runs every few seconds; a server that needs longer than this to answer
# a health check is as good as down for the orchestrator.
TIMEOUT_SECONDS = 3.0


def check(target: str, service: str = "", timeout: float = TIMEOUT_SECONDS) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            print(f"unhealthy: {target}: {err.code().name}: {err.details()}", file=sys.stderr)
            return False
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"unhealthy: {target}: {name}", file=sys.stderr)
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return 0 if check(argv[1], argv[2] if len(argv) == 3 else "") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
