"""Near-dup benchmark: curate.minhash vs plain datasketch on a corpus with planted near-duplicates.

    .venv/bin/python bench/dedup.py                      # 20k and 100k records
    .venv/bin/python bench/dedup.py --sizes 20000 100000 1000000
    .venv/bin/python bench/dedup.py --out bench/results/dedup.json
    .venv/bin/python bench/dedup.py --profile 50000      # per-stage CPU time + cProfile of our path
    .venv/bin/python bench/dedup.py --baseline-rev f355146   # + the code of that revision, same corpus, interleaved

Corpus: base documents of 60–140 words drawn from a Zipf(1.1) vocabulary of 30k
words; 10% of the records are planted variants of a base document made by
controlled edits — casing + punctuation only (Jaccard 1 after normalisation),
1 or 2 edits (word swap, insertion, deletion, substitution, typo; Jaccard ≈
0.85–0.95) as positives, and 5 or 8 edits (Jaccard ≈ 0.5–0.7) as near-misses.
The true Jaccard of every planted pair is computed exactly on the word-3-gram
sets of the normalised texts; the truth is "pairs with true Jaccard ≥ 0.8".

The truth is "planted pairs (base–variant and variant–variant of one base) with
true Jaccard ≥ 0.8"; two unrelated base texts (independent Zipf draws of 60–140
words) do not reach 0.8, and every pair an engine reports is scored by its own
true Jaccard (precision), planted or not.

Both engines get the same texts, the same normalisation and word-3-gram
shingles and 128 permutations. Ours runs as ``curate dedup --near --threshold
0.8`` does: LSH (b, r) = ``lsh_params(0.8)`` = (16, 6), so that a pair at the
threshold becomes a candidate with probability 0.992, then every candidate pair
is verified by the exact Jaccard of its two shingle sets (recomputed from the
texts of candidate rows only). datasketch runs as documented for
``MinHashLSH(threshold=0.8)``: its own (b, r) = (9, 13) (candidate probability
0.40 at 0.8) and candidates kept when the MinHash estimate is ≥ 0.8. Measured
per engine: wall seconds, CPU seconds of this process (single-threaded, so
docs per CPU-second = docs/s per core), peak extra RSS, pairs found, recall
(truth pairs found; ours also the share of truth pairs that were LSH
candidates) and precision (found pairs with true Jaccard ≥ 0.8; also with a
0.05 tolerance). datasketch runs on the first ``--datasketch-max`` records only
(it would take minutes on 1M); its recall/precision are on that prefix.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from curate import minhash as mh  # noqa: E402

THRESHOLD = 0.8
K = 128


# --------------------------------------------------------------------------- corpus
def make_corpus(n: int, seed: int = 0, dup_rate: float = 0.10):
    rng = np.random.default_rng(seed)
    rnd = random.Random(seed)
    vocab = np.array([f"w{i:x}" for i in range(30000)], dtype=object)
    n_var = int(n * dup_rate)
    n_base = n - n_var
    lens = rng.integers(60, 141, n_base)
    ranks = np.minimum(rng.zipf(1.1, int(lens.sum())) - 1, len(vocab) - 1)
    words = vocab[ranks]
    docs: list[str] = []
    pos = 0
    for ln in lens.tolist():
        docs.append(" ".join(words[pos : pos + ln]))
        pos += ln
    planted = []  # (base row, variant row, n_edits)
    levels = [0, 1, 1, 2, 2, 5, 8]
    for _ in range(n_var):
        b = rnd.randrange(n_base)
        m = rnd.choice(levels)
        docs.append(edit(docs[b], m, rnd, vocab))
        planted.append((b, len(docs) - 1, m))
    # shuffle so planted variants are spread over the corpus (and any prefix)
    perm = list(range(len(docs)))
    rnd.shuffle(perm)
    where = {old: new for new, old in enumerate(perm)}
    docs = [docs[i] for i in perm]
    planted = [(where[b], where[v], m) for b, v, m in planted]
    return docs, planted


def edit(text: str, m: int, rnd: random.Random, vocab) -> str:
    w = text.split()
    for _ in range(m):
        op = rnd.choice(("swap", "insert", "delete", "substitute", "typo"))
        i = rnd.randrange(len(w))
        if op == "swap" and i + 1 < len(w):
            w[i], w[i + 1] = w[i + 1], w[i]
        elif op == "insert":
            w.insert(i, str(vocab[rnd.randrange(len(vocab))]))
        elif op == "delete" and len(w) > 5:
            del w[i]
        elif op == "substitute":
            w[i] = str(vocab[rnd.randrange(len(vocab))])
        else:  # typo: replace one character
            s = w[i]
            j = rnd.randrange(len(s))
            w[i] = s[:j] + rnd.choice("abcdefghijklmnopqrstuvwxyz") + s[j + 1 :]
    # casing and punctuation (vanish under normalisation)
    w = [x.upper() if rnd.random() < 0.1 else x for x in w]
    return " ".join(w).replace(" ", ", ", 1) + rnd.choice([".", "!", "?", ""])


def shingles(text: str) -> set[tuple[str, ...]]:
    w = mh.normalize(text).split()
    return {tuple(w[i : i + 3]) for i in range(len(w) - 2)} if len(w) >= 3 else {tuple(w)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / max(1, len(sa | sb))


# --------------------------------------------------------------------------- memory sampler
class PeakRSS:
    """Peak resident memory above the level at start, sampled every 20 ms."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __exit__(self, *a):
        self._stop = True
        self.t.join()
        self.peak = max(self.peak, self._rss())
        self.extra_mb = round((self.peak - self.base) / 2**20, 1)


# --------------------------------------------------------------------------- engines
def load_baseline(rev: str):
    """``curate/minhash.py`` and ``curate/minhash_kernel.py`` as of git revision ``rev``, imported
    as the package ``curate_baseline`` (from a temporary folder), to time old and new code in the
    same process on the same corpus."""
    import importlib
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    d = Path(tempfile.mkdtemp(prefix="dedup-baseline-")) / "curate_baseline"
    d.mkdir()
    (d / "__init__.py").write_text("")
    for f in ("minhash.py", "minhash_kernel.py"):
        (d / f).write_text(subprocess.run(["git", "-C", str(root), "show", f"{rev}:curate/{f}"], check=True,
                                          capture_output=True, text=True).stdout)
    sys.path.insert(0, str(d.parent))
    return importlib.import_module("curate_baseline.minhash")


def run_ours(docs: list[str], batch: int = 20000, threshold: float = THRESHOLD, mh=mh):
    """Our near-dup stage as ``curate dedup --near`` runs it: text → LSH band keys (the
    kernel computes each signature in a scratch row and keeps only its band keys) →
    candidate pairs → exact Jaccard of the candidates' shingle sets → union-find.
    ``mh``: the module to run (``curate.minhash``, or a baseline from :func:`load_baseline`)."""
    b, r = mh.lsh_params(threshold, K)
    t = time.perf_counter()
    # load/compile the numba kernels outside the timing; more than one 2 048-text chunk, so that the
    # kernels also see the non-contiguous key columns of the timed run (another specialisation)
    k_, x_ = mh.lsh_keys_of(docs[:5000], "word", K, b, r)
    c_ = mh.lsh_candidates_keys(k_, np.flatnonzero(x_ != 0))
    mh.UnionFind(5000).union_pairs(mh.verify_pairs(c_, docs, "word", threshold)[0])
    warm = round(time.perf_counter() - t, 2)
    with PeakRSS() as mem:
        w0, c0 = time.perf_counter(), time.process_time()
        keys, exact = mh.lsh_keys_of(docs, "word", K, b, r, batch=batch)
        w1, c1 = time.perf_counter(), time.process_time()
        cand = mh.lsh_candidates_keys(keys, np.flatnonzero(exact != 0))
        w2, c2 = time.perf_counter(), time.process_time()
        pairs, _ = mh.verify_pairs(cand, docs, "word", threshold)
        w3, c3 = time.perf_counter(), time.process_time()
        uf = mh.UnionFind(len(docs))
        uf.union_pairs(pairs)
        w4, c4 = time.perf_counter(), time.process_time()
    return {tuple(p) for p in pairs.tolist()}, {
        "wall_s": round(w4 - w0, 3), "cpu_s": round(c4 - c0, 3), "band_keys_cpu_s": round(c1 - c0, 3),
        "lsh_buckets_cpu_s": round(c2 - c1, 3), "verify_exact_cpu_s": round(c3 - c2, 3),
        "union_find_cpu_s": round(c4 - c3, 3), "peak_extra_rss_mb": mem.extra_mb, "bands_rows": [b, r],
        "candidate_probability_at_threshold": round(mh.candidate_probability(threshold, b, r), 4),
        "candidates": int(len(cand)), "candidate_rows": int(len(np.unique(cand))) if len(cand) else 0,
        "kernel": "numba" if mh._jit_kernel() is not None else "numpy", "kernel_load_s": warm}, \
        {tuple(p) for p in cand.tolist()}


_TOK = re.compile(r"\S+")


def run_datasketch(docs: list[str]) -> tuple[set[tuple[int, int]], dict]:
    from datasketch import MinHash, MinHashLSH

    b, r = mh.optimal_params(THRESHOLD, K)
    with PeakRSS() as mem:
        w0, c0 = time.perf_counter(), time.process_time()
        lsh = MinHashLSH(threshold=THRESHOLD, num_perm=K, params=(b, r))
        mhs = []
        for i, t in enumerate(docs):
            w = mh.normalize(t).split()
            sh = [" ".join(w[j : j + 3]).encode() for j in range(len(w) - 2)] or [" ".join(w).encode()]
            m = MinHash(num_perm=K)
            m.update_batch(sh)
            lsh.insert(i, m, check_duplication=False)
            mhs.append(m)
        pairs = set()
        for i, m in enumerate(mhs):
            for j in lsh.query(m):
                if j != i:
                    a, c = min(i, j), max(i, j)
                    if (a, c) not in pairs and m.jaccard(mhs[j]) >= THRESHOLD:
                        pairs.add((a, c))
        w1, c1 = time.perf_counter(), time.process_time()
    return pairs, {"wall_s": round(w1 - w0, 3), "cpu_s": round(c1 - c0, 3), "peak_extra_rss_mb": mem.extra_mb}


def score(found: set[tuple[int, int]], truth: dict[tuple[int, int], float], docs: list[str], n: int) -> dict:
    """Recall on truth pairs (both rows < n) with J ≥ 0.8; precision by true Jaccard of each found pair."""
    want = {p for p, j in truth.items() if j >= THRESHOLD and p[1] < n}
    tp = len(want & found)
    js = [truth[p] if p in truth else jaccard(docs[p[0]], docs[p[1]]) for p in found]
    by_level: dict[str, list[int]] = {}
    for p, j in truth.items():
        if p[1] < n:
            key = f"{min(int(j * 20) / 20, 0.95):.2f}"
            by_level.setdefault(key, [0, 0])
            by_level[key][0] += 1
            by_level[key][1] += p in found
    return {
        "truth_pairs": len(want), "found_pairs": len(found), "recall": round(tp / max(1, len(want)), 4),
        "recall_true_jaccard_ge_0.85": round(len({p for p in want if truth[p] >= 0.85} & found)
                                             / max(1, len({p for p in want if truth[p] >= 0.85})), 4),
        "precision": round(sum(j >= THRESHOLD for j in js) / max(1, len(js)), 4),
        "precision_tol_0.05": round(sum(j >= THRESHOLD - 0.05 for j in js) / max(1, len(js)), 4),
        "found_rate_by_true_jaccard": {k: f"{v[1]}/{v[0]}" for k, v in sorted(by_level.items())},
    }


def bench(n: int, ds_max: int, seed: int = 0, repeat: int = 3, baseline=None) -> dict:
    t = time.time()
    docs, planted = make_corpus(n, seed)
    truth: dict[tuple[int, int], float] = {}
    for b, v, _ in planted:
        truth[(min(b, v), max(b, v))] = jaccard(docs[b], docs[v])
    # variants of the same base are near-duplicates of each other too
    by_base: dict[int, list[int]] = {}
    for b, v, _ in planted:
        by_base.setdefault(b, []).append(v)
    for b, vs in by_base.items():
        for i in range(len(vs)):
            for j in range(i + 1, len(vs)):
                p = (min(vs[i], vs[j]), max(vs[i], vs[j]))
                truth[p] = jaccard(docs[p[0]], docs[p[1]])
    gen_s = round(time.time() - t, 1)
    runs, base_runs = [], []
    for i in range(repeat):  # same pairs every time; CPU time varies with the load
        if baseline is not None:  # interleaved, alternating which goes first, so both see the same load
            order = [False, True] if i % 2 == 0 else [True, False]
            for is_base in order:
                (base_runs if is_base else runs).append(run_ours(docs, mh=baseline) if is_base else run_ours(docs))
        else:
            runs.append(run_ours(docs))
    runs.sort(key=lambda x: x[1]["cpu_s"])
    ours, st, cand = runs[len(runs) // 2]  # the median run
    st["cpu_s_all_runs"] = [x[1]["cpu_s"] for x in runs]
    assert all(x[0] == ours for x in runs)
    want = [p for p, j in truth.items() if j >= THRESHOLD]
    res = {"records": n, "words_per_record_mean": round(sum(len(d.split()) for d in docs[:20000]) / min(n, 20000), 1),
           "generate_s": gen_s, "ours": st | score(ours, truth, docs, n)}
    res["ours"]["candidate_recall"] = round(sum(p in cand for p in want) / max(1, len(want)), 4)
    res["ours"]["docs_per_s_wall"] = round(n / st["wall_s"])
    res["ours"]["docs_per_cpu_s"] = round(n / st["cpu_s"])
    if base_runs:
        assert all(x[0] == ours and x[2] == cand for x in base_runs), "baseline found other pairs or candidates"
        base_runs.sort(key=lambda x: x[1]["cpu_s"])
        bst = base_runs[len(base_runs) // 2][1]
        keep = ("cpu_s", "band_keys_cpu_s", "lsh_buckets_cpu_s", "verify_exact_cpu_s", "union_find_cpu_s", "peak_extra_rss_mb")
        res["baseline"] = {k: bst[k] for k in keep} | {
            "rev": baseline.__rev__, "cpu_s_all_runs": [x[1]["cpu_s"] for x in base_runs],
            "same_pairs_and_candidates": True, "docs_per_cpu_s": round(n / bst["cpu_s"])}
        res["speedup_vs_baseline_cpu"] = round(bst["cpu_s"] / st["cpu_s"], 3)
    m = min(n, ds_max)
    dpairs, dst = run_datasketch(docs[:m])
    res["datasketch"] = dst | {"records": m} | score(dpairs, truth, docs, m)
    res["datasketch"]["docs_per_s_wall"] = round(m / dst["wall_s"])
    res["datasketch"]["docs_per_cpu_s"] = round(m / dst["cpu_s"])
    res["speedup_cpu"] = round(res["ours"]["docs_per_cpu_s"] / res["datasketch"]["docs_per_cpu_s"], 1)
    ours_prefix = {p for p in ours if p[1] < m}
    res["agreement_on_prefix"] = {"both": len(ours_prefix & dpairs), "only_ours": len(ours_prefix - dpairs),
                                  "only_datasketch": len(dpairs - ours_prefix)}
    return res


def calibrate_cosine(workspace: str, out: str | None) -> dict:
    """Cosine threshold of the semantic detector, calibrated on BANKING77.

    Labelled pairs: every pair of BANKING77 train queries (all ~50M pairs of the
    records in ``workspace``, user turn, embedded by the default model) labelled
    *same intent* / *different intent*; plus the train×test pairs that the exact
    and near detectors found (``curate leakage --exact --near``, read by eye:
    rewordings of the same request) as positives. For each threshold: pairs
    above it, the share of them with the same intent, and the share of the
    exact/near pairs that the semantic detector also reaches.
    """
    import csv as _csv

    from curate import leakage
    from curate.dedup import DedupConfig, record_text
    from curate.embed import embed, text_key
    from curate.store import open_store

    store = open_store(workspace)
    recs = list(store.iter_records())
    if not recs:
        raise SystemExit(f"{workspace}: empty workspace; ingest data/banking77/train.csv first")
    texts = [record_text(e, "user") for e in recs]
    X = embed(store, [e.id for e in recs], texts, field="user", progress=True)
    lab = np.array([e.label for e in recs])
    ths = np.round(np.arange(0.80, 0.991, 0.01), 2)
    same = np.zeros(len(ths), int)
    diff = np.zeros(len(ths), int)
    for i in range(0, len(X), 1000):
        S = X[i : i + 1000] @ X.T
        ii = np.arange(i, min(i + 1000, len(X)))[:, None]
        S = np.where(np.arange(len(X))[None, :] > ii, S, -1)
        a, b = np.nonzero(S >= ths[0])
        sc, sm = S[a, b], lab[a + i] == lab[b]
        for k, t in enumerate(ths):
            m = sc >= t - 1e-6
            same[k] += int((m & sm).sum())
            diff[k] += int((m & ~sm).sum())
    test = Path(__file__).resolve().parent.parent / "data" / "banking77" / "test.csv"
    res = leakage.run(store, DedupConfig(detectors=("exact", "near")), [str(test)], "text")
    hits = [h for h in res["hits"]]
    A = embed(store, [h["train_id"] for h in hits], [h["train_text"] for h in hits], field="user")
    B = embed(store, [h["other_id"] or text_key(h["other_text"]) for h in hits], [h["other_text"] for h in hits],
              field="user")
    cos = (A * B).sum(1) if len(hits) else np.zeros(0)
    table = [{"cosine": float(t), "pairs_above": int(a + b), "same_intent_share": round(a / max(1, a + b), 4),
              "cross_intent_pairs": int(b), "exact_near_pairs_reached": round(float((cos >= t - 1e-6).mean()), 4) if len(cos) else None}
             for t, a, b in zip(ths, same, diff)]
    out_obj = {"workspace_records": len(recs), "model": "all-MiniLM-L6-v2", "field": "user",
               "exact_near_positive_pairs": len(hits), "table": table}
    print(json.dumps(out_obj, indent=2))
    if out:
        Path(out).write_text(json.dumps(out_obj, indent=2) + "\n")
    return out_obj


# --------------------------------------------------------------------------- per-stage profile
def profile(n: int, reps: int = 5) -> dict:
    """CPU µs per record of each stage of our near-dup path on ``n`` corpus records
    (best of ``reps``), and the top functions of one full run under cProfile."""
    import cProfile
    import io
    import pstats

    docs, _ = make_corpus(n, 0)
    b, r = mh.lsh_params(THRESHOLD, K)
    mod = mh._jit_module()
    mh.lsh_keys_of(docs[:100], "word", K, b, r)

    def best(f):
        t = float("inf")
        for _ in range(reps):
            c = time.process_time()
            f()
            t = min(t, time.process_time() - c)
        return round(t / n * 1e6, 3)

    keys, exact = mh.lsh_keys_of(docs, "word", K, b, r)
    ok = np.flatnonzero(exact != 0)
    cand = mh.lsh_candidates_keys(keys, ok)
    pairs, _ = mh.verify_pairs(cand, docs, "word", THRESHOLD)
    rows = np.unique(cand)
    sub = [docs[i] for i in rows.tolist()]
    hs, offs = mh.shingle_hashes(sub, "word")
    ia, ib = np.searchsorted(rows, cand[:, 0]), np.searchsorted(rows, cand[:, 1])
    chunk = mh.JIT_CHUNK
    stages = {"text_to_bytes_us": best(lambda: [mh._raw_bytes(docs[i : i + chunk]) for i in range(0, n, chunk)]),
              "band_keys_us (text to bytes included)": best(lambda: mh.lsh_keys_of(docs, "word", K, b, r))}
    if mod is not None:
        stages["lsh_buckets_us"] = best(lambda: mod.bucket_pairs(keys, ok, ok, 32))
        raw = mod.bucket_pairs(keys, ok, ok, 32)
        stages["lsh_unique_pairs_us"] = best(lambda: mh.unique_pairs(raw))
    stages["lsh_candidates_us"] = best(lambda: mh.lsh_candidates_keys(keys, ok))
    stages["verify_shingle_candidate_rows_us"] = best(lambda: mh.shingle_hashes(sub, "word"))
    stages["verify_jaccard_us"] = best(lambda: mh.jaccard_sets(hs, offs, ia, ib))
    stages["verify_exact_us"] = best(lambda: mh.verify_pairs(cand, docs, "word", THRESHOLD))

    def uf():
        mh.UnionFind(n).union_pairs(pairs)

    stages["union_find_us"] = best(uf)
    stages["total_us"] = round(stages["band_keys_us (text to bytes included)"] + stages["lsh_candidates_us"]
                               + stages["verify_exact_us"] + stages["union_find_us"], 3)
    stages["docs_per_cpu_s"] = round(1e6 / stages["total_us"])

    def full():
        k_, x_ = mh.lsh_keys_of(docs, "word", K, b, r)
        p_, _ = mh.verify_pairs(mh.lsh_candidates_keys(k_, np.flatnonzero(x_ != 0)), docs, "word", THRESHOLD)
        mh.UnionFind(n).union_pairs(p_)

    pr = cProfile.Profile()
    pr.enable()
    full()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(12)
    top = [ln.strip() for ln in buf.getvalue().splitlines() if re.match(r"\s*\d", ln)][:12]
    return {"records": n, "candidates": len(cand), "candidate_rows": len(rows), "pairs": len(pairs),
            "bands_rows": [b, r], "kernel": "numba" if mod is not None else "numpy", "cpu_us_per_record": stages,
            "cprofile_top_tottime": top}


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except Exception:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "loadavg_start": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--datasketch-max", type=int, default=20000, help="datasketch runs on this many records at most")
    ap.add_argument("--out", help="write the JSON here too (e.g. bench/results/dedup.json)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs of ours per size; the median run is reported (all CPU times listed)")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. CPU contention)")
    ap.add_argument("--baseline-rev", metavar="REV",
                    help="also time curate/minhash*.py of this git revision, interleaved with ours on the same "
                         "corpus (checks they find the same pairs and candidates)")
    ap.add_argument("--calibrate-cosine", metavar="WORKSPACE",
                    help="instead of the benchmark: cosine calibration table on a BANKING77 workspace")
    ap.add_argument("--profile", type=int, metavar="N",
                    help="instead of the benchmark: per-stage CPU time and cProfile of our path on N records")
    a = ap.parse_args()
    if a.profile:
        out = {"machine": machine(), "note": a.note, "profile": profile(a.profile)}
        out["machine"]["loadavg_end"] = os.getloadavg()
        js = json.dumps(out, indent=2)
        print(js)
        if a.out:
            Path(a.out).write_text(js + "\n")
        return 0
    if a.calibrate_cosine:
        calibrate_cosine(a.calibrate_cosine, a.out)
        return 0
    out = {"machine": machine(), "threshold": THRESHOLD, "num_perm": K, "shingles": "word 3-grams", "note": a.note,
           "runs": []}
    baseline = None
    if a.baseline_rev:
        baseline = load_baseline(a.baseline_rev)
        baseline.__rev__ = a.baseline_rev
        out["baseline_rev"] = a.baseline_rev
    for n in a.sizes:
        r = bench(n, a.datasketch_max, repeat=a.repeat, baseline=baseline)
        out["runs"].append(r)
        print(json.dumps(r), file=sys.stderr)
    out["machine"]["loadavg_end"] = os.getloadavg()
    js = json.dumps(out, indent=2)
    print(js)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(js + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
