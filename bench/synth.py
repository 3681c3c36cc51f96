"""Synthesis throughput benchmark against the local OpenAI-compatible server.

Starts :mod:`synth.server` (embedded SmolLM2, batching up to ``--max-batch``)
on 127.0.0.1 in a child process, then sends the same ``--n`` chat requests
(paraphrase prompts built from BANKING77 demo texts, ``--max-tokens`` each,
greedy) through :class:`synth.backends.OpenAIBackend` and
:func:`synth.backends.run_requests`:

1. sequential (concurrency 1, no cache),
2. concurrency ``--concurrency`` (default 8, no cache),
3. a cached run into a fresh store (concurrency 8, every answer written to the
   ``synth`` cache), then the same requests again (all cache hits).

Prints JSON and writes it to ``bench/results/synth.json`` (``--out``)::

    python bench/synth.py                       # n=8, max_tokens=16, max_batch=8, torch's default threads
    python bench/synth.py --max-batch 1 --out bench/results/synth-nobatch.json
    python bench/synth.py --threads 1 --out bench/results/synth-1thread.json   # a small CPU busy with other work

Targets (issue 6): concurrency 8 >= 4x sequential *when the server can batch*;
cached rerun >= 100x faster than the first run.  CPU batching gains are bounded
by the cores available (``machine`` says how many and how busy).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("server did not come up")


def health(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "/health", timeout=5).read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="requests per measurement (default 8)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8, help="server batch limit (1 = no batching)")
    ap.add_argument("--batch-wait", type=float, default=0.1,
                    help="seconds the server's batcher waits for more requests (default 0.1; the server's own default is 0.02)")
    ap.add_argument("--threads", type=int, default=0,
                    help="server torch threads (default 0 = torch's default; on a small CPU busy with other work "
                         "1 thread can be several times faster than preempted OpenMP threads)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/synth.json"))
    a = ap.parse_args(argv)

    from curate.store import Store
    from synth.backends import OpenAIBackend, Request, RunStats, run_requests
    from synth.strategies import render

    with open(ROOT / "data/banking77_demo/banking77_demo.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)][: a.n]
    reqs = [Request(render("paraphrase", text=t), {"max_tokens": a.max_tokens, "temperature": 0.0}) for t in texts]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "synth", "serve", "--port", str(port), "--max-batch", str(a.max_batch),
                             "--threads", str(a.threads), "--batch-wait", str(a.batch_wait)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc)
        be = OpenAIBackend("smollm2", base_url=url + "/v1", timeout_s=600)
        run_requests(be, reqs[:2], concurrency=2)  # warm-up (first forward pass allocations)
        b0 = health(url)["batches"]

        t = time.perf_counter()
        seq = run_requests(be, reqs, concurrency=1)
        t_seq = time.perf_counter() - t
        b1 = health(url)["batches"]

        t = time.perf_counter()
        par = run_requests(be, reqs, concurrency=a.concurrency)
        t_par = time.perf_counter() - t
        b2 = health(url)["batches"]

        with tempfile.TemporaryDirectory() as d:
            store = Store(Path(d) / "store.sqlite")
            st1 = RunStats()
            t = time.perf_counter()
            run_requests(be, reqs, store=store, concurrency=a.concurrency, stats=st1)
            t_first = time.perf_counter() - t
            st2 = RunStats()
            t = time.perf_counter()
            cached = run_requests(be, reqs, store=store, concurrency=a.concurrency, stats=st2)
            t_cached = time.perf_counter() - t
            store.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    assert all(r.text is not None for r in seq + par + cached)
    out = {
        "n_requests": a.n, "max_tokens": a.max_tokens, "server_max_batch": a.max_batch,
        "server_threads": a.threads or "torch default", "server_batch_wait_s": a.batch_wait,
        "sequential": {"seconds": round(t_seq, 3), "req_per_s": round(a.n / t_seq, 3), "server_batches": b1 - b0},
        f"concurrency_{a.concurrency}": {"seconds": round(t_par, 3), "req_per_s": round(a.n / t_par, 3),
                                         "server_batches": b2 - b1, "mean_batch": round(a.n / max(1, b2 - b1), 2)},
        "speedup_concurrent_vs_sequential": round(t_seq / t_par, 2),
        "cache": {"first_run_s": round(t_first, 3), "rerun_s": round(t_cached, 5), "rerun_cache_hits": st2.cache_hits,
                  "rerun_calls": st2.calls, "speedup": round(t_first / t_cached, 1)},
        "targets": {"concurrency_ge_4x": t_seq / t_par >= 4, "cache_ge_100x": t_first / t_cached >= 100},
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
        "server": "synth.server (stdlib http + batcher over transformers generate, CPU, fp32)",
    }
    print(json.dumps(out, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
