"""A real gRPC server with the standard health service (PyPI grpcio, grpcio-health-checking),
run by tandem as its app in tests/blackbox/grpc_probe.rs.

Usage: health_server.py PORT

Listens on 127.0.0.1:PORT (plain text, HTTP/2 prior knowledge: what a gRPC probe speaks) and
answers grpc.health.v1.Health/Check. The whole server ("") and the service "tandem.Test" start
SERVING; SIGUSR1 sets both NOT_SERVING, SIGUSR2 sets them SERVING again. Any other service name
is unknown to it (grpc-status 5 NOT_FOUND). SIGTERM ends it (Python's default).
"""
import signal
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICES = ("", "tandem.Test")


def main():
    port = int(sys.argv[1])
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")

    def set_all(status, name):
        def handler(_signum, _frame):
            for service in SERVICES:
                servicer.set(service, status)
            print(f"health: {name}", flush=True)

        return handler

    set_all(health_pb2.HealthCheckResponse.SERVING, "SERVING")(None, None)
    signal.signal(signal.SIGUSR1, set_all(health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING"))
    signal.signal(signal.SIGUSR2, set_all(health_pb2.HealthCheckResponse.SERVING, "SERVING"))
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    # The main thread only waits: signal handlers run here, between sleeps.
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
