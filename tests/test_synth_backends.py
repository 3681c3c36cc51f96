"""Fast tier: retries/backoff (fake clock), error mapping of the openai backend, cache, concurrency,
the batching server and the fault proxy (with a fake model, no weights)."""
from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from synth.backends import (BackendError, OpenAIBackend, Request, RunStats, TransientError, backoff_delay,
                            cache_key, call_with_retries, run_requests)
from synth.config import load_config


# -- backoff ---------------------------------------------------------------------
def test_retries_back_off_exponentially_with_jitter_on_a_fake_clock():
    slept: list[float] = []
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] <= 4:
            raise TransientError("429")
        return "ok"

    assert call_with_retries(flaky, max_retries=6, base=0.5, cap=3.0, sleep=slept.append, rng=random.Random(1)) == "ok"
    assert calls["n"] == 5 and len(slept) == 4
    for k, d in enumerate(slept):
        assert 0 <= d <= min(3.0, 0.5 * 2 ** k)
    # jitter: not the same schedule as the plain exponential one
    assert slept != [0.5, 1.0, 2.0, 3.0]
    # bounds hold for many draws, and the cap applies
    rng = random.Random(0)
    draws = [backoff_delay(10, 0.5, 3.0, rng) for _ in range(200)]
    assert max(draws) <= 3.0 and max(draws) > 2.0


def test_retries_give_up_and_non_transient_errors_are_not_retried():
    slept: list[float] = []
    n = {"c": 0}

    def always():
        n["c"] += 1
        raise TransientError("503")

    with pytest.raises(BackendError, match="gave up after 3 retries"):
        call_with_retries(always, max_retries=3, sleep=slept.append, rng=random.Random(0))
    assert n["c"] == 4 and len(slept) == 3

    def bad():
        n["c"] += 1
        raise ValueError("bad request")

    n["c"] = 0
    with pytest.raises(ValueError):
        call_with_retries(bad, max_retries=3, sleep=slept.append)
    assert n["c"] == 1


def _mock_openai(handler, monkeypatch, key="sk-secret-123"):
    monkeypatch.setenv("TEST_SYNTH_KEY", key)
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return OpenAIBackend("m", base_url="http://mock/v1", api_key_env="TEST_SYNTH_KEY", timeout_s=5, http_client=client)


def _ok(text):
    return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                  "finish_reason": "stop"}]})


@pytest.mark.parametrize("code,exc", [(429, TransientError), (500, TransientError), (503, TransientError),
                                      (400, BackendError), (401, BackendError)])
def test_openai_backend_maps_http_errors(monkeypatch, code, exc):
    be = _mock_openai(lambda req: httpx.Response(code, json={"error": {"message": "x"}}), monkeypatch)
    with pytest.raises(exc):
        be.complete([{"role": "user", "content": "hi"}], {"max_tokens": 4})


def test_openai_backend_sends_key_and_params_but_never_shows_the_key(monkeypatch):
    seen = {}

    def h(req):
        seen["auth"] = req.headers["authorization"]
        seen["body"] = req.read().decode()
        return _ok("hello")

    be = _mock_openai(h, monkeypatch)
    assert be.complete([{"role": "user", "content": "hi"}], {"max_tokens": 7, "temperature": 0, "seed": 3}) == "hello"
    assert seen["auth"] == "Bearer sk-secret-123"
    assert '"max_tokens":7' in seen["body"].replace(" ", "") and '"seed":3' in seen["body"].replace(" ", "")
    assert "sk-secret" not in repr(be)


def test_openai_backend_timeout_is_transient(monkeypatch):
    def h(req):
        raise httpx.ReadTimeout("slow", request=req)

    be = _mock_openai(h, monkeypatch)
    with pytest.raises(TransientError):
        be.complete([{"role": "user", "content": "hi"}], {})


# -- run_requests: cache, concurrency, errors ---------------------------------------
class FakeBackend:
    name = "fake"
    model = "fake-1"
    max_batch = 1

    def __init__(self, delay=0.0, fail_first=0):
        self.calls = 0
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_left = fail_first
        self.lock = threading.Lock()

    def complete(self, messages, params):
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fail = self.fail_left > 0
            self.fail_left -= 1
        try:
            time.sleep(self.delay)
            if fail:
                raise TransientError("injected 429")
            return "echo:" + messages[-1]["content"]
        finally:
            with self.lock:
                self.in_flight -= 1


def _reqs(n):
    return [Request([{"role": "user", "content": f"q{i}"}], {"max_tokens": 8, "seed": i}) for i in range(n)]


def test_cache_makes_a_rerun_call_nothing(store):
    be = FakeBackend()
    st = RunStats()
    out = run_requests(be, _reqs(6), store=store, concurrency=3, stats=st)
    assert [r.text for r in out] == [f"echo:q{i}" for i in range(6)] and be.calls == 6 and st.cache_hits == 0
    st2 = RunStats()
    out2 = run_requests(be, _reqs(6), store=store, concurrency=3, stats=st2)
    assert be.calls == 6 and st2.cache_hits == 6 and all(r.cached for r in out2)
    assert [r.text for r in out2] == [r.text for r in out]
    # a different param, model or message is a different key
    k = cache_key("fake", "fake-1", [{"role": "user", "content": "q"}], {"max_tokens": 8})
    assert k != cache_key("fake", "fake-2", [{"role": "user", "content": "q"}], {"max_tokens": 8})
    assert k != cache_key("fake", "fake-1", [{"role": "user", "content": "q"}], {"max_tokens": 9})
    assert k != cache_key("fake", "fake-1", [{"role": "user", "content": "q!"}], {"max_tokens": 8})
    assert k != cache_key("openai", "fake-1", [{"role": "user", "content": "q"}], {"max_tokens": 8})


def test_concurrency_is_bounded_and_order_kept():
    be = FakeBackend(delay=0.05)
    t = time.perf_counter()
    out = run_requests(be, _reqs(12), concurrency=4)
    dt = time.perf_counter() - t
    assert be.max_in_flight == 4
    assert dt < 12 * 0.05 * 0.6  # clearly faster than sequential
    assert [r.text for r in out] == [f"echo:q{i}" for i in range(12)]


def test_transient_failures_are_retried_and_exhaustion_is_reported_not_dropped():
    be = FakeBackend(fail_first=3)
    st = RunStats()
    out = run_requests(be, _reqs(4), concurrency=1, max_retries=5, sleep=lambda s: None, stats=st)
    assert all(r.text for r in out) and st.retries == 3 and st.errors == 0
    be2 = FakeBackend(fail_first=100)
    st2 = RunStats()
    out2 = run_requests(be2, _reqs(2), concurrency=2, max_retries=2, sleep=lambda s: None, stats=st2)
    assert all(r.text is None and "gave up" in r.error for r in out2) and st2.errors == 2


class FakeBatched:
    name = "fakeb"
    model = "fake-b"
    max_batch = 4

    def __init__(self):
        self.batches = []

    def complete_many(self, convs, params):
        self.batches.append(len(convs))
        time.sleep(0.05)
        return ["echo:" + c[-1]["content"] for c in convs]

    def complete(self, messages, params):
        return self.complete_many([messages], params)[0]


def test_batched_backend_runs_misses_in_batches(store):
    be = FakeBatched()
    out = run_requests(be, _reqs(10), store=store)
    assert be.batches == [4, 4, 2] and [r.text for r in out] == [f"echo:q{i}" for i in range(10)]
    run_requests(be, _reqs(10), store=store)
    assert be.batches == [4, 4, 2]


# -- config --------------------------------------------------------------------------
def test_config_toml_and_errors(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("[synth]\nmin_judge_score = 4\nconcurrency = 2\n")
    c = load_config(p, {"concurrency": 5, "model": None})
    assert c.min_judge_score == 4 and c.concurrency == 5 and c.model.startswith("embedded")
    p.write_text("min_judge_scor = 4\n")
    with pytest.raises(ValueError, match=r"s\.toml.*min_judge_scor"):
        load_config(p)
    with pytest.raises(ValueError, match="on_unparseable"):
        load_config(None, {"on_unparseable": "maybe"})


# -- server + fault proxy with a fake model ---------------------------------------------
@pytest.fixture
def fake_server():
    from synth.server import serve

    be = FakeBatched()
    srv, batcher = serve("127.0.0.1", 0, model="fake-b", max_batch=4, batch_wait_s=0.05, backend=be)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", batcher
    srv.shutdown()
    srv.server_close()


def test_server_batches_concurrent_requests(fake_server):
    url, batcher = fake_server
    be = OpenAIBackend("fake-b", base_url=url + "/v1", timeout_s=10)
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "fake-b"
    out = run_requests(be, _reqs(8), concurrency=8)
    assert [r.text for r in out] == [f"echo:q{i}" for i in range(8)]
    assert max(batcher.batches) > 1  # concurrent requests shared a forward pass
    r = httpx.post(url + "/v1/chat/completions", json={"messages": "nope"})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_fault_proxy_injects_and_client_recovers(fake_server, store):
    from synth.faultproxy import FaultProxy

    url, _ = fake_server
    proxy = FaultProxy(url, fault_rate=0.3, seed=7, hang_s=0.6).start()
    try:
        be = OpenAIBackend("fake-b", base_url=proxy.url + "/v1", timeout_s=0.4)
        st = RunStats()
        out = run_requests(be, _reqs(20), store=store, concurrency=4, max_retries=8, base=0.01, cap=0.05, stats=st)
    finally:
        proxy.stop()
    assert [r.text for r in out] == [f"echo:q{i}" for i in range(20)]
    injected = proxy.counts["429"] + proxy.counts["500"] + proxy.counts["timeout"]
    assert injected > 0 and st.retries == injected and proxy.counts["forwarded"] == 20


# -- judge scores from logprobs (openai backend, mocked server) ---------------------------
def _completion(content, logprobs):
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                         "logprobs": logprobs}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _tok(t, lp, top=()):
    return {"token": t, "logprob": lp, "bytes": None, "top_logprobs": [{"token": a, "logprob": b, "bytes": None} for a, b in top]}


def test_openai_judge_reads_score_token_probabilities_and_falls_back_to_text(store):
    import json as _json
    import math

    from synth import reward as rw
    from synth.config import SynthConfig

    seen = []
    top = [(" 4", math.log(0.5)), (" 5", math.log(0.2)), ("4", math.log(0.1)), (" 2", math.log(0.1)), ("The", math.log(0.05))]
    answers = [
        _completion("4. fine", {"content": [_tok(" 4", math.log(0.5), top), _tok(".", -0.2)]}),  # prefilled "Score: "
        # no prefill: the score is the 3rd token; its alternatives carry the distribution (" 4" and "4" are one score)
        _completion("Score: 4", {"content": [_tok("Score", -0.1), _tok(":", -0.01), _tok(" 4", math.log(0.5), top)]}),
        _completion("Score: 2", None),  # a server without logprobs
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(_json.loads(request.content))
        return httpx.Response(200, json=answers[len(seen) - 1])

    be = OpenAIBackend("m", base_url="http://judge.test/v1", http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    params = rw.judge_params(SynthConfig(judge_prefill=True))
    msgs = [{"role": "user", "content": "rate this"}]
    st = RunStats()
    out = run_requests(be, [Request(msgs, params)], store=store, stats=st)
    j = rw.judge_result(out[0].data)
    assert j["parse"] == "logprobs" and j["probs"]["4"] == pytest.approx(0.6 / 0.9, abs=1e-3)
    assert j["score"] == pytest.approx((2 * 0.1 + 4 * 0.6 + 5 * 0.2) / 0.9, abs=1e-3) and j["mass"] == pytest.approx(0.9)
    body = seen[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == params["max_tokens"]
    assert body["messages"][-1] == {"role": "assistant", "content": "Score: "} and body["continue_final_message"] is True
    assert out[0].text == "Score: 4. fine" and j["rationale"] == "fine"  # the prefix is put back in front
    # cached with its probabilities: a rerun makes no call and scores the same
    again = run_requests(be, [Request(msgs, params)], store=store, stats=RunStats())
    assert again[0].cached and rw.judge_result(again[0].data) == j and len(seen) == 1
    p2 = rw.judge_params(SynthConfig())
    j2 = rw.judge_result(run_requests(be, [Request(msgs, p2)])[0].data)
    assert "continue_final_message" not in seen[1] and seen[1]["messages"] == msgs
    assert j2["parse"] == "logprobs" and j2["score"] == pytest.approx(j["score"])
    out3 = run_requests(be, [Request(msgs, p2)])
    assert out3[0].data["probs"] is None and rw.judge_result(out3[0].data) == {"score": 2.0, "rationale": "",
                                                                               "parse": "pattern"}


def test_batched_backend_gets_each_rows_params_and_scoring_requests(store):
    class PerRow(FakeBatched):
        per_row_params = True

        def __init__(self):
            super().__init__()
            self.seen = []

        def complete_many(self, convs, params):
            self.seen.append(params)
            return [f"{c[-1]['content']}@{p['seed']}" for c, p in zip(convs, params)]

        def score_many(self, convs, params):
            self.seen.append(("score", params))
            return [{"text": "Score: 4", "probs": {"4": 0.5, "5": 0.5}, "via": "logprobs"} for _ in convs]

    be = PerRow()
    reqs = [Request([{"role": "user", "content": f"q{i}"}], {"max_tokens": 4, "seed": 100 + i}) for i in range(5)]
    out = run_requests(be, reqs, store=store)
    assert [r.text for r in out] == [f"q{i}@{100 + i}" for i in range(5)]  # each row sampled with its own seed
    assert [len(p) for p in be.seen] == [4, 1]
    sreq = [Request([{"role": "user", "content": "x"}], {"max_tokens": 2, "score": {"choices": ["4", "5"]}})]
    res = run_requests(be, sreq, store=store)
    assert be.seen[-1][0] == "score" and res[0].data["probs"] == {"4": 0.5, "5": 0.5} and res[0].text == "Score: 4"
    assert run_requests(be, sreq, store=store)[0].data == res[0].data and len(be.seen) == 3  # cached with its data
    # a backend without score/score_many answers scoring requests in text (the "score" key is not sent on)
    plain = FakeBatched()
    r = run_requests(plain, sreq)
    assert r[0].data == {"text": "echo:x", "probs": None, "via": "text"}
