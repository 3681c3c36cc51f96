"""Integration tier: a real OpenAI-compatible server (synth.server over the embedded SmolLM2,
batching) on 127.0.0.1, generation end to end through it, the same behind a fault proxy
that answers 429/500/hangs on 30% of requests (seeded), and the server dropping the work of
clients that gave up (mid-generation and while queued)."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from curate.example import Example, Source

pytestmark = [pytest.mark.integration]

SEEDS = [
    ("I still have not received my new card, when will it arrive?", "card_arrival"),
    ("How do I top up my account with a bank transfer?", "transfer_into_account"),
    ("My card payment was declined at the shop today.", "declined_card_payment"),
]


@pytest.fixture(scope="module")
def server():
    from synth.backends import LocalBackend
    from synth.server import serve

    # threads=1: on the shared 2-core box two spinning OpenMP threads that get preempted make a batch
    # 5-10x slower than one thread (measured); it only sets torch's intra-op threads for this process
    srv, batcher = serve("127.0.0.1", 0, model="smollm2", max_batch=4, batch_wait_s=0.05, threads=1,
                         backend=LocalBackend(max_batch=4))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", batcher
    srv.shutdown()
    srv.server_close()


def _seed_store(store):
    exs = [Example(messages=[{"role": "system", "content": "Classify the banking query."},
                             {"role": "user", "content": u}, {"role": "assistant", "content": lab}],
                   source=Source("ticket", "seeds.csv", f"row {i}"), split="train", label=lab)
           for i, (u, lab) in enumerate(SEEDS)]
    exs.append(Example(messages=[{"role": "system", "content": "Classify the banking query."},
                                 {"role": "user", "content": "Zebra umbrellas refund heldout-only sentence"},
                                 {"role": "assistant", "content": "refund_not_showing_up"}],
                       source=Source("ticket", "seeds.csv", "row 9"), split="heldout", label="refund_not_showing_up"))
    store.add_examples(exs)


def _cfg(**kw):
    from synth.config import SynthConfig

    base = dict(backend="openai", model="smollm2", max_new_tokens=24, judge_max_tokens=8, judge_prefill=True, concurrency=4,
                timeout_s=60, max_retries=8, backoff_base_s=0.1, backoff_cap_s=1.0)
    base.update(kw)
    return SynthConfig(**base)


def _log_lines(store, run_id):
    p = Path(store.workspace) / "reports" / "synth-log.jsonl"
    return [d for d in map(json.loads, p.read_text().splitlines()) if d["run_id"] == run_id]


def _check_accounting(store, counts, n):
    lines = _log_lines(store, counts["run_id"])
    assert len(lines) == n and sorted(d["candidate"] for d in lines) == list(range(n))
    assert counts["accepted"] + counts["rejected"] + counts["duplicate"] + counts["error"] == n
    accepted = [d for d in lines if d["decision"] == "accepted"]
    ids = [d["record_id"] for d in accepted]
    assert len(ids) == len(set(ids))
    for rid in ids:
        ex = store.get(rid)
        assert ex.status == "pending" and ex.split == "train" and ex.origin["kind"] == "synthetic"
        assert ex.source.kind == "synthetic" and "reward" in ex.signals
    assert store.count({"origin": "synthetic"}) == len(set(ids) | {r.id for r in store.query({"origin": "synthetic"})})
    return lines


def test_generate_end_to_end_against_the_real_server_and_rerun_is_cached(server, store):
    from synth.backends import OpenAIBackend
    from synth.generate import generate

    url, batcher = server
    _seed_store(store)
    be = OpenAIBackend("smollm2", base_url=url + "/v1", timeout_s=60)
    n = 3
    counts = generate(store, be, "paraphrase", n, _cfg())
    lines = _check_accounting(store, counts, n)
    judged = [d["judge"] for d in lines if d["judge"] is not None]
    assert all(j["parse"] == "logprobs" and 1 <= j["score"] <= 5 for j in judged), judged  # read from logprobs
    assert counts["error"] == 0 and counts["calls"] >= n and counts["cache_hits"] == 0
    before = store.count({"origin": "synthetic"})
    again = generate(store, be, "paraphrase", n, _cfg())
    assert again["calls"] == 0 and again["cache_hits"] == counts["calls"]
    assert store.count({"origin": "synthetic"}) == before
    assert again["accepted"] == 0 and again["duplicate"] == counts["accepted"]


def test_fault_proxy_30_percent_generation_completes_nothing_lost(server, store):
    from synth.backends import OpenAIBackend
    from synth.faultproxy import FaultProxy
    from synth.generate import generate

    url, batcher = server
    _seed_store(store)
    dropped0 = batcher.stats["dropped_queued"] + batcher.stats["cancelled_running"]
    proxy = FaultProxy(url, fault_rate=0.3, seed=26, hang_s=21).start()  # seed 26: 429, 500 and a hang early on
    try:
        be = OpenAIBackend("smollm2", base_url=proxy.url + "/v1", timeout_s=20)
        n = 3
        counts = generate(store, be, "paraphrase", n, _cfg(seed=11, timeout_s=20))
    finally:
        proxy.stop()
    injected = proxy.counts["429"] + proxy.counts["500"] + proxy.counts["timeout"]
    assert injected > 0, proxy.counts
    assert counts["error"] == 0 and counts["retries"] >= injected
    _check_accounting(store, counts, n)
    # every request the proxy gave up on (its client timed out) was dropped by the server, not finished
    t = time.monotonic()
    while batcher.q.qsize() and time.monotonic() - t < 30:
        time.sleep(0.1)
    dropped = batcher.stats["dropped_queued"] + batcher.stats["cancelled_running"] - dropped0
    assert batcher.q.qsize() == 0 and dropped >= proxy.counts["abandoned"], (batcher.stats, proxy.counts)


def _post(port: int, body: dict, timeout: float, headers: dict | None = None):
    """POST a chat completion with a raw client; (status, json) or ("timeout", None) after closing the socket."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/chat/completions", body=json.dumps(body),
                  headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    except (socket.timeout, TimeoutError):
        return "timeout", None
    finally:
        c.close()


STORY = [{"role": "user", "content": "Write a very long story about a bank, at least 2000 words."}]


def test_server_drops_work_of_clients_that_gave_up(server):
    """Continuous batching: a client that times out mid-generation stops its row at the next token; a
    request whose client deadline (x-stainless-read-timeout) passes joins the running batch and is
    stopped there (504); one whose deadline passed before the engine took it is never generated; the
    next client is served. Greedy, 200 tokens of a story: ~20 s uncancelled here."""
    from synth.backends import OpenAIBackend

    url, batcher = server
    port = int(url.rsplit(":", 1)[1])
    runs0, stats0 = len(batcher.runs), dict(batcher.stats)
    long_req = {"messages": STORY, "max_tokens": 200, "temperature": 0}
    res: dict = {}
    a = threading.Thread(target=lambda: res.update(a=_post(port, long_req, timeout=1.5)))
    a.start()
    time.sleep(0.3)  # A is generating; C joins its batch, keeps its socket open, but says it waits 1 s
    d = threading.Thread(target=lambda: res.update(
        d=_post(port, dict(long_req, max_tokens=198), timeout=30, headers={"x-stainless-read-timeout": "0.001"})))
    d.start()  # D: its deadline is gone before the engine thread can take it
    res["c"] = _post(port, dict(long_req, max_tokens=199), timeout=30, headers={"x-stainless-read-timeout": "1"})
    a.join()
    d.join()
    assert res["a"] == ("timeout", None)
    assert res["c"][0] == 504 and res["d"][0] == 504, res
    be = OpenAIBackend("smollm2", base_url=url + "/v1", timeout_s=60)
    assert be.complete([{"role": "user", "content": "Say hello."}], {"max_tokens": 8, "temperature": 0.0})
    runs = batcher.runs[runs0:]
    by = {r["max_tokens"]: r for r in runs}
    assert by[200]["cancelled"] == 1 and by[200]["steps"] < 100, runs
    assert by[199]["cancelled"] == 1 and by[199]["steps"] < 100 and by[199]["size"] >= 2, runs  # joined A's batch
    assert by[199]["prefilled"] < 5, runs  # same prompt as A: prefilled from the prefix cache
    assert 198 not in by, runs  # D was never generated
    assert batcher.stats["dropped_queued"] - stats0["dropped_queued"] == 1
    assert batcher.stats["cancelled_running"] - stats0["cancelled_running"] == 2
    assert batcher.stats["completed"] - stats0["completed"] == 1 and batcher.q.qsize() == 0


def test_server_logprobs_follow_the_openai_schema_and_the_judge_reads_them(server):
    import httpx

    from synth import reward as rw
    from synth.backends import LocalBackend, OpenAIBackend
    from synth.config import SynthConfig

    url, _ = server
    r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4, "temperature": 0,
        "logprobs": True, "top_logprobs": 5}).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"] > 0 and r["usage"]["prompt_tokens"] > 0
    for t in content:  # greedy: the chosen token is the most likely one
        assert len(t["top_logprobs"]) == 5 and t["top_logprobs"][0]["token"] == t["token"] and t["logprob"] <= 0
        assert t["top_logprobs"][0]["logprob"] == pytest.approx(t["logprob"])
    assert "".join(t["token"] for t in content).strip() == r["choices"][0]["message"]["content"]
    bad = httpx.post(url + "/v1/chat/completions", timeout=10, json={
        "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21})
    assert bad.status_code == 400 and "top_logprobs" in bad.json()["error"]["message"]
    # the judge through the server (prefix continued, score from top_logprobs) = the in-process judge
    ex = [{"role": "user", "content": "I still have not received my new card, when will it arrive?"},
          {"role": "assistant", "content": "card_arrival"}]
    params = rw.judge_params(SynthConfig(judge_max_tokens=2, judge_prefill=True))
    remote = rw.judge_result(OpenAIBackend("smollm2", base_url=url + "/v1", timeout_s=60).score(rw.judge_prompt(ex), params))
    local = rw.judge_result(LocalBackend(max_batch=1).score(rw.judge_prompt(ex), params))
    assert remote["parse"] == local["parse"] == "logprobs"
    assert remote["score"] == pytest.approx(local["score"], abs=0.02) and remote["mass"] == pytest.approx(local["mass"], abs=0.02)
