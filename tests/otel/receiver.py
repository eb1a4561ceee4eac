#!/usr/bin/env python3
"""An OTLP receiver for tandem's black-box tests, built on PyPI `oteltest`'s sinks.

Usage: receiver.py grpc|http PORT

oteltest decodes the requests (its gRPC servicers, its HTTP/protobuf parsing); this script only
binds them to 127.0.0.1 (oteltest's own GrpcSink/HttpSink listen on every interface) and prints
each request as one JSON line on stdout: {"signal": "traces|logs|metrics", "headers": {...},
"request": <the ExportServiceRequest as JSON>}. The first line is {"ready": PORT}.
"""
import json
import logging
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from oteltest.sink import HttpSink
from oteltest.sink.handler import RequestHandler
from oteltest.sink.private import (
    _LogsServiceServicer,
    _MetricsServiceServicer,
    _TraceServiceServicer,
)

LOCK = threading.Lock()


def emit(signal, request, headers):
    line = json.dumps(
        {
            "signal": signal,
            "headers": {str(k): str(v) for k, v in dict(headers or {}).items()},
            "request": MessageToDict(request),
        }
    )
    with LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class JsonLines(RequestHandler):
    def handle_logs(self, request, headers):
        emit("logs", request, headers)

    def handle_metrics(self, request, headers):
        emit("metrics", request, headers)

    def handle_trace(self, request, headers):
        emit("traces", request, headers)


def main():
    kind, port = sys.argv[1], int(sys.argv[2])
    handler = JsonLines()
    log = logging.getLogger("receiver")
    if kind == "grpc":
        svr = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            _TraceServiceServicer(handler.handle_trace), svr
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServiceServicer(handler.handle_metrics), svr
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
            _LogsServiceServicer(handler.handle_logs), svr
        )
        bound = svr.add_insecure_port(f"127.0.0.1:{port}")
        svr.start()
        print(json.dumps({"ready": bound}), flush=True)
        svr.wait_for_termination()
    else:
        # oteltest's HttpSink parses and dispatches; only the socket is ours.
        sink = HttpSink(handler, log, port=port)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(n)
                f = sink.handlers.get(self.path)
                if f is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                f(data, dict(self.headers.items()))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        HTTPServer.allow_reuse_address = True
        httpd = HTTPServer(("127.0.0.1", port), Handler)
        print(json.dumps({"ready": httpd.server_address[1]}), flush=True)
        httpd.serve_forever()


if __name__ == "__main__":
    main()
