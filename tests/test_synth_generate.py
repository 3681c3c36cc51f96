"""Fast tier: the generate pipeline with a fake backend (no model).

Covers held-out isolation (no held-out text in any prompt), store integration
(pending synthetic train records with reward signals), the synth log (every
candidate stored or logged, with a reason), the cache (a rerun makes no call),
doc-qa from chunks, and the judge's unparseable policy.
"""
from __future__ import annotations

import json
import threading

import pytest

from curate.example import Example, Source
from synth.config import SynthConfig
from synth.generate import generate, log_path

LABELS = ["lost_card", "card_arrival", "exchange_rate"]
WORDS = "kindly assist regarding situation urgently today please quickly again soon maybe".split()


class FakeBackend:
    """Deterministic answers by prompt kind; records every prompt it is sent."""

    name = "fake"
    model = "fake-1"
    max_batch = 1

    def __init__(self, judge_reply: str = '{"score": 4, "rationale": "clear and correct"}', fixed: str | None = None):
        self.prompts: list[list[dict]] = []
        self.judge_reply = judge_reply
        self.fixed = fixed
        self.lock = threading.Lock()

    def complete(self, messages, params):
        with self.lock:
            self.prompts.append(messages)
        body = messages[-1]["content"]
        if "Rate this example" in body:
            return self.judge_reply
        if self.fixed is not None:
            return self.fixed
        s = int(params.get("seed", 0))
        extra = " ".join(WORDS[(s + k) % len(WORDS)] for k in range(4))
        if "Question:" in body:
            return f"Question: How do I {extra}?\nAnswer: Follow the steps in the guide, {extra}."
        if "next message" in body:
            return f"Thanks, and what about my other account, {extra}?"
        if messages[-1]["role"] == "user" and "customer" not in body.lower():
            return f"Sure, I can help with that {extra}."
        return f"Sure! Here is the rewritten message: Hello, {extra}, my issue is the card {s % 97}."


def _seed_store(store):
    sys_turn = {"role": "system", "content": "Classify the message."}
    train, held = [], []
    for i in range(12):
        lab = LABELS[i % 3]
        train.append(Example(messages=[sys_turn, {"role": "user", "content": f"train question {i} about my {lab.replace('_', ' ')}"},
                                       {"role": "assistant", "content": lab}],
                             source=Source("ticket", "t.csv", f"row {i}"), split="train", label=lab))
    for i in range(6):
        lab = LABELS[i % 3]
        held.append(Example(messages=[sys_turn, {"role": "user", "content": f"HELDOUTSECRET{i} zebra quartz {lab}"},
                                      {"role": "assistant", "content": lab}],
                            source=Source("ticket", "t.csv", f"row h{i}"), split="heldout", label=lab))
    store.add_examples(train + held)
    store.add_chunks([{"id": f"c{i}", "file": "kb.json", "loc": f"item {i}", "grp": "doc:kb", "title": f"Article {i}",
                       "text": f"To reset a password open settings and choose reset, article {i}."} for i in range(3)])
    return train, held


def _log(store):
    return [json.loads(l) for l in log_path(store).read_text().splitlines()]


@pytest.mark.parametrize("strategy", ["paraphrase", "self-instruct", "multi-turn", "doc-qa"])
def test_no_heldout_text_reaches_a_prompt(store, strategy):
    _, held = _seed_store(store)
    be = FakeBackend()
    counts = generate(store, be, strategy, 12, SynthConfig(concurrency=4))
    assert be.prompts, "the backend was never called"
    blob = json.dumps(be.prompts)
    for h in held:
        assert h.user_text not in blob
    assert "HELDOUTSECRET" not in blob and "zebra" not in blob
    assert counts["accepted"] + counts["rejected"] + counts["duplicate"] + counts["error"] == 12


def test_paraphrase_records_enter_store_pending_synthetic(store):
    train, _ = _seed_store(store)
    be = FakeBackend()
    counts = generate(store, be, "paraphrase", 10, SynthConfig(concurrency=3))
    assert counts["accepted"] == 10, counts
    syn = store.query({"origin": "synthetic"})
    assert len(syn) == 10
    ids = {t.id: t for t in train}
    for e in syn:
        assert e.status == "pending" and e.split == "train" and e.source.kind == "synthetic"
        assert e.origin["strategy"] == "paraphrase" and e.origin["model"] == "fake:fake-1"
        assert len(e.origin["prompt_hash"]) >= 16
        parent = ids[e.origin["parent_ids"][0]]
        assert e.label == parent.label and e.messages[-1] == parent.messages[-1]
        assert e.messages[1]["content"].startswith("Hello,")  # lead-in "Sure! Here is …:" stripped
        r = e.signals["reward"]
        assert r["score"] == 4.0 and r["rationale"] == "clear and correct" and r["judge_model"] == "fake:fake-1"
        assert set(r["heuristics"]) >= {"chars", "english_ratio", "seed_similarity", "heldout_similarity"}
    assert store.count({"origin": "synthetic", "low_reward": 3.0}) == 0
    meta = store.meta_get("synth_counters")
    assert meta["last_run"]["accepted"] == 10 and meta["totals"]["accepted"] == 10


def test_rerun_is_served_from_cache_and_adds_nothing(store):
    _seed_store(store)
    be = FakeBackend()
    first = generate(store, be, "paraphrase", 8, SynthConfig())
    n_calls = len(be.prompts)
    assert first["calls"] == n_calls > 0
    be2 = FakeBackend()
    second = generate(store, be2, "paraphrase", 8, SynthConfig())
    assert be2.prompts == [] and second["calls"] == 0 and second["cache_hits"] == n_calls
    assert second["duplicate"] == first["accepted"] and second["accepted"] == 0
    # a new seed means new requests
    third = generate(store, be2, "paraphrase", 4, SynthConfig(seed=7))
    assert third["calls"] > 0


def test_every_candidate_is_stored_or_logged_with_a_reason(store):
    _seed_store(store)
    be = FakeBackend(judge_reply='{"score": 2, "rationale": "vague"}')
    counts = generate(store, be, "paraphrase", 6, SynthConfig())
    assert counts["rejected"] == 6 and counts["accepted"] == 0
    assert store.count({"origin": "synthetic"}) == 0
    lines = [l for l in _log(store) if l["run_id"] == counts["run_id"]]
    assert len(lines) == 6 and {l["candidate"] for l in lines} == set(range(6))
    for l in lines:
        assert l["decision"] == "rejected" and l["reason"].startswith("judge-low") and l["judge"]["score"] == 2.0
        assert l["messages"] and l["raw"]


def test_unparseable_judge_follows_config(store):
    _seed_store(store)
    kept = generate(store, FakeBackend(judge_reply="banana banana"), "paraphrase", 3, SynthConfig(on_unparseable="keep"))
    assert kept["accepted"] == 3 and kept["judge_parse"]["unparseable"] == 3
    rec = store.query({"origin": "synthetic"})[0]
    assert rec.signals["reward"]["score"] is None and rec.signals["reward"]["judge_parse"] == "unparseable"
    rej = generate(store, FakeBackend(judge_reply="no idea"), "paraphrase", 3, SynthConfig(on_unparseable="reject", seed=5))
    assert rej["accepted"] == 0 and rej["reasons"] == {"judge-unparseable": 3}


def test_heldout_copy_and_seed_copy_are_rejected(store):
    train, held = _seed_store(store)
    counts = generate(store, FakeBackend(fixed=held[0].user_text), "paraphrase", 3, SynthConfig())
    assert counts["reasons"] == {"heldout-similar": 3}, counts
    # a copy of the seed itself; the judge is not asked about sure rejects
    be = FakeBackend(fixed=train[0].user_text)
    counts = generate(store, be, "paraphrase", 1, SynthConfig(seed=3), {"ids": [train[0].id]})
    assert counts["reasons"] == {"copy-of-seed": 1}, counts
    assert not any("Rate this example" in p[-1]["content"] for p in be.prompts)


def test_doc_qa_from_chunks(store):
    _seed_store(store)
    be = FakeBackend()
    counts = generate(store, be, "doc-qa", 4, SynthConfig())
    assert counts["accepted"] == 4, counts
    for e in store.query({"origin": "synthetic"}):
        assert e.messages[0]["role"] == "system" and e.messages[1]["content"].startswith("How do I")
        assert e.origin["parent_ids"][0] in {"c0", "c1", "c2"} and e.split == "train" and e.label is None
    assert any("To reset a password" in p[-1]["content"] for p in be.prompts)


def test_seed_filter_restricts_seeds(store):
    train, _ = _seed_store(store)
    from synth.strategies import parse_seed_filters

    be = FakeBackend()
    generate(store, be, "paraphrase", 6, SynthConfig(), parse_seed_filters(["label=lost_card"]))
    assert all(e.label == "lost_card" for e in store.query({"origin": "synthetic"}))
    with pytest.raises(ValueError, match="train split"):
        parse_seed_filters(["split=heldout"])
    with pytest.raises(ValueError, match="key=value"):
        parse_seed_filters(["label"])


def test_backend_failures_are_logged_not_lost(store):
    _seed_store(store)
    from synth.backends import TransientError

    class Flaky(FakeBackend):
        def complete(self, messages, params):
            if "Rate this example" not in messages[-1]["content"] and int(params.get("seed", 0)) % 2:
                raise TransientError("HTTP 503")
            return super().complete(messages, params)

    counts = generate(store, Flaky(), "paraphrase", 8, SynthConfig(max_retries=2), sleep=lambda s: None)
    assert counts["error"] > 0 and counts["accepted"] + counts["error"] + counts["rejected"] == 8
    errs = [l for l in _log(store) if l["decision"] == "error"]
    assert len(errs) == counts["error"] and all("backend-error" in l["reason"] for l in errs)


def test_doc_qa_question_copying_heldout_is_rejected_despite_a_long_answer(store):
    _, held = _seed_store(store)
    answer = " ".join(["open the settings page and follow the reset steps described in the article"] * 3)
    be = FakeBackend(fixed=f"Question: {held[1].user_text}\nAnswer: {answer}")
    counts = generate(store, be, "doc-qa", 2, SynthConfig())
    assert counts["reasons"] == {"heldout-similar": 2}, counts
