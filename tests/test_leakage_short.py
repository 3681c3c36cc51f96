"""Fast tier: leakage and near duplicates of SHORT texts (5–20 word queries) under small edits.

The issue: an eval file of BANKING77 test queries, some copied with one or two small edits,
checked with ``curate leakage --against``; char-5-gram Jaccard ≥ 0.8 found only ~4 in 5 of
the edited leaks and missed the three below. The word edit rule (curate/shortdup.py) decides
pairs of texts of ≤ 20 words; long texts keep the MinHash/Jaccard path (tests/test_minhash.py,
tests/test_leakage.py).
"""
from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from curate import dedup, minhash as mh, shortdup as sd
from curate.cli import main as cli
from curate.example import Example, Source

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import leakage_short as bench  # noqa: E402  (the benchmark's edit generator and truth oracle)

MISSED = [("Where do I find the virtual card?", "Where do I fnid the virtual card?"),
          ("I need to know your exchange rates.", "I need to your know exchange rates?"),
          ("is my card PIN saved in the app", "is again my card PIN saved in app the")]
# same-intent BANKING77 queries that are other requests, not edits of each other
HARD_NEGATIVES = [("How do I top up my card?", "How can I top-up my card by bank transfer?"),  # the issue's example
                  ("How can I top up my account with a cheque?", "How can I top up my account with a card?"),
                  ("What do I have to do to change my pin?", "What do i have to do to change my name?"),
                  ("Where can I get my card PIN?", "Where can I get my card at?"),
                  ("Which cards and currencies are supported?", "What cards and currencies are supported?"),
                  ("Can I verify my identity?", "I cannot verify my identity"),
                  ("Why is my card payment pending?", "Why is my transfer pending?")]


def cost(a: str, b: str) -> int:
    e = sd.encode([a, b])
    return int(sd.edit_costs(e, np.array([[0, 1]]), 30)[0])


def ex(user: str, split: str = "train") -> Example:
    return Example(messages=[{"role": "user", "content": user}, {"role": "assistant", "content": "x"}],
                   source=Source(kind="ticket", file="t.csv", loc=user[:8]), split=split)


def test_cost_model_by_edit():
    base = "Why is my card payment still pending after two days?"
    assert cost(base, "why is my card payment still pending after two days") == 0  # case, punctuation
    assert cost(base, "Why is my card paymnet still pending after two days?") == sd.C_TYPO  # transposition
    assert cost(base, "Why is my card payment stil pending after two days?") == sd.C_TYPO  # dropped letter
    assert cost(base, "Why is my card payment still pending two after days?") == sd.C_SWAP
    assert cost(base, "Why is my card payment still pending after just two days?") == sd.C_STOP  # filler
    assert cost(base, "Why is my payment still pending after two days?") == sd.C_CONTENT  # dropped word
    assert cost(base, "Why is my card payment still pending after three days?") > sd.BUDGET  # another request
    assert cost("I can't activate my card", "I cannot activate my card") == 0  # contractions
    assert cost("I'm still waiting for my card", "I am still waiting for my card") == 0
    assert cost("How do I top up?", "How do I topup?") == sd.C_MERGE
    # two edits: within budget; a word replaced by another: over it
    assert cost(base, "Why is my payment still pending aftre two days?") == sd.C_CONTENT + sd.C_TYPO <= sd.BUDGET
    assert cost("How do I top up my card?", "How do I top up my cash?") > sd.BUDGET
    assert sd.budget(2) == 2 and sd.budget(3) == 4 and sd.budget(12) == sd.BUDGET and sd.budget(40) == -1


def test_issue_misses_are_caught_and_hard_negatives_are_not():
    texts = [t for p in MISSED + HARD_NEGATIVES for t in p]
    enc = sd.encode(texts)
    found = {tuple(p) for p in sd.near_pairs(enc)[0].tolist()}
    for k in range(len(MISSED)):
        assert (2 * k, 2 * k + 1) in found, MISSED[k]
    for k in range(len(MISSED), len(MISSED) + len(HARD_NEGATIVES)):
        assert (2 * k, 2 * k + 1) not in found, HARD_NEGATIVES[k - len(MISSED)]


def test_leakage_cli_catches_the_issue_examples(store, workspace, tmp_path, capsys):
    store.add_examples([ex(o) for o, _ in MISSED] + [ex(HARD_NEGATIVES[0][0])])
    ev = tmp_path / "eval.csv"
    with ev.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([[e] for _, e in MISSED] + [[HARD_NEGATIVES[0][1]]])
    assert cli(["leakage", "--exact", "--near", "--against", str(ev), "--workspace", str(workspace), "--json"]) == 0
    k = json.loads(capsys.readouterr().out)
    assert k["leaking_train_records"] == 3 and k["detectors"]["near"]["edit_pairs"] == 3
    hits = {(h["train_text"], h["other_text"]) for h in
            map(json.loads, Path(k["report"]).with_suffix(".jsonl").read_text().splitlines()) if "train_text" in h}
    assert hits == set(MISSED)
    # the issue's path before the edit rule: none of the three is found
    assert cli(["leakage", "--exact", "--near", "--edit-words", "0", "--against", str(ev), "--workspace", str(workspace),
                "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["leaking_train_records"] == 0


def test_dedup_uses_the_edit_rule_within_a_split(store):
    recs = [ex(o) for o, _ in MISSED] + [ex(e) for _, e in MISSED] + [ex(a) for a, _ in HARD_NEGATIVES] + \
        [ex(b) for _, b in HARD_NEGATIVES]
    store.add_examples(recs)
    k = dedup.run(store, dedup.DedupConfig(detectors=("exact", "near")))["counters"]
    assert k["removed"] == 3 and k["clusters"] == 3 and k["detectors"]["near"]["edit_pairs"] == 3
    for o, e in MISSED:
        a, b = recs[[r.user_text for r in recs].index(o)].id, recs[[r.user_text for r in recs].index(e)].id
        assert store.get(b).signals.get("duplicate_of") == a


def test_planted_short_queries_reach_the_targets():
    """A small version of bench/leakage_short.py: 20 planted rows per edit type among 400 other
    BANKING77 queries of the same intents; recall ≥ 0.95 and precision ≥ 0.95 per type
    (precision of an eval file with the type's rows and as many negatives)."""
    rnd = random.Random(7)
    by_intent: dict[str, list[str]] = {}
    for t, lab in bench.load_queries():
        by_intent.setdefault(lab, []).append(t)
    intents = sorted(k for k in by_intent if not k.startswith("abcd"))[:20]
    work, clean = [], []
    for lab in intents:
        ts = [t for t in by_intent[lab] if len(t.split()) <= 20]
        rnd.shuffle(ts)
        work += ts[:30]
        clean += ts[30:50]
    planted = []
    for typ in bench.TYPES:
        while sum(p[2] == typ for p in planted) < 20:
            i = rnd.randrange(len(work))
            e = bench.apply_edit(work[i], typ, rnd)
            if e is not None and (typ == "exact" or e != work[i]):
                planted.append((i, e, typ))
    evals = [e for _, e, _ in planted] + clean
    enc = sd.encode(work + evals)
    flagged = {j - len(work) for _, j in sd.near_pairs(enc, cross=len(work))[0].tolist()}
    # truth of the clean rows: within 2 edits of a workspace query (the benchmark's oracle) → not a negative
    texts = work + clean
    pairs, _ = bench.word_overlap_pairs(texts, len(work))
    near = set((pairs[bench.oracle_edits(texts, pairs) <= 2, 1] - len(work)).tolist())
    neg = [k for k in range(len(clean)) if k not in near]
    fp_rate = sum(len(planted) + k in flagged for k in neg) / len(neg)
    assert len(neg) > 300 and fp_rate <= 0.02
    for typ in bench.TYPES:
        rows = [k for k, p in enumerate(planted) if p[2] == typ]
        tp = sum(k in flagged for k in rows)
        assert tp / len(rows) >= 0.95, typ
        assert tp / (tp + fp_rate * len(rows)) >= 0.95, typ


def test_long_texts_stay_on_the_minhash_path():
    """Texts of > 32 words are not indexed by the edit rule; pairs of texts of > 20 words keep
    their Jaccard decision (merge_near), so the long-text results cannot change."""
    rnd = random.Random(1)
    vocab = [f"w{i}" for i in range(500)]
    docs = [" ".join(rnd.choice(vocab) for _ in range(60)) for _ in range(30)]
    enc = sd.encode(docs)
    assert (np.diff(enc.off) == 0).all() and (enc.nwords > sd.INDEX_MAX_WORDS).all()
    assert len(sd.near_pairs(enc)[0]) == 0
    jac = (np.array([[0, 1], [2, 3]]), np.array([0.9, 0.85], np.float32))
    p, s = dedup.merge_near(jac, enc, (np.zeros((0, 2), np.int64), np.zeros(0, np.float32)), 20)
    assert p.tolist() == [[0, 1], [2, 3]] and s.tolist() == pytest.approx([0.9, 0.85])
    short = sd.encode(["how do I top up my account with a cheque", "how do I top up my account with a card"])
    p, _ = dedup.merge_near((np.array([[0, 1]]), np.array([0.8], np.float32)), short,
                            (np.zeros((0, 2), np.int64), np.zeros(0, np.float32)), 20)
    assert len(p) == 0  # a short pair: the Jaccard hit is left to the edit rule, which rejects it


def test_candidates_cover_every_pair_within_budget():
    """Rare-word-pair keys are exact: on 700 BANKING77 queries, every pair the cost model
    accepts (checked on all ~245k pairs) is a candidate."""
    qs = [t for t, _ in bench.load_queries()][:700]
    enc = sd.encode(qs)
    idx = np.flatnonzero((enc.nwords <= sd.INDEX_MAX_WORDS) & (np.diff(enc.off) > 0))
    iu, ju = np.triu_indices(len(idx), 1)
    allp = np.stack([idx[iu], idx[ju]], axis=1)
    c = sd.edit_costs(enc, allp)
    want = {tuple(p) for p in allp[c <= sd.budgets(np.maximum(enc.nwords[allp[:, 0]], enc.nwords[allp[:, 1]]))].tolist()}
    assert len(want) > 5 and want <= {tuple(p) for p in sd.candidate_pairs(enc).tolist()}
    got = {tuple(p) for p in sd.near_pairs(enc)[0].tolist()}  # copies with the same words: linked to one
    assert got <= want

    def groups(pairs):
        uf = mh.UnionFind(len(qs))
        uf.union_pairs(sorted(pairs))
        return sorted(uf.groups().values())
    assert groups(got) == groups(want)
