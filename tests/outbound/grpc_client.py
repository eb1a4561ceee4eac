"""A real gRPC client (PyPI grpcio, no retry policy of its own): N health checks against
ADDR, one line per call: `ok SERVING` or `error CODE DETAILS`.

    grpc_client.py ADDR N
"""
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

addr, n = sys.argv[1], int(sys.argv[2])
with grpc.insecure_channel(addr, options=[("grpc.enable_retries", 0)]) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(n):
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            print("ok", health_pb2.HealthCheckResponse.ServingStatus.Name(r.status), flush=True)
        except grpc.RpcError as e:
            print("error", e.code().name, e.details(), flush=True)
