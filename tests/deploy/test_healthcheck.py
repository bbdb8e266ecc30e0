"""deploy/healthcheck.py (the container HEALTHCHECK) against a real gRPC health service on loopback."""

import importlib.util
import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.conftest import free_port
from tests.deploy import files

SCRIPT = files.DEPLOY / "healthcheck.py"


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def test_serving_server_is_healthy(health_server):
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = subprocess.run([sys.executable, str(SCRIPT), target], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_not_serving_server_is_unhealthy(health_server):
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = subprocess.run([sys.executable, str(SCRIPT), target], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "NOT_SERVING" in result.stderr


def test_unknown_service_and_unreachable_server_are_unhealthy(health_server):
    target, _ = health_server
    check = load_healthcheck().check
    assert check(target, "edgefleet.NoSuchService", timeout=5.0) is False      # NOT_FOUND
    assert check(f"127.0.0.1:{free_port()}", timeout=2.0) is False              # nothing listens


def test_usage_error_exits_2():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr
