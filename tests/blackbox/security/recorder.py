#!/usr/bin/env python3
"""An app that records the exact bytes it receives, for the edge tests.

Run with: recorder.py PORT DIR

Listens on 127.0.0.1:PORT (HTTP/1.1 only). Every connection's bytes are appended, as they
arrive, to DIR/conn-<n>.raw, so a test can read what tandem really sent, ambiguous framing
included. Each request is answered 200 with body "ok" (keep-alive). A request head it cannot
frame (no Content-Length, not chunked, or both, or a bad chunk) is answered 400 and recorded
in DIR/ambiguous. A CONNECT is answered 200 and the connection then echoes what it receives.
"""
import os
import socket
import sys
import threading


def read_request(conn, buf, record):
    """Returns (head, rest of buffer) for one request, or None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        record(data)
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def need(conn, buf, n, record):
    while len(buf) < n:
        data = conn.recv(65536)
        if not data:
            raise EOFError
        record(data)
        buf += data
    return buf


def serve(conn, path, flag):
    buf = b""

    def record(data):
        with open(path, "ab") as f:
            f.write(data)

    try:
        while True:
            got = read_request(conn, buf, record)
            if got is None:
                return
            head, buf = got
            lines = head.split(b"\r\n")
            names = [l.split(b":", 1)[0].strip().lower() for l in lines[1:]]
            cl = [l.split(b":", 1)[1].strip() for l in lines[1:] if l.split(b":", 1)[0].strip().lower() == b"content-length"]
            te = [l.split(b":", 1)[1].strip().lower() for l in lines[1:] if l.split(b":", 1)[0].strip().lower() == b"transfer-encoding"]
            folded = any(l[:1] in (b" ", b"\t") for l in lines[1:])
            if (cl and te) or len(cl) > 1 or folded or (te and te != [b"chunked"]):
                with open(flag, "ab") as f:
                    f.write(head + b"\n--\n")
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if lines[0].startswith(b"CONNECT "):
                # A tunnel (only where tandem allows it): 200, then echo until EOF.
                conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + buf)
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    record(data)
                    conn.sendall(data)
            if te:
                while True:
                    while b"\r\n" not in buf:
                        buf = need(conn, buf, len(buf) + 1, record)
                    size_line, _, buf = buf.partition(b"\r\n")
                    size = int(size_line.split(b";")[0], 16)
                    buf = need(conn, buf, size + 2, record)
                    buf = buf[size + 2:]
                    if size == 0:
                        break
            elif cl:
                n = int(cl[0])
                buf = need(conn, buf, n, record)
                buf = buf[n:]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except (EOFError, ValueError, OSError):
        pass
    finally:
        conn.close()


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    os.makedirs(out, exist_ok=True)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    n = 0
    while True:
        conn, _ = s.accept()
        n += 1
        path = os.path.join(out, "conn-%d.raw" % n)
        t = threading.Thread(target=serve, args=(conn, path, os.path.join(out, "ambiguous")), daemon=True)
        t.start()


if __name__ == "__main__":
    main()
