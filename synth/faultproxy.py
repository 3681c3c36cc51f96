"""A fault-injecting HTTP proxy for tests and benchmarks (127.0.0.1 only).

Forwards every request to ``upstream``; on a seeded ``fault_rate`` share of
requests it instead answers 429 (with ``Retry-After: 0``), answers 500, or
hangs for ``hang_s`` seconds and then drops the connection (a client-side
timeout).  Which request gets which fault is decided by ``random.Random(seed)``
in arrival order, so a run is reproducible up to thread scheduling.
``counts`` records what was done.
"""
from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    def __init__(self, upstream: str, fault_rate: float = 0.3, seed: int = 0, hang_s: float = 5.0,
                 host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream.rstrip("/")
        self.fault_rate = fault_rate
        self.hang_s = hang_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, "429": 0, "500": 0, "timeout": 0}
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
                    time.sleep(proxy.hang_s)
                    self.close_connection = True
                    return
                req = urllib.request.Request(proxy.upstream + self.path, data=data, method=method,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=600) as resp:
                        self._reply(resp.status, resp.read())
                except urllib.error.HTTPError as e:
                    self._reply(e.code, e.read())

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
