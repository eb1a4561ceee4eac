"""An OTLP receiver for tandem's pass-through tests, built on PyPI `oteltest`'s sinks.

Run with: python3 passthrough_sink.py {grpc|http} PORT OUT_FILE

Every request it receives is appended to OUT_FILE as one JSON line:
{"signal": "traces"|"logs"|"metrics", "headers": {...}, "request": <OTLP JSON>}.
When it listens, it writes OUT_FILE + ".ready". It binds 127.0.0.1 only (oteltest binds every
address, so its bind is narrowed here). It runs until killed.
"""
import json
import logging
import sys
import threading
import time

import grpc
from google.protobuf.json_format import MessageToDict
import oteltest.sink as sink
from oteltest.sink.handler import RequestHandler

protocol, port, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()


class JsonLinesHandler(RequestHandler):
    def _write(self, signal, request, headers):
        if isinstance(headers, dict):
            hdrs = {str(k).lower(): str(v) for k, v in headers.items()}
        else:  # a gRPC context's metadata
            hdrs = {}
        line = json.dumps({"signal": signal, "headers": hdrs, "request": MessageToDict(request)})
        with lock, open(out_path, "a") as f:
            f.write(line + "\n")

    def handle_logs(self, request, headers):
        self._write("logs", request, headers)

    def handle_metrics(self, request, headers):
        self._write("metrics", request, headers)

    def handle_trace(self, request, headers):
        self._write("traces", request, headers)


# Loopback only: wrap what oteltest binds.
_grpc_server = grpc.server


def _loopback_grpc_server(*args, **kwargs):
    server = _grpc_server(*args, **kwargs)
    add = server.add_insecure_port
    server.add_insecure_port = lambda address: add(address.replace("0.0.0.0", "127.0.0.1"))
    return server


sink.grpc.server = _loopback_grpc_server


class _LoopbackHTTPServer(sink.HTTPServer):
    def __init__(self, address, handler):
        super().__init__(("127.0.0.1", address[1]), handler)


sink.HTTPServer = _LoopbackHTTPServer

logger = logging.getLogger("passthrough_sink")
handler = JsonLinesHandler()
if protocol == "grpc":
    server = sink.GrpcSink(handler, logger, port=port)
else:
    server = sink.HttpSink(handler, logger, port=port)
server.start()
open(out_path + ".ready", "w").close()
while True:
    time.sleep(3600)
