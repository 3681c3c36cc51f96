"""A small OpenAI-compatible HTTP server over :class:`synth.backends.LocalBackend`.

Why our own: ``transformers serve`` needs ``fastapi``/``uvicorn`` (not installed
here, and it downloads nothing offline anyway), so this module serves the
embedded model with the standard library only.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming;
``messages``, ``max_tokens``/``max_completion_tokens``, ``temperature``,
``top_p``, ``seed``, ``logprobs``/``top_logprobs`` (OpenAI schema, up to 20),
``continue_final_message`` (vLLM's: continue a final assistant message, e.g.
the judge's ``Score: `` prefix)), ``POST /reset_prefix_cache`` (as in vLLM),
``GET /health``.

Batching (the local model): continuous batching in :class:`EngineBatcher` over
:class:`synth.engine.Engine`.  Request threads put jobs on a queue; one engine
thread admits every queued job into the running decode batch between two
decoding steps (up to ``max_batch`` rows; the prompts that arrived together are
prefilled in one packed forward after the KV cache of the longest common prefix
they share with recent prompts), runs one batched
forward per step for all rows, and hands each row back the step it finishes.  So
N concurrent clients share each decoding step's weight reads instead of taking
turns.  A backend without a steppable model (test fakes) gets :class:`Batcher`:
one ``complete_many`` per group of queued requests with the same parameters.

Abandoned requests are dropped.  A client that timed out (or a proxy in front
of us that saw its client go) closes its connection; the request thread polls
its socket while it waits and then marks the job cancelled.  A job is also
cancelled at its deadline: ``request_timeout_s`` or, when the client says so,
its own read timeout (the ``x-stainless-read-timeout`` header the ``openai``
client sends), whichever is sooner.  Cancelled jobs still in the queue are
never prefilled, and a cancelled row leaves the running batch at the next step.
Without this, retries of timed-out clients queue behind work nobody waits for,
and on a slow CPU the queue never drains.  ``GET /health`` counts what was
dropped, and the engine's prefill/decode tokens and seconds.

Run: ``python -m synth serve --port 8011 [--max-batch 8] [--threads 1]``.
"""
from __future__ import annotations

import json
import queue
import select
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Job:
    """One queued request: what to generate, where the answer goes, and whether anyone still waits."""

    __slots__ = ("messages", "params", "future", "cancelled", "deadline", "rec")

    def __init__(self, messages: list[dict[str, str]], params: dict[str, Any], deadline: float | None = None):
        self.messages = messages
        self.params = params
        self.future: Future = Future()
        self.cancelled = threading.Event()
        self.deadline = deadline  # time.monotonic() after which nobody waits for the answer

    def gone(self) -> bool:
        return self.cancelled.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)


class _Queued:
    """What both batchers share: a job queue that their ``_loop`` thread drains."""

    q: queue.Queue

    def submit_job(self, job: Job) -> Job:
        self.q.put(job)
        return job

    def submit(self, messages: list[dict[str, str]], params: dict[str, Any], deadline: float | None = None) -> Future:
        return self.submit_job(Job(messages, params, deadline)).future


class Batcher(_Queued):
    def __init__(self, backend, max_batch: int = 8, batch_wait_s: float = 0.02):
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_s
        self.q: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches run (for benchmarks / tests)
        # one dict per batch run: size, max_tokens, steps (tokens generated; None for a backend
        # without a model we can stop), cancelled (rows whose client left during generation)
        self.runs: list[dict[str, Any]] = []
        # dropped_queued: cancelled before generation; cancelled_running: rows ended mid-generation;
        # completed: answers handed to a waiting request
        self.stats = {"dropped_queued": 0, "cancelled_running": 0, "completed": 0}
        self._t = threading.Thread(target=self._loop, daemon=True, name="batcher")
        self._t.start()


    def _drop(self, job: Job) -> None:
        self.stats["dropped_queued"] += 1
        job.future.cancel()

    def _take(self, job: Job, items: list[Job]) -> None:
        if job.gone():
            self._drop(job)
        else:
            items.append(job)

    def _loop(self) -> None:
        while True:
            items: list[Job] = []
            self._take(self.q.get(), items)
            if not items:
                continue
            deadline = time.monotonic() + self.batch_wait_s
            while len(items) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    self._take(self.q.get(timeout=left) if left > 0 else self.q.get_nowait(), items)
                except queue.Empty:
                    break
            groups: dict[str, list[Job]] = {}
            for it in items:
                key = json.dumps({k: v for k, v in it.params.items() if k != "seed"}, sort_keys=True)
                groups.setdefault(key, []).append(it)
            for grp in groups.values():
                live = []
                for j in grp:  # a group may have waited behind another one
                    if j.gone():
                        self._drop(j)
                    else:
                        live.append(j)
                if not live:
                    continue
                self.batches.append(len(live))
                run: dict[str, Any] = {"size": len(live), "max_tokens": live[0].params.get("max_tokens"),
                                       "steps": None, "cancelled": 0}
                self.runs.append(run)
                try:
                    outs = self.backend.complete_many([j.messages for j in live], live[0].params)
                except Exception as e:  # every waiting request gets the error
                    for j in live:
                        if j.future.set_running_or_notify_cancel():
                            j.future.set_exception(e)
                    continue
                for j, o in zip(live, outs):
                    if j.gone():
                        self.stats["cancelled_running"] += 1
                        run["cancelled"] += 1
                        j.future.cancel()
                    elif j.future.set_running_or_notify_cancel():
                        self.stats["completed"] += 1
                        j.future.set_result(o)


    def health(self) -> dict[str, Any]:
        return {"batches": len(self.batches), "queued": self.q.qsize(), **self.stats}


_RESET = object()


class EngineBatcher(_Queued):
    """Continuous batching over a backend's :class:`synth.engine.Engine` (the local model).

    One thread owns the engine.  Between two decoding steps it admits every queued request (up to
    ``max_batch`` rows; prefilled together, packed after the prefix they share in the prefix cache)
    into the running batch, and a row leaves the batch the step it finishes — or the step after its client left (``Job.gone``).
    ``runs`` holds one record per request generated: batch size when admitted, max_tokens, steps
    (tokens generated), prefilled (prompt tokens computed, the rest came from the prefix cache), cancelled.
    The engine is this thread's alone: do not call the same backend's ``complete*`` meanwhile.
    """

    def __init__(self, backend, max_batch: int = 8, batch_wait_s: float = 0.02, max_runs: int = 10000):
        self.backend = backend
        self.engine = backend.engine
        self.engine.max_batch = self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_s
        self.q: queue.Queue = queue.Queue()
        self.runs: list[dict[str, Any]] = []
        self.max_runs = max_runs
        self.stats = {"dropped_queued": 0, "cancelled_running": 0, "completed": 0}
        self._t = threading.Thread(target=self._loop, daemon=True, name="engine")
        self._t.start()


    def health(self) -> dict[str, Any]:
        st = self.engine.stats
        return {"queued": self.q.qsize(), "running": len(self.engine.rows), "requests": len(self.runs),
                "decode_steps": st["steps"], "row_steps": st["row_steps"],
                "mean_decode_batch": round(st["row_steps"] / st["steps"], 3) if st["steps"] else None,
                "prefill_tokens": st["prefill_tokens"], "prefix_reused_tokens": st["prefix_reused_tokens"],
                "prefill_s": round(st["prefill_s"], 3), "decode_s": round(st["decode_s"], 3), **self.stats}

    def reset_prefix_cache(self) -> None:
        """Empty the engine's prefix cache before any request queued after this call (vLLM's endpoint of the same name)."""
        self.q.put(_RESET)

    def _admit_rows(self, rows: list) -> None:
        """Prefill rows that arrived together (packed when they share a cached prefix) into the batch."""
        try:
            self.engine.admit_many(rows)
        except Exception as e:
            for row in rows:  # the rows already in the batch go on; the others get the error
                if all(r is not row for r in self.engine.rows) and row.tag.future.set_running_or_notify_cancel():
                    row.tag.future.set_exception(e)
        for row in rows:
            row.tag.rec["prefilled"] = row.prefilled

    def _row(self, job: Job):
        """The engine row for ``job`` (None: a reset, a job nobody waits for, or a bad request, answered here)."""
        from .engine import Row

        if job is _RESET:
            self.engine.clear_prefix_cache()
            return None
        if job.gone():
            self.stats["dropped_queued"] += 1
            job.future.cancel()
            return None
        p = job.params
        be = self.backend
        try:
            ids = be.prompt_ids(job.messages, continue_final=bool(p.get("continue_final_message")))
            row = Row(ids, int(p.get("max_tokens", 64)), float(p.get("temperature", 0.0)), float(p.get("top_p", 1.0)),
                      int(p.get("seed", 0)), logprobs=bool(p.get("logprobs")), top_logprobs=int(p.get("top_logprobs") or 0),
                      gone=job.gone, tag=job)
            rec = {"size": len(self.engine.rows) + 1, "max_tokens": row.max_new, "steps": 0, "prefilled": 0,
                   "cancelled": 0}
            self.runs.append(rec)
            if len(self.runs) > self.max_runs:
                del self.runs[: len(self.runs) - self.max_runs]
            job.rec = rec  # type: ignore[attr-defined]
            return row
        except Exception as e:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(e)
            return None

    def _finish(self, row) -> None:
        job: Job = row.tag
        rec = job.rec  # type: ignore[attr-defined]
        rec["steps"] = len(row.out)
        if row.finish == "cancelled" or job.gone():
            self.stats["cancelled_running"] += 1
            rec["cancelled"] = 1
            job.future.cancel()
            return
        if job.future.set_running_or_notify_cancel():
            self.stats["completed"] += 1
            eng = self.engine
            job.future.set_result({
                "text": eng.text(row), "finish_reason": row.finish,
                "logprobs": eng.openai_logprobs(row) if row.want_logprobs else None,
                "prompt_tokens": len(row.ids), "completion_tokens": len(row.out)})

    def _loop(self) -> None:
        eng = self.engine
        while True:
            try:
                new: list = []  # rows that arrived together are prefilled together (Engine.admit_many)

                def take(job) -> None:
                    if job is _RESET and new:  # the reset applies to what is queued after it
                        self._admit_rows(new)
                        new.clear()
                    row = self._row(job)
                    if row is not None:
                        new.append(row)

                if not eng.rows:  # idle: wait for work, then briefly for company
                    take(self.q.get())
                    deadline = time.monotonic() + self.batch_wait_s
                    while len(eng.rows) + len(new) < self.max_batch:
                        left = deadline - time.monotonic()
                        try:
                            take(self.q.get(timeout=left) if left > 0 else self.q.get_nowait())
                        except queue.Empty:
                            break
                while len(eng.rows) + len(new) < self.max_batch:  # continuous batching: join the running batch
                    try:
                        take(self.q.get_nowait())
                    except queue.Empty:
                        break
                if new:
                    for row in new:
                        row.tag.rec["size"] = len(eng.rows) + 1 + new.index(row)
                    self._admit_rows(new)
                for row in eng.step():
                    self._finish(row)
            except Exception as e:  # a failed step fails its rows, the server goes on
                for row in list(eng.rows):
                    if row.tag.future.set_running_or_notify_cancel():
                        row.tag.future.set_exception(e)
                eng.rows, eng.kv, eng.mask = [], None, None


def _client_gone(sock: socket.socket) -> bool:
    """True when the peer closed (EOF or reset) its side of ``sock``; never blocks."""
    try:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""  # data would be a pipelined request: still there
    except (OSError, ValueError):
        return True


def _params(body: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = {"max_tokens": int(body.get("max_completion_tokens") or body.get("max_tokens") or 64),
                         "temperature": float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)}
    if body.get("top_p") is not None:
        p["top_p"] = float(body["top_p"])
    if body.get("seed") is not None:
        p["seed"] = int(body["seed"])
    if body.get("logprobs"):
        p["logprobs"] = True
        k = int(body.get("top_logprobs") or 0)
        if not 0 <= k <= 20:
            raise ValueError("top_logprobs must be within 0..20")
        p["top_logprobs"] = k
    elif body.get("top_logprobs"):
        raise ValueError("top_logprobs needs logprobs: true")
    if body.get("continue_final_message"):
        if body["messages"][-1].get("role") != "assistant":
            raise ValueError("continue_final_message needs a final assistant message")
        p["continue_final_message"] = True
    return p


def _client_timeout(headers) -> float | None:
    """The client's own read timeout in seconds, when it sends one (the ``openai`` client does)."""
    v = headers.get("x-stainless-read-timeout")
    try:
        t = float(v) if v else None
    except ValueError:
        return None
    return t if t and t > 0 else None


# long: a closure defining the HTTP handler class; each of its methods is short
def make_handler(batcher: Batcher, model_id: str, request_timeout_s: float = 600.0, poll_s: float = 0.1):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet
            pass

        def _send(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client left while we answered
                self.close_connection = True

        def _error(self, code: int, msg: str) -> None:
            self._send(code, {"error": {"message": msg, "type": "invalid_request_error" if code < 500 else "server_error"}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "workbench"}]})
            elif self.path == "/health":
                self._send(200, {"ok": True, **batcher.health()})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") == "/reset_prefix_cache" and hasattr(batcher, "reset_prefix_cache"):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                batcher.reset_prefix_cache()
                self._send(200, {"ok": True})
                return
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route {self.path}")
                return
            arrived = time.monotonic()
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
            limit = request_timeout_s
            ct = _client_timeout(self.headers)
            if ct is not None:
                limit = min(limit, ct)
            job = batcher.submit_job(Job(msgs, params, deadline=arrived + limit))
            while True:
                try:
                    text = job.future.result(timeout=poll_s)
                    break
                except FutureTimeout:
                    if _client_gone(self.connection):  # nobody to answer: drop the work, close quietly
                        job.cancelled.set()
                        self.close_connection = True
                        return
                    if job.gone():  # deadline passed (the batcher may already have dropped it)
                        job.cancelled.set()
                        self._error(504, f"not answered within {limit:g} s")
                        return
                except Exception as e:  # CancelledError (deadline) or the generation's own error
                    if job.gone():
                        self._error(504, f"not answered within {limit:g} s")
                    else:
                        self._error(500, f"generation failed: {type(e).__name__}: {e}")
                    return
            res = text if isinstance(text, dict) else {"text": text}
            usage = {"prompt_tokens": res.get("prompt_tokens", 0), "completion_tokens": res.get("completion_tokens", 0)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": res["text"]},
                                      "finish_reason": res.get("finish_reason") or "stop", "logprobs": None}
            if params.get("logprobs") and res.get("logprobs") is not None:
                choice["logprobs"] = {"content": res["logprobs"]}
            self._send(200, {
                "id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or model_id, "choices": [choice], "usage": usage,
            })

    return Handler


def serve(host: str = "127.0.0.1", port: int = 8011, model: str = "embedded:smollm2-135m-instruct",
          max_batch: int = 8, batch_wait_s: float = 0.02, backend=None, ready: threading.Event | None = None,
          request_timeout_s: float = 600.0, threads: int | None = None, prefix_cache: int = 16):
    """Build and return (server, batcher); call ``server.serve_forever()`` to run it.

    ``request_timeout_s``: a request not answered by then is dropped (504).  ``threads``: torch
    intra-op threads for this process (None = torch's default).  On a small CPU shared with
    other work, 1 thread is much faster than 2 spinning OpenMP threads that get preempted.
    """
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if backend is None:
        from .backends import LocalBackend

        backend = LocalBackend(model, max_batch=max_batch)
    if hasattr(backend, "engine"):
        backend.engine.prefix_cache_size = max(0, int(prefix_cache))
    if hasattr(backend, "engine") and hasattr(backend, "prompt_ids"):
        batcher = EngineBatcher(backend, max_batch=max_batch, batch_wait_s=batch_wait_s)
    else:  # a backend without a model we can step (tests): one complete_many per batch
        batcher = Batcher(backend, max_batch=max_batch, batch_wait_s=batch_wait_s)
    srv = ThreadingHTTPServer((host, port), make_handler(batcher, model, request_timeout_s))
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
    ap.add_argument("--request-timeout", type=float, default=600.0,
                    help="seconds after which an unanswered request is dropped (default 600; a shorter client read "
                         "timeout sent by the openai client wins)")
    ap.add_argument("--prefix-cache", type=int, default=16,
                    help="prompts whose KV cache is kept for prefix reuse (default 16; 0 = off)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (default 0 = torch's default, one per core; python -m synth sets "
                         "OMP_WAIT_POLICY=PASSIVE unless it is set, so idle threads sleep instead of spinning)")
    a = ap.parse_args(argv)
    srv, _ = serve(a.host, a.port, a.model, a.max_batch, a.batch_wait, request_timeout_s=a.request_timeout,
                   threads=a.threads or None, prefix_cache=a.prefix_cache)
    print(json.dumps({"listening": f"http://{a.host}:{srv.server_address[1]}/v1", "model": a.model, "max_batch": a.max_batch,
                      "threads": a.threads or None}), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
