"""An upstream service for the outbound tests: answers every request with its own name.

    upstream.py PORT NAME CONTROL_FILE

Behaviour is read from CONTROL_FILE on every request (absent or empty: healthy):
  ok          200 with the name as body
  fail        503
  slow SECS   200 after sleeping SECS
  stall       never answers (sleeps an hour)
Each request's traceparent (if any) is printed on stdout as `traceparent NAME VALUE`.
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


PORT, NAME, CONTROL = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def mode():
    try:
        with open(CONTROL) as f:
            return f.read().split()
    except OSError:
        return []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        tp = self.headers.get("traceparent")
        if tp:
            print(f"traceparent {NAME} {tp}", flush=True)
        m = mode()
        if m[:1] == ["fail"]:
            status, body = 503, b"failing\n"
        elif m[:1] == ["slow"]:
            time.sleep(float(m[1]))
            status, body = 200, NAME.encode()
        elif m[:1] == ["stall"]:
            time.sleep(3600)
            return
        else:
            status, body = 200, NAME.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = answer
    do_POST = answer
    do_PUT = answer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


Server(("127.0.0.1", PORT), Handler).serve_forever()
