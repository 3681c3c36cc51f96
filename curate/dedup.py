"""``python -m curate dedup``: exact, near (MinHash LSH) and semantic duplicates.

Detectors (all three unless some are named):

* ``--exact``     same text after normalisation (NFKC, lower case, every run of
                  non-letters/digits → one space, stripped; see curate/minhash.py);
* ``--near``      shingle Jaccard ≥ ``--threshold`` (default 0.8) on word 3-gram
                  or char 5-gram shingles (``--shingle auto`` picks char 5-grams
                  when the median text has < 12 words): MinHash + LSH finds
                  candidates (bands/rows derived from the threshold so that a pair
                  AT the threshold becomes a candidate with probability ≥ 0.99),
                  then each candidate pair is verified by the exact Jaccard of
                  its two shingle sets (docs/dedup.md). Pairs whose texts have
                  ≤ ``--edit-words`` (20) words are decided instead by the word
                  edit rule of curate/shortdup.py (typos, swaps, filler or dropped
                  words: ≤ 5 points; another word in place of one: never), whose
                  pairs of texts of up to 32 words are added too;
* ``--semantic``  sentence-embedding cosine ≥ ``--cosine`` (default 0.95,
                  calibrated on BANKING77: see docs/dedup.md), embeddings cached
                  per record so a rerun embeds only new records.

Records are compared within their split (train with train, held-out with
held-out; across splits is ``curate leakage``'s job), on ``--field`` text
(default ``user``: the prompts, so the same question with two different answers
is a duplicate pair too — the report shows both; ``text`` = all non-system turns). Pairs from every detector are joined into
clusters (union-find); each cluster keeps ONE record:

  keeper policy: human over synthetic, then approved > pending > edited >
  rejected, then the oldest (lowest insertion sequence).

Every other member gets ``signals.duplicate_of`` (the keeper's id),
``dedup_at``, ``dup_detector``, ``dup_score`` and ``dup_cluster``; the keeper
gets ``dup_cluster``. Snapshots exclude duplicates unless a person approves
one after it was flagged (curate/gates.py). A rerun first clears all previous
dup signals, so results always describe the current data. Counters go to
``curate stats``; the report (JSONL + Markdown) to ``<workspace>/reports/``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import minhash as mh
from . import shortdup as sd
from .example import Example
from .models import DEFAULT_EMBED
from .store import Store

HELP = "flag exact / near (MinHash) / semantic duplicates; one keeper per cluster"
DETECTORS = ("exact", "near", "semantic")
DUP_SIGNALS = ("duplicate_of", "dedup_at", "dup_detector", "dup_score", "dup_cluster")
STATUS_RANK = {"approved": 0, "pending": 1, "edited": 2, "rejected": 3}
DEFAULT_COSINE = 0.95
FIELDS = ("text", "user", "assistant")


@dataclass
class DedupConfig:
    """Settings of one dedup run (CLI flags map 1:1)."""

    detectors: tuple[str, ...] = DETECTORS  #: which detectors run
    threshold: float = 0.8  #: Jaccard threshold of the near detector
    num_perm: int = 128  #: MinHash signature length (power of two)
    shingle: str = "auto"  #: word | char | auto
    cosine: float = DEFAULT_COSINE  #: cosine threshold of the semantic detector
    model: str = DEFAULT_EMBED  #: sentence-transformers folder (default: embedded MiniLM)
    field: str = "user"  #: user | text | assistant: which turns are compared (default: the prompts)
    batch: int = 20000  #: records per streaming batch
    redis_url: str | None = None  #: keep the LSH index in Redis (datasketch storage)
    redis_basename: str | None = None  #: shared index name (several workers); default: fresh per run
    report_examples: int = 200  #: clusters written into the Markdown report
    edit_words: int = sd.SHORT_MAX_WORDS  #: near pairs of texts up to this many words are decided by the edit rule (0: off)


def record_text(e: Example, fld: str) -> str:
    if fld == "text":
        return e.text
    if fld == "user":
        return e.user_text
    if fld == "assistant":
        return e.assistant_text
    raise ValueError(f"unknown --field {fld!r}; expected one of {FIELDS}")


def keeper_key(origin: str, status: str, seq: int) -> tuple[int, int, int]:
    """Sort key of the keeper policy: smaller wins (human, approved, oldest)."""
    return (0 if origin == "human" else 1, STATUS_RANK.get(status, 9), int(seq))


def pick_keeper(members: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The member kept by the policy; ``members`` carry origin, status, seq."""
    return min(members, key=lambda m: keeper_key(m["origin"], m["status"], m["seq"]))


@dataclass
class Corpus:
    """Per-record arrays streamed from the store (texts are not kept)."""

    ids: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    origin: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    keys: np.ndarray | None = None  #: (bands, n) LSH band keys (curate.minhash.lsh_keys_of)
    sig: np.ndarray | None = None  #: (n, num_perm) signatures, only kept for a Redis index
    exact: np.ndarray | None = None
    emb: np.ndarray | None = None
    shingle: str = ""
    enc: "sd.Encoded | None" = None  #: word ids of the texts for the edit rule (curate.shortdup)


def _bar(total: int, desc: str, on: bool):
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rec", file=sys.stderr)


def load_corpus(store: Store, cfg: DedupConfig, filters: dict[str, Any] | None = None, *,
                progress: bool = False, embed_stats=None, encoder: "sd.Encoder | None" = None) -> Corpus:
    """Stream records, computing LSH band keys / exact hashes / embeddings batch by batch
    (full signatures too only when the LSH index goes to Redis, which needs them), and the
    word ids of short texts for the edit rule (into ``encoder`` when given — several corpora
    sharing one vocabulary —, else into ``Corpus.enc``)."""
    from .embed import embed

    c = Corpus()
    b, r = mh.lsh_params(cfg.threshold, cfg.num_perm)
    keys, sigs, exacts, embs = [], [], [], []
    own = None
    if encoder is None and uses_edit_rule(cfg):
        encoder = own = sd.Encoder()
    bar = _bar(store.count(filters), "dedup: hashing", progress)
    batch: list[Example] = []

    def flush() -> None:
        texts = [record_text(e, cfg.field) for e in batch]
        if not c.shingle:
            c.shingle = mh.choose_shingle(texts, cfg.shingle)
        k_, x = mh.lsh_keys_of(texts, c.shingle, cfg.num_perm, b, r, batch=cfg.batch)
        keys.append(k_)
        exacts.append(x)
        if cfg.redis_url:
            sigs.append(mh.signatures_of(texts, c.shingle, cfg.num_perm, batch=cfg.batch)[0])
        if encoder is not None:
            encoder.add(texts)
        if "semantic" in cfg.detectors:
            embs.append(embed(store, [e.id for e in batch], texts, model=cfg.model, field=cfg.field,
                              progress=progress, stats=embed_stats))
        for e in batch:
            c.ids.append(e.id)
            c.split.append(e.split)
            c.origin.append(e.origin.get("kind", "human"))
            c.status.append(e.status)
            c.seq.append(int(getattr(e, "seq", 0)))
        if bar:
            bar.update(len(batch))
        batch.clear()

    for e in store.iter_records(filters, batch=min(cfg.batch, 5000)):
        batch.append(e)
        if len(batch) >= cfg.batch:
            flush()
    if batch:
        flush()
    if bar:
        bar.close()
    c.keys = np.concatenate(keys, axis=1) if keys else np.zeros((b, 0), np.uint64)
    c.sig = np.concatenate(sigs) if sigs else None
    c.exact = np.concatenate(exacts) if exacts else np.zeros(0, np.uint64)
    c.emb = np.concatenate(embs) if embs else None
    c.enc = own.finish() if own is not None else None
    return c


def uses_edit_rule(cfg: DedupConfig) -> bool:
    return "near" in cfg.detectors and cfg.edit_words > 0


def merge_near(jac: tuple[np.ndarray, np.ndarray], enc: "sd.Encoded | None", edit: tuple[np.ndarray, np.ndarray],
               edit_words: int, stats: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The near detector's pairs: Jaccard-verified MinHash pairs whose longer text has more
    than ``edit_words`` words, plus the edit-rule pairs (curate/shortdup.py; texts of up to
    INDEX_MAX_WORDS words). A pair found by both keeps its Jaccard. Pairs are (i, j) rows of
    ``enc``, i < j or (leakage) left side first."""
    p, s = jac
    if enc is not None and len(p):
        keep = ~sd.both_short(enc, p, edit_words)
        p, s = p[keep], s[keep]
    ep, es = edit
    if stats is not None:
        stats["jaccard_pairs"] = stats.get("jaccard_pairs", 0) + int(len(p))
        stats["edit_pairs"] = stats.get("edit_pairs", 0) + int(len(ep))
    if not len(ep):
        return p, s
    if len(p):
        have = set(map(tuple, p.tolist()))
        new = np.array([tuple(x) not in have for x in ep.tolist()], bool)
        ep, es = ep[new], es[new]
    return (np.concatenate([p, ep]).astype(np.int64), np.concatenate([s.astype(np.float32), es.astype(np.float32)]))


def store_texts(store: Store, ids: list[str], fld: str) -> Callable[[np.ndarray], list[str]]:
    """rows → their ``fld`` texts, fetched from the store (the corpus keeps no texts;
    exact verification needs them only for the rows of candidate pairs)."""

    def get(rows: np.ndarray) -> list[str]:
        want = [ids[i] for i in rows.tolist()]
        by_id = {e.id: record_text(e, fld) for e in store.get_many(want)}
        missing = [i for i in want if i not in by_id]
        if missing:
            raise RuntimeError(f"{len(missing)} record(s) vanished from the store during the run, "
                               f"e.g. {missing[0]}; rerun")
        return [by_id[i] for i in want]

    return get


def redis_near_candidates(sig: np.ndarray, keys: list[str], rows: np.ndarray, b: int, r: int,
                          storage_config: dict) -> tuple[np.ndarray, int]:
    """Candidate pairs through a datasketch MinHashLSH kept in Redis.

    Keys are record ids (global), so several workers can insert their shards into
    one index with the same ``basename`` and query it (docs/dedup.md). Ids found
    in the index but not among ``keys`` (another worker's shard, or an older run
    under a shared basename) are counted and skipped.
    """
    lsh = mh.datasketch_lsh(b, r, sig.shape[1], storage_config)
    sub_keys = [keys[i] for i in rows]
    mh.datasketch_insert(lsh, sub_keys, sig[rows])
    pos = {k: int(i) for k, i in zip(sub_keys, rows)}
    pairs, foreign = [], 0
    for i, found in zip(rows, mh.datasketch_query(lsh, sig[rows])):
        for k in found:
            j = pos.get(k.decode() if isinstance(k, bytes) else k)
            if j is None:
                foreign += 1
            elif j != i:
                pairs.append((int(i), j))
    return mh.unique_pairs(np.array(pairs, dtype=np.int64).reshape(-1, 2)), foreign


def find_pairs(c: Corpus, cfg: DedupConfig, rows: np.ndarray, b: int, r: int, texts: mh.TextSource,
               progress: bool = False, near_stats: dict[str, int] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pairs (global row indices) and scores per detector among ``rows``; ``texts``
    gives the texts of candidate rows for the exact Jaccard of the near detector, whose
    pairs of short texts are decided by the edit rule instead (:func:`merge_near`)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "exact" in cfg.detectors:
        p = mh.exact_pairs(c.exact[rows])
        out["exact"] = (rows[p] if len(p) else p, np.ones(len(p), np.float32))
    if "near" in cfg.detectors:
        ok = rows[c.exact[rows] != 0]  # texts with at least one word
        if cfg.redis_url:
            base = cfg.redis_basename or f"workbench-lsh-{int(time.time() * 1000)}"
            cand, foreign = redis_near_candidates(c.sig, c.ids, ok, b, r, mh.redis_storage_config(cfg.redis_url, base))
            c.__dict__.setdefault("redis_foreign", 0)
            c.__dict__["redis_foreign"] += foreign
        else:
            cand = mh.lsh_candidates_keys(c.keys, ok)
        p, s = mh.verify_pairs(cand, texts, c.shingle, cfg.threshold)
        if c.enc is not None:
            ep, _, es = sd.near_pairs(c.enc, rows)
            p, s = merge_near((p, s), c.enc, (ep, es), cfg.edit_words, near_stats)
        out["near"] = (p, s)
    if "semantic" in cfg.detectors and c.emb is not None and len(rows):
        from .embed import cosine_pairs

        p, s = cosine_pairs(c.emb[rows], None, cfg.cosine, progress=progress)
        out["semantic"] = (rows[p] if len(p) else p, s)
    return out


def cluster(c: Corpus, pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Union-find over all detectors' pairs → clusters with keeper and member details."""
    n = len(c.ids)
    uf = mh.UnionFind(n)
    best: dict[int, tuple[int, float, str, int]] = {}  # row → (detector priority, score, detector, other row)
    per_det: dict[str, dict[str, int]] = {}
    for det in DETECTORS:
        if det not in pairs:
            continue
        p, s = pairs[det]
        uf_det = mh.UnionFind(n)
        prio = DETECTORS.index(det)
        for (a, b_), sc in zip(p.tolist(), s.tolist()):
            uf.union(a, b_)
            uf_det.union(a, b_)
            for x, y in ((a, b_), (b_, a)):
                cur = best.get(x)
                if cur is None or (prio, -sc) < (cur[0], -cur[1]):
                    best[x] = (prio, float(sc), det, y)
        touched = np.unique(p.reshape(-1)) if len(p) else np.zeros(0, np.int64)
        per_det[det] = {"pairs": int(len(p)), "clusters": len(uf_det.groups(touched.tolist())), "removed": 0}
    touched_all = sorted(best)
    clusters = []
    for root, members in uf.groups(touched_all).items():
        info = [{"row": m, "id": c.ids[m], "origin": c.origin[m], "status": c.status[m], "seq": c.seq[m]} for m in members]
        keeper = pick_keeper(info)
        for m in info:
            if m is keeper:
                continue
            prio, sc, det, other = best[m["row"]]
            m.update(detector=det, score=round(sc, 4), matched=c.ids[other])
            per_det[det]["removed"] += 1
        clusters.append({"keeper": keeper, "members": [m for m in info if m is not keeper]})
    return clusters, per_det


def run(store: Store, cfg: DedupConfig, *, progress: bool = False) -> dict[str, Any]:
    """Run the configured detectors over the whole workspace, write signals, counters, report."""
    from .embed import EmbedStats

    for d in cfg.detectors:
        if d not in DETECTORS:
            raise ValueError(f"unknown detector {d!r}; expected {DETECTORS}")
    if not 0 < cfg.threshold < 1:
        raise ValueError(f"--threshold must be in (0, 1), got {cfg.threshold}")
    if not -1 <= cfg.cosine <= 1:
        raise ValueError(f"--cosine must be in [-1, 1], got {cfg.cosine}")
    if cfg.edit_words < 0:
        raise ValueError(f"--edit-words must be ≥ 0, got {cfg.edit_words}")
    t0 = time.time()
    b, r = mh.lsh_params(cfg.threshold, cfg.num_perm)
    est = EmbedStats()
    c = load_corpus(store, cfg, progress=progress, embed_stats=est)
    t_load = time.time() - t0
    split_arr = np.array(c.split)
    clusters: list[dict[str, Any]] = []
    per_det: dict[str, dict[str, int]] = {d: {"pairs": 0, "clusters": 0, "removed": 0} for d in cfg.detectors}
    near_stats: dict[str, int] = {}
    for sp in ("train", "heldout"):
        rows = np.flatnonzero(split_arr == sp)
        if not len(rows):
            continue
        pairs = find_pairs(c, cfg, rows, b, r, store_texts(store, c.ids, cfg.field), progress=progress,
                           near_stats=near_stats)
        cl, pd = cluster(c, pairs)
        for cc in cl:
            cc["split"] = sp
        clusters += cl
        for d, v in pd.items():
            for k2, x in v.items():
                per_det[d][k2] += x
    # signals: clear old ones first so the result reflects the current data
    for key in DUP_SIGNALS:
        store.clear_signal(key)
    now = time.time()
    updates: dict[str, dict[str, Any]] = {}
    for cc in clusters:
        cid = cc["keeper"]["id"]
        updates[cid] = {"dup_cluster": cid}
        for m in cc["members"]:
            updates[m["id"]] = {"duplicate_of": cid, "dedup_at": now, "dup_detector": m["detector"],
                                "dup_score": m["score"], "dup_cluster": cid}
    items = list(updates.items())
    for i in range(0, len(items), 5000):
        store.update_signals(dict(items[i : i + 5000]))
    removed = sum(len(cc["members"]) for cc in clusters)
    if "near" in per_det and near_stats:
        per_det["near"].update(near_stats)
    counters = {
        "read": len(c.ids),
        "by_split": dict(Counter(c.split)),
        "clusters": len(clusters),
        "removed": removed,
        "kept": len(c.ids) - removed,
        "detectors": per_det,
        "params": {"threshold": cfg.threshold, "num_perm": cfg.num_perm, "bands": b, "rows": r,
                   "candidate_probability_at_threshold": round(mh.candidate_probability(cfg.threshold, b, r), 4),
                   "near_verification": "exact Jaccard", "shingle": c.shingle, **edit_rule_params(cfg),
                   "cosine": cfg.cosine if "semantic" in cfg.detectors else None,
                   "model": cfg.model if "semantic" in cfg.detectors else None, "field": cfg.field,
                   "redis": bool(cfg.redis_url)},
        "embeddings": {"cached": est.cached, "computed": est.computed} if "semantic" in cfg.detectors else None,
        "seconds": round(time.time() - t0, 2),
        "seconds_hashing": round(t_load, 2),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    if getattr(c, "redis_foreign", 0):
        counters["redis_foreign_candidates"] = c.redis_foreign  # type: ignore[attr-defined]
    report = write_report(store, clusters, counters, cfg)
    counters["report"] = str(report)
    store.meta_put("dedup_counters", counters)
    store.meta_put("dedup_report_path", str(report))
    return {"counters": counters, "clusters": clusters}


def edit_rule_params(cfg: DedupConfig) -> dict[str, Any]:
    """The edit rule's settings for the counters (curate/shortdup.py, docs/dedup.md)."""
    if not uses_edit_rule(cfg):
        return {"edit_rule": None}
    return {"edit_rule": {"decides_pairs_up_to_words": cfg.edit_words, "indexes_texts_up_to_words": sd.INDEX_MAX_WORDS,
                          "budget_points": sd.BUDGET, "costs": sd.COSTS}}


def reports_dir(store: Store) -> Path:
    d = store.workspace / "reports"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _short(t: str, n: int = 300) -> str:
    t = " ".join(t.split())
    return t if len(t) <= n else t[: n - 1] + "…"


def write_report(store: Store, clusters: list[dict[str, Any]], counters: dict[str, Any], cfg: DedupConfig) -> Path:
    """``reports/dedup-<time>.jsonl`` (one cluster a line, full texts) and ``.md`` (summary)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    d = reports_dir(store)
    jl, md = d / f"dedup-{stamp}.jsonl", d / f"dedup-{stamp}.md"
    texts: dict[str, str] = {}

    def fetch(ids: list[str]) -> None:
        need = [i for i in ids if i not in texts]
        for e in store.get_many(need):
            texts[e.id] = record_text(e, cfg.field)

    with jl.open("w", encoding="utf-8") as f:
        for i in range(0, len(clusters), 500):
            part = clusters[i : i + 500]
            fetch([m["id"] for cc in part for m in [cc["keeper"], *cc["members"]]])
            for cc in part:
                k = cc["keeper"]
                f.write(json.dumps({
                    "cluster": k["id"], "split": cc["split"],
                    "keeper": {"id": k["id"], "origin": k["origin"], "status": k["status"], "text": texts.get(k["id"], "")},
                    "duplicates": [{"id": m["id"], "detector": m["detector"], "score": m["score"], "matched": m["matched"],
                                    "origin": m["origin"], "status": m["status"], "text": texts.get(m["id"], "")}
                                   for m in cc["members"]],
                }, ensure_ascii=False) + "\n")
            if len(texts) > 50000:
                texts.clear()
    lines = [f"# Dedup report {counters['at']}", "",
             f"Read {counters['read']} records; {counters['clusters']} clusters; {counters['removed']} duplicates flagged "
             f"(`duplicate_of`), {counters['kept']} kept.", "",
             f"Parameters: `{json.dumps(counters['params'])}`", "",
             "| detector | verified pairs | clusters | flagged |", "|---|---:|---:|---:|"]
    for det, v in counters["detectors"].items():
        lines.append(f"| {det} | {v['pairs']} | {v['clusters']} | {v['removed']} |")
    lines += ["", "Keeper policy: human over synthetic, approved > pending > edited > rejected, then oldest.",
              f"Full list (every cluster, full texts): `{jl.name}`.", ""]
    shown = clusters[: cfg.report_examples]
    fetch([m["id"] for cc in shown for m in [cc["keeper"], *cc["members"]]])
    for n, cc in enumerate(shown, 1):
        k = cc["keeper"]
        lines.append(f"## {n}. cluster `{k['id'][:12]}` ({cc['split']}, {1 + len(cc['members'])} records)")
        lines.append(f"- **keep** `{k['id'][:12]}` ({k['origin']}, {k['status']}): {_short(texts.get(k['id'], ''))}")
        for m in cc["members"]:
            lines.append(f"- dup `{m['id'][:12]}` [{m['detector']} {m['score']}] ({m['origin']}, {m['status']}): "
                         f"{_short(texts.get(m['id'], ''))}")
        lines.append("")
    if len(clusters) > len(shown):
        lines.append(f"… {len(clusters) - len(shown)} more clusters in `{jl.name}`.")
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md


# --------------------------------------------------------------------------- CLI
def add_detector_args(p: argparse.ArgumentParser, default_field: str) -> None:
    g = p.add_argument_group("detectors (all three when none is named)")
    g.add_argument("--exact", action="store_true", help="same normalised text")
    g.add_argument("--near", action="store_true",
                   help="shingle Jaccard ≥ --threshold (MinHash LSH candidates, verified by exact Jaccard)")
    g.add_argument("--semantic", action="store_true", help="embedding cosine ≥ --cosine")
    g.add_argument("--threshold", type=float, default=0.8, metavar="J", help="Jaccard threshold of --near (default 0.8)")
    g.add_argument("--edit-words", type=int, default=sd.SHORT_MAX_WORDS, metavar="N",
                   help=f"--near pairs of texts of up to N words are decided by the word edit rule instead of Jaccard "
                        f"(typos, swaps, filler/dropped words; curate/shortdup.py); 0: Jaccard only (default {sd.SHORT_MAX_WORDS})")
    g.add_argument("--num-perm", type=int, default=128, help="MinHash signature length, a power of two (default 128)")
    g.add_argument("--shingle", choices=["auto", "word", "char"], default="auto",
                   help="word 3-grams, char 5-grams, or auto (char when the median text has < 12 words)")
    g.add_argument("--cosine", type=float, default=DEFAULT_COSINE, metavar="C",
                   help=f"cosine threshold of --semantic (default {DEFAULT_COSINE}, calibrated on BANKING77)")
    g.add_argument("--model", default=DEFAULT_EMBED, metavar="PATH",
                   help="sentence-transformers folder for --semantic (default: embedded all-MiniLM-L6-v2)")
    g.add_argument("--field", choices=FIELDS, default=default_field,
                   help=f"which turns are compared: all non-system turns, user turns or assistant turns (default {default_field})")
    g.add_argument("--batch", type=int, default=20000, help="records per streaming batch (default 20000)")
    g.add_argument("--redis-url", metavar="URL", help="keep the LSH index in Redis, e.g. redis://127.0.0.1:6379/0")
    g.add_argument("--redis-basename", metavar="NAME",
                   help="name of a shared Redis LSH index (several workers); default: a fresh name per run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_detector_args(p, "user")


def detectors_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    chosen = tuple(d for d in DETECTORS if getattr(args, d, False))
    return chosen or DETECTORS


def main(args: argparse.Namespace, store: Store) -> int:
    cfg = DedupConfig(detectors=detectors_from_args(args), threshold=args.threshold, num_perm=args.num_perm,
                      shingle=args.shingle, cosine=args.cosine, model=args.model, field=args.field, batch=args.batch,
                      redis_url=args.redis_url, redis_basename=args.redis_basename, edit_words=args.edit_words)
    res = run(store, cfg, progress=not args.json and sys.stderr.isatty())
    k = res["counters"]
    if args.json:
        print(json.dumps(k, indent=2, ensure_ascii=False))
        return 0
    print(f"read {k['read']} records {k['by_split']}; {k['clusters']} clusters; {k['removed']} flagged duplicate_of; "
          f"{k['kept']} kept  ({k['seconds']} s)")
    pr = k["params"]
    print(f"near: Jaccard ≥ {pr['threshold']}, {pr['shingle']} shingles, {pr['num_perm']} perms → {pr['bands']} bands × "
          f"{pr['rows']} rows (a pair at the threshold is a candidate with p = {pr['candidate_probability_at_threshold']}), "
          f"candidates verified by exact Jaccard")
    if pr.get("edit_rule"):
        er = pr["edit_rule"]
        print(f"      pairs of texts ≤ {er['decides_pairs_up_to_words']} words: word edit rule instead (≤ {er['budget_points']} "
              f"points: two small edits, or a dropped content word and one small edit; docs/dedup.md)")
    for det, v in k["detectors"].items():
        print(f"  {det:9s} pairs {v['pairs']:7d}  clusters {v['clusters']:6d}  flagged {v['removed']:6d}")
    if k.get("embeddings"):
        print(f"embeddings: {k['embeddings']['cached']} from cache, {k['embeddings']['computed']} computed")
    print(f"report: {k['report']}")
    return 0
