"""Fast tier: dedup on a tiny workspace — signals, keeper policy, reruns, gates, embedding cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate import dedup, minhash as mh, snapshot
from curate.cli import main as cli
from curate.example import Example, Source
from curate.review import decide

SYS = {"role": "system", "content": "Classify the intent."}


def ex(user: str, answer: str = "card_arrival", split: str = "train", origin: str = "human", **kw) -> Example:
    o = {"kind": origin} if origin == "human" else {"kind": "synthetic", "parent_ids": [], "model": "m", "strategy": "paraphrase"}
    return Example(messages=[SYS, {"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                   source=Source(kind="synthetic" if origin == "synthetic" else "ticket", file="t.csv", loc=user[:8]),
                   split=split, origin=o, **kw)


BASE = "My new card still has not arrived after two weeks, what should I do about it?"


def fill(store):
    recs = [
        ex(BASE),                                                        # 0 human, oldest
        ex("my new card still has NOT arrived after two weeks - what should I do about it"),  # 1 exact after normalisation
        ex(BASE.replace("two weeks", "two long weeks")),                 # 2 near (one word inserted)
        ex("How do I change my PIN at an ATM?", "change_pin"),           # 3 unrelated
        ex(BASE.replace("after", "even after"), origin="synthetic"),      # 4 synthetic near copy
        ex(BASE, split="heldout", answer="card_delivery_estimate"),              # 5 same text, other split: not a dup here
    ]
    store.add_examples(recs)
    return [r.id for r in recs]


def test_keeper_policy_order():
    members = [
        {"id": "a", "origin": "synthetic", "status": "approved", "seq": 1},
        {"id": "b", "origin": "human", "status": "pending", "seq": 5},
        {"id": "c", "origin": "human", "status": "approved", "seq": 9},
        {"id": "d", "origin": "human", "status": "approved", "seq": 7},
        {"id": "e", "origin": "human", "status": "rejected", "seq": 0},
    ]
    assert dedup.pick_keeper(members)["id"] == "d"  # human > synthetic, approved > pending/rejected, then oldest
    assert dedup.pick_keeper(members[:2])["id"] == "b"
    assert dedup.pick_keeper([members[1], members[4]])["id"] == "b"


def test_dedup_signals_clusters_and_rerun(store):
    ids = fill(store)
    cfg = dedup.DedupConfig(detectors=("exact", "near"), shingle="char")
    res = dedup.run(store, cfg)
    k = res["counters"]
    assert k["read"] == 6 and k["clusters"] == 1 and k["removed"] == 3
    assert k["detectors"]["exact"]["pairs"] == 1 and k["detectors"]["near"]["pairs"] >= 2
    got = {i: store.get(i).signals for i in ids}
    keeper = ids[0]  # human, oldest (all pending)
    assert got[keeper].get("dup_cluster") == keeper and "duplicate_of" not in got[keeper]
    for i in (ids[1], ids[2], ids[4]):
        s = got[i]
        assert s["duplicate_of"] == keeper and s["dup_cluster"] == keeper and s["dedup_at"] > 0
        assert s["dup_detector"] in ("exact", "near") and 0.8 <= s["dup_score"] <= 1.0
    assert got[ids[1]]["dup_detector"] == "exact"
    # texts of ≤ 20 words: the near score is the edit rule's, 1 − cost / (2·words): "long" is one
    # inserted content word (3 points) in 17 words (curate/shortdup.py)
    assert got[ids[2]]["dup_detector"] == "near" and got[ids[2]]["dup_score"] == round(1 - 3 / 34, 4)
    # with the edit rule off (--edit-words 0) it is the exact Jaccard of the two char-5-gram sets
    # (not a MinHash estimate), as for longer texts
    dedup.run(store, dedup.DedupConfig(detectors=("exact", "near"), shingle="char", edit_words=0))
    def grams(t):
        u = mh.normalize(t).encode()
        return {u[i : i + 5] for i in range(len(u) - 4)}
    a, c = grams(BASE), grams(BASE.replace("two weeks", "two long weeks"))
    s2 = store.get(ids[2]).signals
    assert s2["dup_detector"] == "near" and s2["dup_score"] == round(len(a & c) / len(a | c), 4)
    dedup.run(store, cfg)
    assert not got[ids[3]] and not got[ids[5]]  # unrelated; other split
    rep = Path(store.meta_get("dedup_report_path"))
    assert rep.exists() and "keep" in rep.read_text() and rep.with_suffix(".jsonl").exists()
    assert store.meta_get("dedup_counters")["removed"] == 3

    # approving the synthetic copy does not make it keeper (human first); approving id 2 does
    decide(store, [ids[2]], "approve", "alice")
    dedup.run(store, cfg)
    s = {i: store.get(i).signals for i in ids}
    assert "duplicate_of" not in s[ids[2]] and s[ids[0]]["duplicate_of"] == ids[2]
    # data changes → rerun forgets stale signals
    with store.tx() as c:
        c.execute("DELETE FROM records WHERE id IN (?,?,?)", (ids[1], ids[2], ids[4]))
    dedup.run(store, cfg)
    assert store.get(ids[0]).signals == {} and store.count({"has_duplicate": True}) == 0


def test_duplicates_blocked_from_snapshot_unless_approved_after(store):
    ids = fill(store)
    dedup.run(store, dedup.DedupConfig(detectors=("exact", "near"), shingle="char"))
    decide(store, ids, "approve", "alice", frontend="rule")  # a bulk rule approval does not override
    m = snapshot.create(store, "v1")
    assert m["gates"]["blocked"] == 3 and m["gates"]["reports"]["dedup"] == store.meta_get("dedup_report_path")
    decide(store, [ids[2]], "approve", "bob")  # a person approves the duplicate explicitly
    m2 = snapshot.create(store, "v2")
    assert m2["gates"]["blocked"] == 2
    assert ids[2] in {r["id"] for r in snapshot.load(store, "v2", "train")}


def test_cli_dedup_json_and_stats(workspace, store, capsys):
    fill(store)
    assert cli(["dedup", "--exact", "--near", "--shingle", "char", "--workspace", str(workspace), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == 3 and out["params"]["bands"] == 16 and out["params"]["rows"] == 6
    assert out["params"]["candidate_probability_at_threshold"] >= 0.99
    assert out["params"]["near_verification"] == "exact Jaccard"
    assert cli(["stats", "--workspace", str(workspace), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["signals"]["duplicates"] == 3 and st["dedup"]["clusters"] == 1
    assert cli(["dedup", "--threshold", "1.5", "--workspace", str(workspace)]) == 2
    assert "threshold" in capsys.readouterr().err


def test_semantic_embeddings_are_cached(store):
    ids = fill(store)
    cfg = dedup.DedupConfig(detectors=("semantic",), cosine=0.95)
    k1 = dedup.run(store, cfg)["counters"]
    assert k1["embeddings"] == {"cached": 0, "computed": 6}
    assert k1["detectors"]["semantic"]["removed"] >= 2  # paraphrase-level copies of BASE
    assert "duplicate_of" not in store.get(ids[3]).signals
    store.add_examples([ex("Is there a fee for topping up by card?", "top_up_fee")])
    k2 = dedup.run(store, cfg)["counters"]
    assert k2["embeddings"] == {"cached": 6, "computed": 1}
    n = store.conn.execute("SELECT COUNT(*) FROM embeddings WHERE model='all-MiniLM-L6-v2#user'").fetchone()[0]
    assert n == 7
