"""An upstream service for the outbound tests: answers every request with its own name.

    upstream.py PORT NAME CONTROL_FILE [CERT KEY CLIENT_CA]

With CERT, KEY and CLIENT_CA it serves HTTPS and requires a client certificate that chains to
CLIENT_CA (mTLS).

Behaviour is read from CONTROL_FILE on every request (absent or empty: healthy):
  ok          200 with the name as body
  fail        503
  slow SECS   200 after sleeping SECS
  stall       never answers (sleeps an hour)
Each request's traceparent (if any) is printed on stdout as `traceparent NAME VALUE`.
"""
import ssl
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


server = Server(("127.0.0.1", PORT), Handler)
if len(sys.argv) > 4:
    cert, key, client_ca = sys.argv[4:7]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
