"""A real gRPC server (PyPI grpcio) whose health Check answers UNAVAILABLE on every odd call
and SERVING on every even one: a flaky backend for the gRPC retry tests.

    grpc_flaky.py PORT
"""
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

lock = threading.Lock()
calls = 0


class Flaky(health_pb2_grpc.HealthServicer):
    def Check(self, request, context):
        global calls
        with lock:
            calls += 1
            n = calls
        print(f"call {n}", flush=True)
        if n % 2 == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "odd call: try again")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
health_pb2_grpc.add_HealthServicer_to_server(Flaky(), server)
port = int(sys.argv[1])
if server.add_insecure_port(f"127.0.0.1:{port}") != port:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
server.start()
print(f"listening on 127.0.0.1:{port}", flush=True)
while True:
    time.sleep(3600)
