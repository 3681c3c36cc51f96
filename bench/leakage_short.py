"""Short-query leakage benchmark: edited copies of real support queries planted in an eval file.

    .venv/bin/python bench/leakage_short.py                                  # ~1 min on this 2-core box
    .venv/bin/python bench/leakage_short.py --out bench/results/leakage_short.json

Data: every distinct BANKING77 query (``data/banking77/{train,test}.csv``, 13 083 rows,
deduplicated after normalisation) and the ABCD sample's customer turns of ≥ 4 words
without digits or ``@`` (``data/abcd/abcd_sample.json``), with their intent (ABCD: flow).
With this bench's own seed they are split, within each intent, into a **workspace pool**
(55 %) and a **clean pool** (45 %), disjoint.

Eval file = planted rows + every clean-pool row, shuffled:

* **planted** — for each edit type, ``--per-type`` workspace queries (a quarter from each
  length bucket ≤7, 8–12, 13–20, >20 words where the bucket has them), copied with ONE
  edit of that type: ``exact``, ``typo`` (a letter replaced by a keyboard neighbour),
  ``transposition`` (two adjacent letters), ``dropped_letter``, ``word_swap`` (two
  adjacent words), ``inserted_filler`` (a filler word such as "please", "just", "again"),
  ``dropped_word``, ``case``, ``punctuation`` (final mark changed, sometimes a comma), and
  ``two_edits`` (two different types of the six word/letter edits). Plus the three
  edited leaks quoted in the issue, verbatim.
* **clean** — other real queries. A clean row that is itself within two such edits of a
  workspace query (BANKING77 was written by editing queries: "I need to delete my account,
  please." ~ "I need to delete my account.") is a *natural copy*, not a negative: it is
  reported apart and left out of precision. Which rows those are is decided by an oracle
  that knows only the edit model above (the fewest edits of these kinds that turn one
  text into the other, either way), not by any detector; it compares the words the
  detectors see (case, punctuation gone; "I'm" = "I am"; "top-up" ~ "top up" one edit).
  Every other clean row is a **negative**; the **hard negatives** are the negatives whose
  word set has Jaccard ≥ 0.5 with a same-intent workspace query ("How do I top up my
  card?" ~ "How can I top-up my card by bank transfer?", the issue's example, is added).

Detectors, on the same workspace (all queries in the ``train`` split) and eval file:

* **ours**: ``curate leakage --exact --near --against eval.csv`` (``leakage.run``), default
  settings: exact + MinHash/Jaccard for long pairs + the word edit rule for short ones;
* **previous**: the same with ``--edit-words 0`` (Jaccard ≥ 0.8 on char 5-grams for every
  pair: what the issue measured);
* **datasketch**: ``MinHashLSH(threshold=0.8, num_perm=128)`` over the set of words of
  each normalised text (its README's usage: one ``update`` per word), workspace inserted,
  each eval row queried; a row is flagged when the query returns anything. As variants
  (JSON only): word 3-grams at 0.8 (the long-text bench's setting) and words at 0.5.

Figures (a row is *flagged* when any workspace query matches it):

* recall per edit type and per length bucket (of the planted query's original) = flagged
  planted rows / planted rows; ``source_found``: share of flagged planted rows whose
  matches include their original (or a copy of it);
* ``fp_rate`` = flagged negatives / negatives (also per bucket and on hard negatives);
* precision per edit type = TP / (TP + fp_rate · n): the precision of an eval file that
  holds that type's planted rows and as many clean negatives (1:1; per bucket the same with
  the bucket's own fp_rate); ``precision_in_this_file``: TP / (TP + FP) over this file as built.

Long texts: ``bench/dedup.py``'s planted corpus (60–140 words) at ``--long`` records through
the MinHash path, and the same pairs after :func:`curate.dedup.merge_near` with the edit
rule (no text of that corpus is short enough to be indexed, so the pairs must be identical).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import string
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from curate import minhash as mh, shortdup as sd  # noqa: E402

SEED = 20261203
BUCKETS = ("<=7", "8-12", "13-20", ">20")
TYPES = ("exact", "typo", "transposition", "dropped_letter", "word_swap", "inserted_filler", "dropped_word", "case",
         "punctuation", "two_edits")
WORD_EDITS = ("typo", "transposition", "dropped_letter", "word_swap", "inserted_filler", "dropped_word")
FILLERS = ("please", "just", "again", "actually", "really", "so", "also", "now", "kindly", "um", "hey", "basically")
ISSUE_LEAKS = [("Where do I find the virtual card?", "Where do I fnid the virtual card?"),
               ("I need to know your exchange rates.", "I need to your know exchange rates?"),
               ("is my card PIN saved in the app", "is again my card PIN saved in app the")]
ISSUE_NEGATIVE = ("How do I top up my card?", "How can I top-up my card by bank transfer?")


def bucket(n_words: int) -> str:
    return "<=7" if n_words <= 7 else "8-12" if n_words <= 12 else "13-20" if n_words <= 20 else ">20"


def nwords(t: str) -> int:
    return len(mh.normalize(t).split())


# --------------------------------------------------------------------------- data
def load_queries() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for f in ("train", "test"):
        with (ROOT / "data" / "banking77" / f"{f}.csv").open(encoding="utf-8", newline="") as fh:
            rows += [(r["text"].strip(), r["category"]) for r in csv.DictReader(fh)]
    for conv in json.loads((ROOT / "data" / "abcd" / "abcd_sample.json").read_text()):
        for who, t in conv.get("original", []):
            if who == "customer" and len(t.split()) >= 4 and not re.search(r"[\d@]", t):
                rows.append((t.strip(), "abcd:" + conv["scenario"]["flow"]))
    seen, out = set(), []
    for t, lab in rows:
        k = mh.normalize(t)
        if k and k not in seen:
            seen.add(k)
            out.append((t, lab))
    return out


# --------------------------------------------------------------------------- edits (one each)
_TOK = re.compile(r"\S+")
_KEYS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
NEIGHBOURS = {c: "".join(r[max(0, i - 1) : i] + r[i + 1 : i + 2]) for r in _KEYS for i, c in enumerate(r)}


def _letter_words(t: str, minlen: int) -> list[tuple[int, int]]:
    """(start, end) of the alphabetic core of each whitespace token with ≥ minlen letters."""
    out = []
    for m in _TOK.finditer(t):
        s, e = m.start(), m.end()
        while s < e and not t[s].isalpha():
            s += 1
        while e > s and not t[e - 1].isalpha():
            e -= 1
        if e - s >= minlen and t[s:e].isalpha():
            out.append((s, e))
    return out


def _spot(t: str, rnd: random.Random, minlen: int, margin: int = 0) -> int | None:
    """A random letter position inside a word of ≥ minlen letters (not among its last ``margin``)."""
    ws = _letter_words(t, minlen)
    if not ws:
        return None
    s, e = rnd.choice(ws)
    return rnd.randrange(s, e - margin)


def e_typo(t, rnd):
    j = _spot(t, rnd, 3)
    if j is None:
        return None
    c = t[j].lower()
    r = rnd.choice(NEIGHBOURS.get(c) or [x for x in string.ascii_lowercase if x != c])
    return t[:j] + (r.upper() if t[j].isupper() else r) + t[j + 1 :]


def e_transposition(t, rnd):
    for _ in range(20):
        j = _spot(t, rnd, 3, 1)
        if j is None:
            return None
        if t[j].lower() != t[j + 1].lower():
            return t[:j] + t[j + 1] + t[j] + t[j + 2 :]
    return None


def e_dropped_letter(t, rnd):
    j = _spot(t, rnd, 4)
    return None if j is None else t[:j] + t[j + 1 :]


def e_word_swap(t, rnd):
    w = t.split()
    if len(w) < 3:
        return None
    for _ in range(20):
        i = rnd.randrange(len(w) - 1)
        x, y = w[i].rstrip("?.!,"), w[i + 1].rstrip("?.!,")
        if x and y and x.lower() != y.lower():
            w[i], w[i + 1] = y, x + w[i + 1][len(y) :]  # the final mark stays at the end
            return " ".join(w)
    return None


def e_inserted_filler(t, rnd):
    w = t.split()
    w.insert(rnd.randrange(len(w) + 1), rnd.choice(FILLERS))
    return " ".join(w)


def e_dropped_word(t, rnd):
    w = t.split()
    if len(w) < 4:
        return None
    del w[rnd.randrange(len(w))]
    return " ".join(w)


def e_case(t, rnd):
    for how in rnd.sample(["lower", "upper", "title", "first"], 4):
        r = {"lower": t.lower(), "upper": t.upper(), "title": t.title(), "first": t[:1].swapcase() + t[1:]}[how]
        if r != t:
            return r
    return None


def e_punctuation(t, rnd):
    s = t.rstrip()
    end = s[-1] if s and s[-1] in "?.!" else ""
    body = s[:-1] if end else s
    r = body + rnd.choice([x for x in ("", "?", ".", "!", "??", "?!") if x != end])
    if rnd.random() < 0.3 and " " in body:
        w = body.split()
        i = rnd.randrange(len(w) - 1)
        w[i] += ","
        r = " ".join(w) + r[len(body) :]
    return r if r != t else None


EDITS = {"typo": e_typo, "transposition": e_transposition, "dropped_letter": e_dropped_letter,
         "word_swap": e_word_swap, "inserted_filler": e_inserted_filler, "dropped_word": e_dropped_word,
         "case": e_case, "punctuation": e_punctuation}


def apply_edit(t: str, kind: str, rnd: random.Random) -> str | None:
    if kind == "exact":
        return t
    if kind == "two_edits":
        a, b = rnd.sample(WORD_EDITS, 2)
        x = EDITS[a](t, rnd)
        return EDITS[b](x, rnd) if x else None
    return EDITS[kind](t, rnd)


# --------------------------------------------------------------------------- the oracle (truth for clean rows)
def _oracle_kernels():
    import numba

    big = 1 << 20

    @numba.njit(cache=True)
    def chars_dist(chars, coff, exp1, exp2, x, y):
        """Fewest letter edits of the generator turning word x into word y: substitutions and
        transpositions (x of ≥ 3 letters), dropped letters (x of ≥ 4), no inserted letter
        (two contractions of the same words, "cant" and "cannot", are equal)."""
        a0, b0 = coff[x], coff[y]
        la, lb = coff[x + 1] - a0, coff[y + 1] - b0
        if x == y or (exp1[x] >= 0 and exp1[x] == exp1[y] and exp2[x] == exp2[y]):
            return 0
        if lb > la or la - lb > 2 or la < 3 or (la > lb and la < 4):
            return big
        d = np.zeros((la + 1, lb + 1), np.int64)
        for i in range(la + 1):
            d[i, 0] = i
        for j in range(1, lb + 1):
            d[0, j] = big
        for i in range(1, la + 1):
            for j in range(1, lb + 1):
                v = min(d[i - 1, j] + 1, d[i - 1, j - 1] + (0 if chars[a0 + i - 1] == chars[b0 + j - 1] else 1))
                if i > 1 and j > 1 and chars[a0 + i - 1] == chars[b0 + j - 2] and chars[a0 + i - 2] == chars[b0 + j - 1]:
                    v = min(v, d[i - 2, j - 2] + 1)
                d[i, j] = v
        return d[la, lb]

    @numba.njit(cache=True)
    def concat(chars, coff, x1, x2, y):
        l1, l2 = coff[x1 + 1] - coff[x1], coff[x2 + 1] - coff[x2]
        if l1 + l2 != coff[y + 1] - coff[y]:
            return False
        for k in range(l1):
            if chars[coff[x1] + k] != chars[coff[y] + k]:
                return False
        for k in range(l2):
            if chars[coff[x2] + k] != chars[coff[y] + l1 + k]:
                return False
        return True

    @numba.njit(cache=True)
    def directed(tok, a0, n, b0, m, chars, coff, filler, exp1, exp2):
        """Fewest generator edits turning token run a into b: drop a word, insert a filler,
        swap two adjacent words, letter edits inside a word (each one edit); a compound
        written as one word or two ("top-up" ~ "top up", one edit: a punctuation change); a
        contraction and its two words ("I'm" ~ "I am": the same words, no edit)."""
        C = np.empty((n + 1, m + 1), np.int64)  # C[i, j]: letter edits turning a[i-1] into b[j-1]
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                C[i, j] = chars_dist(chars, coff, exp1, exp2, tok[a0 + i - 1], tok[b0 + j - 1])
        D = np.full((n + 1, m + 1), big, np.int64)
        D[0, 0] = 0
        for i in range(n + 1):
            for j in range(m + 1):
                if i == 0 and j == 0:
                    continue
                v = big
                if i > 0:
                    v = min(v, D[i - 1, j] + 1)
                if j > 0 and filler[tok[b0 + j - 1]]:
                    v = min(v, D[i, j - 1] + 1)
                if i > 0 and j > 0:
                    x, y = tok[a0 + i - 1], tok[b0 + j - 1]
                    v = min(v, D[i - 1, j - 1] + C[i, j])
                    if i > 1 and j > 1:
                        v = min(v, D[i - 2, j - 2] + 1 + C[i, j - 1] + C[i - 1, j])
                    if i > 1:
                        if exp1[y] == tok[a0 + i - 2] and exp2[y] == x:
                            v = min(v, D[i - 2, j - 1])
                        elif concat(chars, coff, tok[a0 + i - 2], x, y):
                            v = min(v, D[i - 2, j - 1] + 1)
                    if j > 1:
                        if exp1[x] == tok[b0 + j - 2] and exp2[x] == y:
                            v = min(v, D[i - 1, j - 2])
                        elif concat(chars, coff, tok[b0 + j - 2], y, x):
                            v = min(v, D[i - 1, j - 2] + 1)
                D[i, j] = min(v, big)
        return D[n, m]

    @numba.njit(cache=True)
    def loop(tok, off, chars, coff, filler, exp1, exp2, a, b, out):
        for p in range(len(a)):
            i, j = a[p], b[p]
            x = directed(tok, off[i], off[i + 1] - off[i], off[j], off[j + 1] - off[j], chars, coff, filler, exp1, exp2)
            y = directed(tok, off[j], off[j + 1] - off[j], off[i], off[i + 1] - off[i], chars, coff, filler, exp1, exp2)
            out[p] = min(x, y)

    return loop


def oracle_edits(texts: list[str], pairs: np.ndarray) -> np.ndarray:
    """Fewest edits of the bench's kinds between the texts of each pair (either direction)."""
    enc = sd.Encoder(max_words=10**6)
    enc.add(texts)
    e = enc.finish()
    filler = np.zeros(len(e.coff) - 1, bool)  # the vocabulary, + the words of contractions
    filler[[i for w, i in enc.vocab.items() if w in FILLERS]] = True
    out = np.zeros(len(pairs), np.int64)
    if len(pairs):
        _oracle_kernels()(e.tok, e.off, e.chars, e.coff, filler, e.exp1, e.exp2, np.ascontiguousarray(pairs[:, 0]),
                          np.ascontiguousarray(pairs[:, 1]), out)
    return out


def word_overlap_pairs(texts: list[str], left: int, min_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (workspace row < left, clean row ≥ left) that share all but ≤ 3 of the distinct
    words of each (every pair within 2 edits does — an edit changes at most one word of each
    text —, with one contraction more; independent of the detectors' candidate generation)
    or whose word-set Jaccard is ≥ ``min_share``, and that Jaccard."""
    import scipy.sparse as sps

    enc = sd.Encoder(max_words=10**6)
    enc.add(texts)
    e = enc.finish()
    X = sps.csr_matrix((np.ones(len(e.tok)), e.tok.copy(), e.off.copy()), shape=(len(texts), len(enc.vocab)))
    X.sum_duplicates()
    X.data[:] = 1
    nd = np.asarray(X.sum(1)).ravel()
    XL = X[:left].T.tocsc()
    ps, shares = [], []
    for s in range(left, len(texts), 500):
        O = (X[s : s + 500] @ XL).tocoo()
        share = O.data / np.maximum(nd[s + O.row] + nd[O.col] - O.data, 1)
        big = np.maximum(nd[s + O.row], nd[O.col])
        k = O.data >= np.maximum(big - 5, 1)  # 2 edits (a merge: 2 words) + contractions ("didn't" ~ "did not": 2)
        if min_share > 0:
            k |= share >= min_share
        ps.append(np.stack([O.col[k], s + O.row[k]], axis=1).astype(np.int64))
        shares.append(share[k])
    return np.concatenate(ps), np.concatenate(shares)


# --------------------------------------------------------------------------- detectors
def run_ours(work: list[str], evals: list[str], edit_words: int | None = None) -> tuple[dict[int, set[int]], float]:
    """``curate leakage --exact --near --against eval.csv`` on a workspace holding ``work`` as
    train records → eval row → matched workspace rows."""
    from curate import leakage
    from curate.dedup import DedupConfig
    from curate.example import Example, Source
    from curate.store import open_store

    with tempfile.TemporaryDirectory() as d:
        store = open_store(Path(d) / "ws")
        store.add_examples([Example(messages=[{"role": "user", "content": t}, {"role": "assistant", "content": "x"}],
                                    source=Source(kind="ticket", file="work.csv", loc=str(i)), split="train")
                            for i, t in enumerate(work)])
        ev = Path(d) / "eval.csv"
        with ev.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text"])
            w.writerows([t] for t in evals)
        ids = {e.id: int(e.source.loc) for e in store.query({"split": "train"})}
        cfg = DedupConfig(detectors=("exact", "near"))
        if edit_words is not None:
            cfg.edit_words = edit_words
        sd.near_pairs(sd.encode(["load the compiled kernels", "load the compiled kernel"]))  # not timed
        c0 = time.process_time()
        res = leakage.run(store, cfg, [str(ev)], "text")
        cpu = time.process_time() - c0
        store.close()
    hits: dict[int, set[int]] = defaultdict(set)
    for h in res["hits"]:
        hits[int(h["source"].rsplit(":", 1)[1]) - 2].add(ids[h["train_id"]])  # CSV line 2 = eval row 0
    return hits, cpu


def run_datasketch(work: list[str], evals: list[str], threshold: float = 0.8, ngram: int = 1
                   ) -> tuple[dict[int, set[int]], float]:
    from datasketch import MinHash, MinHashLSH

    def mhash(t: str) -> MinHash:
        w = mh.normalize(t).split()
        sh = {" ".join(w[i : i + ngram]) for i in range(max(1, len(w) - ngram + 1))}
        m = MinHash(num_perm=128)
        m.update_batch([s.encode() for s in sh])
        return m

    c0 = time.process_time()
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    with lsh.insertion_session() as s:
        for i, t in enumerate(work):
            s.insert(i, mhash(t), check_duplication=False)
    hits = {j: set(lsh.query(mhash(t))) for j, t in enumerate(evals)}
    return {j: h for j, h in hits.items() if h}, time.process_time() - c0


# --------------------------------------------------------------------------- scoring
def score(hits: dict[int, set[int]], planted: list[dict], clean: list[dict], same_as: dict[int, set[int]]) -> dict:
    neg = [c for c in clean if c["label"] == "negative"]
    fp = sum(1 for c in neg if c["row"] in hits)
    f = fp / max(1, len(neg))
    hard = [c for c in neg if c["hard"]]
    natural = [c for c in clean if c["label"] == "natural_copy"]
    out: dict = {"negatives": len(neg), "fp": fp, "fp_rate": round(f, 5),
                 "hard_negatives": len(hard), "hard_fp": sum(1 for c in hard if c["row"] in hits),
                 "natural_copies": len(natural), "natural_copies_flagged": sum(1 for c in natural if c["row"] in hits)}
    out["hard_fp_rate"] = round(out["hard_fp"] / max(1, len(hard)), 5)

    def block(rows: list[dict], f_: float) -> dict:
        tp = sum(1 for p in rows if p["row"] in hits)
        src = sum(1 for p in rows if p["row"] in hits and hits[p["row"]] & same_as[p["source"]])
        prec = tp / (tp + f_ * len(rows)) if tp else 0.0
        return {"n": len(rows), "found": tp, "recall": round(tp / max(1, len(rows)), 4),
                "precision": round(prec, 4), "source_found": round(src / max(1, tp), 4)}

    by_bucket_f = {}
    for bk in BUCKETS:
        nb = [c for c in neg if c["bucket"] == bk]
        by_bucket_f[bk] = (sum(1 for c in nb if c["row"] in hits) / max(1, len(nb)), len(nb))
    out["by_type"] = {t: block([p for p in planted if p["type"] == t], f) for t in TYPES + ("issue_examples",)}
    out["by_bucket"] = {}
    for bk in BUCKETS:
        edited = [p for p in planted if p["bucket"] == bk and p["type"] not in ("exact", "issue_examples")]
        b = block(edited, by_bucket_f[bk][0])
        b.update(negatives=by_bucket_f[bk][1], fp_rate=round(by_bucket_f[bk][0], 5))
        b["by_type"] = {t: block([p for p in planted if p["bucket"] == bk and p["type"] == t], by_bucket_f[bk][0])["recall"]
                        for t in TYPES}
        out["by_bucket"][bk] = b
    short = [p for p in planted if p["bucket"] != ">20" and p["type"] not in ("exact", "issue_examples")]
    nshort = [c for c in neg if c["bucket"] != ">20"]
    f_short = sum(1 for c in nshort if c["row"] in hits) / max(1, len(nshort))
    out["short_edited"] = block(short, f_short) | {"fp_rate": round(f_short, 5), "negatives": len(nshort)}
    edited = [p for p in planted if p["type"] != "exact"]
    tp = sum(1 for p in edited if p["row"] in hits)
    out["edited_all"] = block(edited, f)
    allp = sum(1 for p in planted if p["row"] in hits)
    out["precision_in_this_file"] = round(allp / max(1, allp + fp), 4)
    out["issue_recall_edited"] = round(tp / max(1, len(edited)), 4)
    return out


# --------------------------------------------------------------------------- long texts (existing path)
def long_text_figures(n: int, seed: int) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    import dedup as bd  # bench/dedup.py

    from curate.dedup import merge_near

    docs, planted = bd.make_corpus(n, seed)
    truth = {}
    for b, v, _m in planted:
        a, c = min(b, v), max(b, v)
        truth[(a, c)] = bd.jaccard(docs[a], docs[c])
    by_base = defaultdict(list)
    for b, v, _m in planted:
        by_base[b].append(v)
    for vs in by_base.values():
        for i in range(len(vs)):
            for j in range(i + 1, len(vs)):
                a, c = min(vs[i], vs[j]), max(vs[i], vs[j])
                truth.setdefault((a, c), bd.jaccard(docs[a], docs[c]))
    found, stats, _cand = bd.run_ours(docs)
    enc = sd.encode(docs)
    p = np.array(sorted(found), np.int64).reshape(-1, 2)
    ep, _, es = sd.near_pairs(enc)
    merged, _ = merge_near((p, np.ones(len(p), np.float32)), enc, (ep, es), sd.SHORT_MAX_WORDS)
    same = {tuple(x) for x in merged.tolist()} == found
    sc = bd.score(found, truth, docs, n)
    return {"records": n, "words_per_text": "60-140", "texts_indexed_by_edit_rule": int((np.diff(enc.off) > 0).sum()),
            "pairs_identical_with_edit_rule": bool(same), "recall": sc["recall"], "precision": sc["precision"],
            "docs_per_cpu_s": round(n / stats["cpu_s"]) if stats["cpu_s"] else None,
            "note": "bench/dedup.py corpus and path (run_ours: 16x6 LSH, exact Jaccard >= 0.8 on word 3-grams)"}


# --------------------------------------------------------------------------- main
def build(seed: int, per_type: int):
    rnd = random.Random(seed)
    queries = load_queries()
    issue_orig = {o for o, _ in ISSUE_LEAKS} | {ISSUE_NEGATIVE[0]}
    by_label = defaultdict(list)
    for t, lab in queries:
        by_label[lab].append(t)
    work, clean_pool = [], []
    for lab in sorted(by_label):
        ts = by_label[lab]
        rnd.shuffle(ts)
        k = int(round(len(ts) * 0.55))
        work += [(t, lab) for t in ts[:k]]
        clean_pool += [(t, lab) for t in ts[k:]]
    # the issue's originals are workspace queries; its negative is a clean one
    norm_issue = {mh.normalize(x) for x in issue_orig}
    moved = [x for x in clean_pool if mh.normalize(x[0]) in norm_issue]
    clean_pool = [x for x in clean_pool if mh.normalize(x[0]) not in norm_issue]
    work += moved
    if mh.normalize(ISSUE_NEGATIVE[1]) not in {mh.normalize(t) for t, _ in work + clean_pool}:
        clean_pool.append((ISSUE_NEGATIVE[1], "top_up_by_bank_transfer_charge"))
    rnd.shuffle(work)
    wtexts = [t for t, _ in work]
    wlab = [lab for _, lab in work]
    wnorm = defaultdict(set)  # normalised text → workspace rows (copies of one another)
    for i, t in enumerate(wtexts):
        wnorm[" ".join(sd.tokens(t))].add(i)
    same_as = {i: wnorm[" ".join(sd.tokens(t))] for i, t in enumerate(wtexts)}
    by_bk = defaultdict(list)
    for i, t in enumerate(wtexts):
        by_bk[bucket(nwords(t))].append(i)
    planted = []  # {"text", "type", "source", "bucket"}
    for typ in TYPES:
        quota = {bk: per_type // len(BUCKETS) for bk in BUCKETS}
        for bk in BUCKETS:
            got, tries = 0, 0
            while got < quota[bk] and tries < 50 * quota[bk]:
                tries += 1
                i = rnd.choice(by_bk[bk])
                e = apply_edit(wtexts[i], typ, rnd)
                if e is None or (typ != "exact" and e == wtexts[i]):
                    continue
                planted.append({"text": e, "type": typ, "source": i, "bucket": bk})
                got += 1
    idx = {mh.normalize(t): i for i, t in enumerate(wtexts)}
    for o, e in ISSUE_LEAKS:
        i = idx[mh.normalize(o)]
        planted.append({"text": e, "type": "issue_examples", "source": i, "bucket": bucket(nwords(o))})
    clean = [{"text": t, "intent": lab, "bucket": bucket(nwords(t))} for t, lab in clean_pool]
    # truth of the clean rows: natural copies (oracle ≤ 2 edits from some workspace query) vs negatives
    texts = wtexts + [c["text"] for c in clean]
    pairs, share = word_overlap_pairs(texts, len(wtexts), 0.5)
    edits = oracle_edits(texts, pairs)
    nearest = {}
    hard = set()
    for (a, b), e, sh in zip(pairs.tolist(), edits.tolist(), share.tolist()):
        c = b - len(wtexts)
        if e < nearest.get(c, (99, -1))[0]:
            nearest[c] = (e, a)
        if sh >= 0.5 and wlab[a] == clean[c]["intent"]:
            hard.add(c)
    for k, c in enumerate(clean):
        e, a = nearest.get(k, (99, -1))
        c["label"] = "natural_copy" if e <= 2 else "negative"
        c["hard"] = k in hard or c["text"] == ISSUE_NEGATIVE[1]
        if e <= 2:
            c["copy_of"] = a
    # sanity: the generator's edits are within the oracle's reach
    pp = np.array([[p["source"], len(wtexts) + k] for k, p in enumerate(planted)], np.int64)
    po = oracle_edits(wtexts + [p["text"] for p in planted], pp)
    return work, wtexts, planted, clean, same_as, po


def build_eval(seed: int, per_type: int):
    work, wtexts, planted, clean, same_as, po = build(seed, per_type)
    rnd = random.Random(seed + 1)
    rows = [("p", k) for k in range(len(planted))] + [("c", k) for k in range(len(clean))]
    rnd.shuffle(rows)
    evals = []
    for r, (kind, k) in enumerate(rows):
        item = planted[k] if kind == "p" else clean[k]
        item["row"] = r
        evals.append(item["text"])
    return work, wtexts, planted, clean, same_as, po, evals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--per-type", type=int, default=160, help="planted rows per edit type (a quarter per length bucket)")
    ap.add_argument("--long", type=int, default=20000, help="records of the long-text corpus (0: skip)")
    ap.add_argument("--check-seeds", type=int, default=2,
                    help="also run ours on this many other seeds (not used to set anything), summary only")
    ap.add_argument("--out", help="write the JSON here too (e.g. bench/results/leakage_short.json)")
    args = ap.parse_args()
    t0 = time.time()
    work, wtexts, planted, clean, same_as, po, evals = build_eval(args.seed, args.per_type)
    results = {}
    ours, cpu = run_ours(wtexts, evals)
    results["ours"] = score(ours, planted, clean, same_as) | {"cpu_s": round(cpu, 2)}
    prev, cpu = run_ours(wtexts, evals, edit_words=0)
    results["previous_jaccard_only"] = score(prev, planted, clean, same_as) | {"cpu_s": round(cpu, 2)}
    ds, cpu = run_datasketch(wtexts, evals)
    results["datasketch"] = score(ds, planted, clean, same_as) | {"cpu_s": round(cpu, 2),
                                                                   "settings": "MinHashLSH(threshold=0.8, num_perm=128), word set"}
    variants = {}
    for name, th, ng in (("word_3grams_0.8", 0.8, 3), ("words_0.5", 0.5, 1)):
        h, cpu = run_datasketch(wtexts, evals, th, ng)
        s = score(h, planted, clean, same_as)
        variants[name] = {"by_type_recall": {t: v["recall"] for t, v in s["by_type"].items()},
                          "short_edited": s["short_edited"], "fp_rate": s["fp_rate"], "hard_fp_rate": s["hard_fp_rate"],
                          "cpu_s": round(cpu, 2)}
    results["datasketch_variants"] = variants

    def examples(hits, which, n=12):
        out = []
        for c in clean:
            if c["label"] == which and c["row"] in hits and len(out) < n:
                out.append({"eval": c["text"], "workspace": wtexts[min(hits[c["row"]])]})
        return out

    def misses(hits, n=20):
        return [{"type": p["type"], "original": wtexts[p["source"]], "edited": p["text"]}
                for p in planted if p["row"] not in hits and p["type"] != "exact"][:n]

    out = {
        "bench": "bench/leakage_short.py", "seed": args.seed, "per_type": args.per_type,
        "data": {"workspace_queries": len(wtexts), "planted_rows": len(planted),
                 "clean_rows": len(clean), "negatives": sum(c["label"] == "negative" for c in clean),
                 "hard_negatives": sum(c["label"] == "negative" and c["hard"] for c in clean),
                 "natural_copies": sum(c["label"] == "natural_copy" for c in clean),
                 "planted_per_type": {t: sum(p["type"] == t for p in planted) for t in TYPES + ("issue_examples",)},
                 "planted_per_bucket": {bk: sum(p["bucket"] == bk for p in planted) for bk in BUCKETS},
                 "planted_beyond_two_oracle_edits": int((po > 2).sum())},
        "definitions": {
            "recall": "flagged planted rows / planted rows (a row is flagged when any workspace query matches it)",
            "fp_rate": "flagged negatives / negatives (clean rows more than 2 edits from every workspace query)",
            "precision": "TP / (TP + fp_rate * n): an eval file with that type's planted rows and as many clean negatives",
            "precision_in_this_file": "TP / (TP + FP) over this eval file as built",
            "short_edited": "planted rows with 1-2 edits (all types but exact) of originals of <= 20 words; fp_rate on negatives of <= 20 words",
            "source_found": "flagged planted rows whose matches include their original (or a copy of it)"},
        "results": results,
        "issue_examples": {e: {"ours": any(p["row"] in ours for p in planted if p["text"] == e),
                               "previous": any(p["row"] in prev for p in planted if p["text"] == e),
                               "datasketch": any(p["row"] in ds for p in planted if p["text"] == e)} for _, e in ISSUE_LEAKS},
        "issue_negative_flagged": {"ours": any(c["row"] in ours for c in clean if c["text"] == ISSUE_NEGATIVE[1]),
                                   "previous": any(c["row"] in prev for c in clean if c["text"] == ISSUE_NEGATIVE[1])},
        "examples": {"ours_false_positives": examples(ours, "negative"), "ours_natural_copies_found": examples(ours, "natural_copy"),
                     "ours_misses": misses(ours), "previous_false_positives": examples(prev, "negative")},
    }
    checks = {}
    for k in range(1, args.check_seeds + 1):
        _w, wt, pl, cl, sa, _po, ev = build_eval(args.seed + 1000 * k, args.per_type)
        h, _ = run_ours(wt, ev)
        r = score(h, pl, cl, sa)
        checks[str(args.seed + 1000 * k)] = {"by_type": {t: [v["recall"], v["precision"]] for t, v in r["by_type"].items()},
                                             "short_edited": {x: r["short_edited"][x] for x in ("recall", "precision", "fp_rate")},
                                             "fp_rate": r["fp_rate"], "hard_fp_rate": r["hard_fp_rate"]}
    out["ours_other_seeds"] = checks
    if args.long:
        out["long_texts"] = long_text_figures(args.long, args.seed)
    out["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg": list(os.getloadavg()),
                      "kernel": "numba" if sd.JIT else "python", "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out, indent=1, ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
