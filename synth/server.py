"""A small OpenAI-compatible HTTP server over :class:`synth.backends.LocalBackend`.

Why our own: ``transformers serve`` needs ``fastapi``/``uvicorn`` (not installed
here, and it downloads nothing offline anyway), so this module serves the
embedded model with the standard library only.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming;
``messages``, ``max_tokens``/``max_completion_tokens``, ``temperature``,
``top_p``, ``seed``), ``GET /health``.

Batching: request threads put work on a queue; one worker takes the first
request, waits up to ``batch_wait_s`` for more (up to ``max_batch``), groups
them by sampling parameters and runs each group as ONE left-padded
``generate`` call.  So N concurrent clients cost about one forward pass per
token instead of N — that is what ``--concurrency`` buys against this server.

Run: ``python -m synth serve --port 8011 [--max-batch 8]``.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Batcher:
    def __init__(self, backend, max_batch: int = 8, batch_wait_s: float = 0.02):
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_s
        self.q: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches run (for benchmarks / tests)
        self._t = threading.Thread(target=self._loop, daemon=True, name="batcher")
        self._t.start()

    def submit(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Future:
        f: Future = Future()
        self.q.put((messages, params, f))
        return f

    def _loop(self) -> None:
        while True:
            first = self.q.get()
            items = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(items) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    items.append(self.q.get(timeout=max(0.0, left)) if left > 0 else self.q.get_nowait())
                except queue.Empty:
                    break
            groups: dict[str, list] = {}
            for it in items:
                key = json.dumps({k: v for k, v in it[1].items() if k != "seed"}, sort_keys=True)
                groups.setdefault(key, []).append(it)
            for grp in groups.values():
                self.batches.append(len(grp))
                try:
                    outs = self.backend.complete_many([g[0] for g in grp], grp[0][1])
                    for g, o in zip(grp, outs):
                        g[2].set_result(o)
                except Exception as e:  # every waiting request gets the error
                    for g in grp:
                        g[2].set_exception(e)


def _params(body: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = {"max_tokens": int(body.get("max_completion_tokens") or body.get("max_tokens") or 64),
                         "temperature": float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)}
    if body.get("top_p") is not None:
        p["top_p"] = float(body["top_p"])
    if body.get("seed") is not None:
        p["seed"] = int(body["seed"])
    return p


def make_handler(batcher: Batcher, model_id: str, request_timeout_s: float = 600.0):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet
            pass

        def _send(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, msg: str) -> None:
            self._send(code, {"error": {"message": msg, "type": "invalid_request_error" if code < 500 else "server_error"}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "workbench"}]})
            elif self.path == "/health":
                self._send(200, {"ok": True, "batches": len(batcher.batches)})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route {self.path}")
                return
            try:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                msgs = body["messages"]
                if not isinstance(msgs, list) or not msgs:
                    raise ValueError("messages must be a non-empty list")
                msgs = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in msgs]
                params = _params(body)
            except (ValueError, KeyError, TypeError) as e:
                self._error(400, f"bad request: {e}")
                return
            try:
                text = batcher.submit(msgs, params).result(timeout=request_timeout_s)
            except Exception as e:
                self._error(500, f"generation failed: {type(e).__name__}: {e}")
                return
            self._send(200, {
                "id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            })

    return Handler


def serve(host: str = "127.0.0.1", port: int = 8011, model: str = "embedded:smollm2-135m-instruct",
          max_batch: int = 8, batch_wait_s: float = 0.02, backend=None, ready: threading.Event | None = None):
    """Build and return (server, batcher); call ``server.serve_forever()`` to run it."""
    if backend is None:
        from .backends import LocalBackend

        backend = LocalBackend(model, max_batch=max_batch)
    batcher = Batcher(backend, max_batch=max_batch, batch_wait_s=batch_wait_s)
    srv = ThreadingHTTPServer((host, port), make_handler(batcher, model))
    srv.daemon_threads = True
    return srv, batcher


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m synth.server", description="OpenAI-compatible server over the local model (batched).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct", help="local folder or embedded:… (default: the embedded SmolLM2)")
    ap.add_argument("--max-batch", type=int, default=8, help="most requests generated in one batch (default 8; 1 = no batching)")
    ap.add_argument("--batch-wait", type=float, default=0.02, help="seconds the batcher waits for more requests (default 0.02)")
    a = ap.parse_args(argv)
    srv, _ = serve(a.host, a.port, a.model, a.max_batch, a.batch_wait)
    print(json.dumps({"listening": f"http://{a.host}:{srv.server_address[1]}/v1", "model": a.model, "max_batch": a.max_batch}), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
