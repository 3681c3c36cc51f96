"""Leakage: tiny workspace (signals, eval files, snapshot refusal) and BANKING77 pinned counts.

BANKING77 (PolyAI, official train.csv 10,003 rows / test.csv 3,080 rows) leaks:
hits confirmed by eye when these counts were pinned, e.g.

  exact (same text after normalisation)
    train "Is there an auto top up option?"          test:334  "Is there an auto top-up option?"
    train "What businesses accept this card?"        test:978  "\\n\\nWhat businesses accept this card?"
    train "My card payment was reverted, why?"       test:2083 "My card payment was reverted.  Why?"
    train "How do I unblock my PIN?"                 test:556  "How do I unblock my PIN?"
  near (char 5-gram Jaccard ≥ 0.8: MinHash LSH candidates, verified by the exact Jaccard)
    train "I think my card is broke?"                test:376  "I think my card is broken"            0.95
    train "Someone stole my card!"                   test:1674 "Someone stole my cards!"              0.94
    train "is there a limit for top up?"             test:756  "Is there a limit for top-ups?"        0.96
    train "I tried to get some money but the machine was not working .The transaction still
           seems in progress! …"                     test:220  "Hi,I tried to get some money out but the machine …"
  near hits that are NOT the same request (the price of Jaccard 0.8 on 10-word texts):
    train "How can I top up my account with a cheque?"  test:1322 "How can I top up my account with a card?"  0.80
    train "What do I have to do to change my pin?"   test:1142  "What do i have to do to change my name?"  0.81
    train "Where can I get my card PIN?"             test:2485  "Where can I get my card at?"           0.80

When verification changed from the MinHash estimate (128 bins, ±0.035) to the exact
Jaccard, and LSH from 9×13 (P(candidate) = 0.40 at J = 0.8) to 16×6 (0.99), the
library-level near count went 129 → 172 pairs (115 → 148 test rows) and the workspace
CLI run 131 → 181 near hits. Read by eye (bench/results/dedup_b77_diff.json lists all 62 gained / 19 lost):
  gained, exact J ≥ 0.8 but missed before (54 of 62 were never LSH candidates at 9×13):
    train "Why did my transfer get declined?"        ~ test "Why did my my transfer get declined?"      0.90
    train "How can I exchange currencies with this app?" ~ "Can I exchange currencies with this app?"  0.90
    train "The attempted transfer failed."           ~ test "My attempted transfer failed."             0.81
    train "Can I activate my card?"                  ~ test "How can I activate my card>"               0.82
  lost, estimate ≥ 0.8 but exact J < 0.8:
    train "How long will it take to get to the US?"  ~ test "How long will it take to get to me?"  est 0.84, J 0.78
    train "Please delete my account now."            ~ test "Please delete my account right now!"  est 0.81, J 0.69
The library test below asserts every example listed here (pair and Jaccard, or its absence).
The decision at 0.8 is now exact, so these counts no longer depend on hashing luck at
the threshold (only on an LSH miss, probability ≤ 0.008 per pair at J ≥ 0.8).

Since the word edit rule (curate/shortdup.py) decides near pairs of texts of ≤ 20 words, the
CLI run finds 704 near hits instead of 181 (``--edit-words 0`` still gives 181). Read by eye
(568 train/other pairs gained, 45 lost):
  gained, edited copies Jaccard missed:
    train "I have lost my phone."                   ~ "I lost my phone!"
    train "Do the disposable cards have any restrictions?" ~ "Do the disposable cards have restrictions?"
    train "How can I transfer money to a beneficiary?" ~ "Can I transfer money to a beneficiery?"
    train "I can't get my card out of the ATM"      ~ "I cannot get my card out of the ATM."
  lost, different requests Jaccard had found:
    train "How can I top up my account with a cheque?" ~ "… with a card?"  (a word replaced)
    train "What do I have to do to change my pin?"  ~ "… change my name?"
    train "The attempted transfer failed."          ~ "My attempted transfer failed."  (a function word replaced)
  lost, rewordings beyond two small edits (the semantic detector's job):
    train "When I was abroad the exchange rate for me was wrong." ~ "The exchange rate for me was wrong when I was abroad."
    train "The app failed to verify my id."         ~ "The app failed to verify my identity."
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import dedup, leakage, minhash as mh, snapshot
from curate.cli import main as cli
from curate.example import Example, Source
from curate.review import decide

ROOT = Path(__file__).resolve().parent.parent
B77 = ROOT / "data" / "banking77"


def ex(user: str, split: str, answer: str = "a") -> Example:
    return Example(messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                   source=Source(kind="ticket", file="t.csv", loc=user[:6]), split=split)


TRAIN = [
    "How long does a transfer to Germany take from my account?",                 # 0 near copy of heldout 0
    "Can I get a refund for a card payment made last Tuesday at the grocery?",   # 1 exact copy of eval jsonl line 2
    "Which currencies can I hold in my wallet at the same time, and which ones can I exchange for free?",  # 2 near copy of eval csv row
    "I want to close my account and withdraw all of the money today",           # 3 clean
    "Why is there an extra fee on my statement for the ATM withdrawal?",        # 4 near copy of parquet row
]
HELD = ["How long does a transfer to Germany take from my account??!", "Is my card accepted in Japan?"]


@pytest.fixture
def leaky(store, tmp_path):
    store.add_examples([ex(t, "train") for t in TRAIN] + [ex(t, "heldout", "b") for t in HELD])
    jl = tmp_path / "eval.jsonl"
    jl.write_text("\n".join([
        json.dumps({"messages": [{"role": "user", "content": "Unrelated question about savings interest"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "can i get a REFUND for a card payment made last tuesday, at the grocery"}, {"role": "assistant", "content": "y"}]}),
        "{not json",
    ]) + "\n")
    cs = tmp_path / "eval.csv"
    with cs.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "label"])
        w.writerow(["Which currencies can i hold in my walet at the same time, and which ones can I exchange for free?", "x"])
        w.writerow(["", "x"])
    pq = tmp_path / "eval.parquet"
    pl.DataFrame({"prompt": ["Why is there an extra fee on my statment for the ATM withdrawal?", "hello"]}).write_parquet(pq)
    return [e.id for e in store.query({"split": "train"})], jl, cs, pq


def test_leakage_signals_report_and_snapshot_refusal(store, leaky, capsys, workspace):
    ids, jl, cs, pq = leaky
    cfg = dedup.DedupConfig(detectors=("exact", "near"), shingle="char")
    res = leakage.run(store, cfg, [str(jl)], None)
    leakage.run(store, cfg, [str(cs)], "query")  # rerun against another file: old signals are cleared first
    assert store.get(ids[1]).signals.get("leakage") is None
    # JSONL via messages, CSV and Parquet via --text-column (one column name per run)
    res = leakage.run(store, cfg, [str(jl)], None)
    assert res["counters"]["eval_rows_skipped"] == {str(jl): 1}
    sig = store.get(ids[1]).signals["leakage"]
    assert sig[0]["detector"] == "exact" and sig[0]["source"] == f"{jl}:2" and "REFUND" in sig[0]["other_text"]
    h0 = store.get(ids[0]).signals["leakage"][0]
    assert h0["detector"] == "exact" and h0["source"] == "heldout"  # "??!" normalises away
    assert res["counters"]["leaking_train_records"] == 2
    res = leakage.run(store, cfg, [str(pq)], "prompt")
    assert {h["train_id"] for h in res["hits"]} == {ids[0], ids[4]}
    assert res["hits"][-1]["detector"] == "near" and res["hits"][-1]["score"] >= 0.8

    # CLI: CSV with a column name; report and counters
    assert cli(["leakage", "--exact", "--near", "--shingle", "char", "--against", str(cs), "--text-column", "query",
                "--workspace", str(workspace), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["leaking_train_records"] == 2 and out["hits_by_source"] == {"heldout": 1, str(cs): 1}
    md = Path(store.meta_get("leakage_report_path")).read_text()
    assert "Which currencies can I hold in my wallet at the same time, and which ones can I exchange for free?" in md
    assert "Which currencies can i hold in my walet at the same time, and which ones can I exchange for free?" in md
    assert store.meta_get("leakage_counters")["hits"] == 2

    # snapshot create refuses the leaking train records and says where the report is
    decide(store, [e.id for e in store.query()], "approve", "alice")
    assert cli(["snapshot", "create", "v1", "--workspace", str(workspace)]) == 0
    text = capsys.readouterr().out
    assert "blocked by gates: 2 record(s) {'leakage': 2}" in text and "leakage-" in text
    rows = snapshot.load(store, "v1", "train")
    assert {r["id"] for r in rows} == set(ids) - {ids[0], ids[2]}


def test_eval_file_errors(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("question,label\nhi,x\n")
    with pytest.raises(ValueError, match=r"no column 'text' \(columns: \['question', 'label'\]\)"):
        leakage.read_eval_file(p, None)
    j = tmp_path / "e.jsonl"
    j.write_text('{"messages": [{"role": "user"}]}\n[1]\n')
    with pytest.raises(ValueError, match="no usable text rows"):
        leakage.read_eval_file(j, None)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"text": "a question"}\n{"messages": "nope"}\n\n{bad\n')
    f = leakage.read_eval_file(ok, None)
    assert [t.text for t in f.texts] == ["a question"]
    assert [p["source"].rsplit(":", 1)[1] for p in f.problems] == ["2", "4"]
    with pytest.raises(ValueError, match="unsupported eval file type"):
        leakage.read_eval_file(p.rename(tmp_path / "e.xlsx"), None)


def test_banking77_official_train_vs_test_library():
    """All 10,003 train rows vs all 3,080 test rows, straight through curate.minhash."""
    tr = [r["text"] for r in csv.DictReader((B77 / "train.csv").open())]
    te = [r["text"] for r in csv.DictReader((B77 / "test.csv").open())]
    sig, ex_ = mh.signatures_of(tr + te, "char")
    n = len(tr)
    in_train = set(ex_[:n].tolist())
    assert sum(h in in_train for h in ex_[n:].tolist()) == 25  # test rows with an exact (normalised) copy in train
    b, r = mh.lsh_params(0.8)
    cand = mh.lsh_candidates(sig, b, r)
    p, s = mh.near_pairs(sig, 0.8, b, r, tr + te, "char", candidates=cand[(cand[:, 0] < n) & (cand[:, 1] >= n)])
    assert len(p) == 172 and len(set(p[:, 1].tolist())) == 148  # near pairs / test rows involved
    pairs = {(tr[a], te[b_ - n]): round(float(j), 2) for (a, b_), j in zip(p.tolist(), s.tolist())}
    # the examples of the module docstring, read by eye (test rows are csv line numbers)
    te_exact = {h: i + 2 for i, h in enumerate(ex_[n:].tolist())}
    for train_text, line in [("Is there an auto top up option?", 334), ("What businesses accept this card?", 978),
                             ("My card payment was reverted, why?", 2083), ("\nHow do I unblock my PIN?", 556)]:
        assert te_exact.get(int(ex_[tr.index(train_text)])) == line, train_text
    for a, b_, j in [("I think my card is broke?", "I think my card is broken", 0.95),
                     ("Someone stole my card!", "Someone stole my cards!", 0.94),
                     ("is there a limit for top up?", "Is there a limit for top-ups?", 0.96),
                     ("How can I top up my account with a cheque?", "How can I top up my account with a card?", 0.80),
                     ("What do I have to do to change my pin?", "What do i have to do to change my name?", 0.81),
                     ("Where can I get my card PIN?", "Where can I get my card at?", 0.80),
                     ("Why did my transfer get declined?", "Why did my my transfer get declined?", 0.90),
                     ("How can I exchange currencies with this app?", "Can I exchange currencies with this app?", 0.90),
                     ("The attempted transfer failed.", "My attempted transfer failed.", 0.81),
                     ("Can I activate my card?", "How can I activate my card>", 0.82)]:
        assert pairs.get((a, b_)) == j, (a, b_)
    assert any(a.startswith("I tried to get some money but the machine") and b_.startswith("Hi,I tried to get some money")
               for a, b_ in pairs)
    for lost in [("How long will it take to get to the US?", "How long will it take to get to me?"),  # exact J 0.78
                 ("Please delete my account now.", "Please delete my account right now!")]:  # exact J 0.69
        assert lost not in pairs


def test_banking77_cli_workspace_vs_test_csv(workspace, capsys):
    """The user's path: ingest train.csv (split 80/20 into train/heldout), then leakage against test.csv."""
    assert cli(["ingest", str(B77 / "train.csv"), "--workspace", str(workspace), "--json"]) == 0
    capsys.readouterr()
    assert cli(["leakage", "--exact", "--near", "--against", str(B77 / "test.csv"), "--text-column", "text",
                "--workspace", str(workspace), "--json"]) == 0
    k = json.loads(capsys.readouterr().out)
    assert k["params"]["shingle"] == "char"  # auto: median BANKING77 query has < 12 words
    assert k["params"]["edit_rule"]["decides_pairs_up_to_words"] == 20
    assert k["read"]["train"] == 8001 and k["read"]["heldout"] == 1998
    # near = MinHash/Jaccard for pairs with a text of > 20 words, the word edit rule below (docstring)
    assert k["detectors"]["exact"]["hits"] == 22 and k["detectors"]["near"]["hits"] == 704
    assert k["detectors"]["near"]["jaccard_pairs"] == 31 and k["detectors"]["near"]["edit_pairs"] == 698
    assert k["leaking_train_records"] == 572
    assert k["hits_by_source"] == {"heldout": 240, str(B77 / "test.csv"): 486}
    rep = Path(k["report"]).with_suffix(".jsonl").read_text()
    assert '"train_text": "I think my card is broke?"' in rep and '"other_text": "I think my card is broken"' in rep
    assert '"other_text": "How can I top up my account with a card?"' not in rep  # "… with a cheque?": another request
    # --edit-words 0: Jaccard ≥ 0.8 on char 5-grams for every pair, the counts before the edit rule
    assert cli(["leakage", "--exact", "--near", "--edit-words", "0", "--against", str(B77 / "test.csv"),
                "--text-column", "text", "--workspace", str(workspace), "--json"]) == 0
    k0 = json.loads(capsys.readouterr().out)
    assert k0["detectors"]["near"]["hits"] == 181 and k0["leaking_train_records"] == 191 and k0["params"]["edit_rule"] is None
    assert k0["hits_by_source"] == {"heldout": 63, str(B77 / "test.csv"): 140}


@pytest.mark.slow
def test_banking77_semantic_leakage(workspace, capsys):
    """All three detectors (embeds ~13k texts on CPU: minutes). At cosine 0.95 the semantic
    detector adds paraphrase-level leaks — BANKING77 is built from rewordings of the same
    77 requests, so about a fifth of its train queries have a test/held-out rewording, e.g.
      "how do I get my card to show in the app?" ~ "How do I make my card appear on the app?" (0.954).
    Counts measured on CPU (all-MiniLM-L6-v2 fp32): 2706 semantic hits on 1453 train records
    (a hit counts for its strongest detector, exact > near > semantic: before the word edit
    rule took the short near pairs, 2887 on 1547, and 1625 leaking train records instead of
    1829; measured with 701 near hits, 3 fewer than now); a tolerance of 2 % absorbs float
    differences across BLAS/GPU."""
    assert cli(["ingest", str(B77 / "train.csv"), "--workspace", str(workspace), "--json"]) == 0
    capsys.readouterr()
    assert cli(["leakage", "--against", str(B77 / "test.csv"), "--text-column", "text",
                "--workspace", str(workspace), "--json"]) == 0
    k = json.loads(capsys.readouterr().out)
    sem = k["detectors"]["semantic"]
    assert k["detectors"]["exact"]["hits"] == 22 and k["detectors"]["near"]["hits"] == 704
    assert abs(sem["hits"] - 2706) <= 0.02 * 2706 and abs(sem["train_records"] - 1453) <= 0.02 * 1453
    assert abs(k["leaking_train_records"] - 1829) <= 0.02 * 1829
