"""Integration tier: llama.cpp's own OpenAI-compatible server (the xllamacpp wheel, on the embedded
SmolLM2 Q4_1 GGUF, 4 slots, continuous batching) on 127.0.0.1, and ``python -m synth generate
--backend openai`` end to end against it: candidates filtered, judged from llama.cpp's logprobs,
stored as pending synthetic records with scores; the rerun is all cache hits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.test_synth_server import SEEDS  # the same three banking seeds for both servers

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llamacpp():
    pytest.importorskip("xllamacpp")
    from synth.llamacpp import start

    server, base, info = start(port=0, parallel=4, threads=1, ctx_per_slot=1024)
    yield base, info
    del server


def test_llamacpp_server_allows_slots_and_logprobs(llamacpp):
    base, info = llamacpp
    assert info["slots"] == 4 and info["continuous_batching"] and info["gguf"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    props = json.loads(urllib.request.urlopen(base + "/props", timeout=10).read())
    assert props["total_slots"] == 4
    from synth.backends import OpenAIBackend

    be = OpenAIBackend("smollm2", base_url=base + "/v1", timeout_s=60)
    msgs = [{"role": "user", "content": "Rate the answer 'Paris' to 'capital of France?' from 1 to 5."}]
    d = be.score(msgs, {"max_tokens": 4, "temperature": 0.0,
                        "score": {"choices": list("12345"), "prefix": "Score: ", "prefill": True}})
    assert d["via"] == "logprobs" and d["text"].startswith("Score: ") and not d["text"].startswith("Score: Score:")
    assert abs(sum(d["probs"].values()) - 1) < 0.5 and all(0 <= p <= 1 for p in d["probs"].values())


def test_generate_cli_end_to_end_against_llamacpp(llamacpp, workspace):
    from curate.example import Example, Source
    from curate.store import open_store

    base, _ = llamacpp
    store = open_store(workspace)
    store.add_examples([Example(messages=[{"role": "system", "content": "Classify the banking query."},
                                          {"role": "user", "content": u}, {"role": "assistant", "content": lab}],
                                source=Source("ticket", "seeds.csv", f"row {i}"), split="train", label=lab)
                        for i, (u, lab) in enumerate(SEEDS)])
    store.close()
    # this test is about llama.cpp's server as backend and judge, not about the filter (tests/test_synth_reward*):
    # the combined reward is off so that the 135M model's candidates reach the store
    conf = workspace / "synth.toml"
    conf.write_text("min_reward = 0.0\n")
    cmd = [sys.executable, "-m", "synth", "generate", "--strategy", "paraphrase", "--n", "4", "--backend", "openai",
           "--config", str(conf),
           "--base-url", base + "/v1", "--model", "smollm2", "--concurrency", "4", "--max-new-tokens", "24",
           "--judge-prefill", "--timeout", "60", "--workspace", str(workspace), "--json", "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    counts = json.loads(r.stdout)
    assert counts["error"] == 0 and counts["calls"] >= 4 and counts["cache_hits"] == 0, counts
    assert counts["accepted"] + counts["rejected"] + counts["duplicate"] == 4
    lines = [json.loads(x) for x in (workspace / "reports" / "synth-log.jsonl").read_text().splitlines()]
    judged = [d["judge"] for d in lines if d.get("judge")]
    assert judged and all(j["parse"] == "logprobs" and 1 <= j["score"] <= 5 for j in judged), judged
    store = open_store(workspace)
    try:
        syn = list(store.query({"origin": "synthetic"}))
        assert len(syn) == counts["accepted"] >= 1, counts
        for ex in syn:
            assert ex.status == "pending" and ex.split == "train" and ex.origin["kind"] == "synthetic"
            rew = ex.signals["reward"]
            assert rew["judge_parse"] == "logprobs" and 1 <= rew["score"] <= 5 and rew["judge_model"] == "openai:smollm2"
    finally:
        store.close()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    c2 = json.loads(again.stdout)
    assert c2["calls"] == 0 and c2["cache_hits"] == counts["calls"] and c2["accepted"] == 0
