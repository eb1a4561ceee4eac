#!/usr/bin/env python3
"""An OTLP receiver for tandem's black-box tests, built on PyPI `oteltest`'s sinks.

Usage: receiver.py grpc|http PORT [--tls CERT KEY] [--client-ca CA]

oteltest decodes the requests (its gRPC servicers, its HTTP/protobuf parsing); this script only
binds them to 127.0.0.1 (oteltest's own GrpcSink/HttpSink listen on every interface) and prints
each request as one JSON line on stdout: {"signal": "traces|logs|metrics", "headers": {...},
"request": <the ExportServiceRequest as JSON>}. The first line is {"ready": PORT}.

With --tls the listener terminates TLS with CERT/KEY (gRPC: grpcio's own TLS; HTTP: Python's
ssl module around the server socket); with --client-ca it also requires a client certificate
signed by CA (mTLS). A gzip body (Content-Encoding: gzip) is inflated before oteltest parses it
and the header stays in "headers", so a test can see the request was compressed.
"""
import gzip
import json
import logging
import ssl
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
    rest = sys.argv[3:]
    tls = client_ca = None
    while rest:
        if rest[0] == "--tls":
            tls, rest = (rest[1], rest[2]), rest[3:]
        elif rest[0] == "--client-ca":
            client_ca, rest = rest[1], rest[2:]
        else:
            sys.exit(f"unknown argument {rest[0]!r}")
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
        if tls:
            cert, key = (open(f, "rb").read() for f in tls)
            creds = grpc.ssl_server_credentials(
                [(key, cert)],
                root_certificates=open(client_ca, "rb").read() if client_ca else None,
                require_client_auth=client_ca is not None,
            )
            bound = svr.add_secure_port(f"127.0.0.1:{port}", creds)
        else:
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
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    data = gzip.decompress(data)
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
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            if client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(client_ca)
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        print(json.dumps({"ready": httpd.server_address[1]}), flush=True)
        httpd.serve_forever()


if __name__ == "__main__":
    main()
