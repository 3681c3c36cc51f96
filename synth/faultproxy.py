"""A fault-injecting HTTP proxy for tests and benchmarks (127.0.0.1 only).

Forwards every request to ``upstream``; on a seeded ``fault_rate`` share of
requests it instead answers 429 (with ``Retry-After: 0``), answers 500, or
hangs for ``hang_s`` seconds (or until the client gives up) and then drops
the connection (a client-side timeout).  Which request gets which fault is
decided by ``random.Random(seed)`` in arrival order, so a run is reproducible
up to thread scheduling.  ``counts`` records what was done.

Like a real reverse proxy, it forwards the client's headers and, when the
client hangs up before the upstream answered (its timeout fired), it closes
the upstream connection too, so the server can drop the abandoned request
(``counts["abandoned"]``).
"""
from __future__ import annotations

import http.client
import json
import random
import select
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


_HOP_BY_HOP = {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


def _peer_closed(sock: socket.socket, wait_s: float) -> bool:
    """Wait up to ``wait_s`` for ``sock`` to become readable; True if the peer closed it (EOF/reset)."""
    try:
        r, _, _ = select.select([sock], [], [], max(0.0, wait_s))
        if r and sock.recv(1, socket.MSG_PEEK) == b"":
            return True
        if r:  # readable but not closed (a pipelined request): do not spin on it
            time.sleep(max(0.0, min(wait_s, 0.05)))
        return False
    except (OSError, ValueError):
        return True


class FaultProxy:
    def __init__(self, upstream: str, fault_rate: float = 0.3, seed: int = 0, hang_s: float = 5.0,
                 host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream.rstrip("/")
        self.fault_rate = fault_rate
        self.hang_s = hang_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, "429": 0, "500": 0, "timeout": 0, "abandoned": 0}
        up = urllib.parse.urlsplit(self.upstream)
        self._up_host, self._up_port = up.hostname or "127.0.0.1", up.port or 80
        self._up_prefix = up.path.rstrip("/")
        proxy = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, code: int, body: bytes, extra: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str):
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else None
                with proxy.lock:
                    r = proxy.rng.random()
                    kind = proxy.rng.choice(("429", "500", "timeout")) if r < proxy.fault_rate else "forward"
                    proxy.counts["forwarded" if kind == "forward" else kind] += 1
                if kind == "429":
                    self._reply(429, json.dumps({"error": {"message": "rate limited (injected)"}}).encode(), {"Retry-After": "0"})
                    return
                if kind == "500":
                    self._reply(500, json.dumps({"error": {"message": "server error (injected)"}}).encode())
                    return
                if kind == "timeout":
                    end = time.monotonic() + proxy.hang_s
                    while time.monotonic() < end and not _peer_closed(self.connection, min(0.2, end - time.monotonic())):
                        pass
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn = http.client.HTTPConnection(proxy._up_host, proxy._up_port, timeout=600)
                try:
                    conn.request(method, proxy._up_prefix + self.path, body=data, headers=headers)
                    while True:  # wait for the upstream's answer; give up with the client
                        r, _, _ = select.select([conn.sock, self.connection], [], [], 1.0)
                        if conn.sock in r:
                            break
                        if self.connection in r and _peer_closed(self.connection, 0.05):
                            with proxy.lock:
                                proxy.counts["abandoned"] += 1
                            self.close_connection = True
                            return
                    resp = conn.getresponse()
                    body = resp.read()
                finally:
                    conn.close()  # on abandon: the upstream sees EOF and drops the request
                try:
                    self._reply(resp.status, body)
                except OSError:
                    self.close_connection = True

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer((host, port), H)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._t = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FaultProxy":
        self._t.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
