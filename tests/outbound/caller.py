"""An app that calls an outbound service, for the outbound tests (stdlib only).

    caller.py PORT

Serves HTTP on 127.0.0.1:PORT: `GET /call` calls $OUTBOUND_URL, forwarding the request's
traceparent (as an instrumented app would), and answers with what it got.
On SIGTERM it makes $CALLS_ON_TERM calls to $OUTBOUND_URL while shutting down, printing
`shutdown call N status S` (or `shutdown call N error E`) for each, then exits 0.
"""
import os
import signal
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
URL = os.environ["OUTBOUND_URL"]


def call(headers=None):
    req = urllib.request.Request(URL, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/health":
            status, body = 200, b"ok"
        else:
            tp = self.headers.get("traceparent")
            try:
                status, body = call({"traceparent": tp} if tp else {})
            except Exception as e:  # noqa: BLE001 - the test reads it
                status, body = 502, str(e).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True


def on_term(signum, frame):
    def shut():
        n = int(os.environ.get("CALLS_ON_TERM", "0"))
        for i in range(n):
            try:
                status, _ = call()
                print(f"shutdown call {i} status {status}", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"shutdown call {i} error {e}", flush=True)
        print("shutdown done", flush=True)
        server.shutdown()

    threading.Thread(target=shut).start()


signal.signal(signal.SIGTERM, on_term)
print("caller listening", flush=True)
server.serve_forever()
sys.exit(0)
