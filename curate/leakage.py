"""``python -m curate leakage``: train records that match held-out or eval texts.

Compares the workspace ``train`` records with its ``heldout`` records and with
every ``--against`` file (an eval set you will report numbers on), using the
same three detectors as ``curate dedup`` (exact after normalisation, shingle
Jaccard ≥ ``--threshold`` — MinHash LSH candidates verified by exact Jaccard —,
or for pairs of texts of ≤ ``--edit-words`` words the word edit rule of
curate/shortdup.py (a query copied with a typo, a swap, a filler or a dropped
word), embedding cosine ≥ ``--cosine``).
By default the *prompts* are compared (``--field user``: the user turns), since
a test question seen in training inflates the score whatever the answer.

Eval files:
  *.jsonl / *.ndjson   OpenAI chat lines ``{"messages": [...]}`` (the turns named
                       by --field) or objects with a ``--text-column`` key;
  *.csv / *.tsv        the ``--text-column`` column (default ``text``);
  *.parquet            the ``--text-column`` column, or a ``messages`` column.
Rows without usable text are listed in the report with their line and reason.

Every leaking train record gets ``signals.leakage``: a list of hits
``{detector, score, other_id, other_text, source}`` (``source`` is ``heldout``
or ``FILE:LINE``; at most 20 hits per record are kept in the signal, all of
them in the report). ``curate snapshot create`` refuses those records
(curate/gates.py) and prints how many and where this report is. A rerun first
clears every previous ``leakage`` signal. Counters go to ``curate stats``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import minhash as mh
from . import shortdup as sd
from .dedup import (DETECTORS, DedupConfig, _short, add_detector_args, detectors_from_args, edit_rule_params, load_corpus,
                    merge_near, record_text, reports_dir, store_texts, uses_edit_rule)
from .store import Store

HELP = "flag train records that match held-out records or external eval files (blocks them from snapshots)"
MAX_HITS_IN_SIGNAL = 20


@dataclass
class EvalText:
    text: str
    source: str  # "FILE:LINE"


@dataclass
class EvalFile:
    path: str
    texts: list[EvalText] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)


def _from_messages(msgs: Any, fld: str) -> str:
    if not isinstance(msgs, list):
        raise ValueError("messages is not a list")
    want = {"user": ("user",), "assistant": ("assistant",), "text": ("user", "assistant")}[fld]
    parts = []
    for m in msgs:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError("a turn is not an object with role and content")
        if m["role"] in want and isinstance(m["content"], str):
            parts.append(m["content"])
    return "\n".join(parts)


def read_eval_file(path: str | Path, text_column: str | None, fld: str = "user") -> EvalFile:
    """Texts of an eval file; raises ValueError naming the file when nothing is usable."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--against file {p} does not exist")
    out = EvalFile(str(p))
    suf = p.suffix.lower()
    col = text_column or "text"

    def add(loc: str, text: Any) -> None:
        if not isinstance(text, str) or not text.strip():
            out.problems.append({"source": f"{p}:{loc}", "reason": f"no text (empty or not a string in {col!r}/messages)"})
        else:
            out.texts.append(EvalText(text, f"{p}:{loc}"))

    if suf in (".jsonl", ".ndjson"):
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    out.problems.append({"source": f"{p}:{n}", "reason": f"invalid JSON: {e.msg} (column {e.colno})"})
                    continue
                if not isinstance(obj, dict):
                    out.problems.append({"source": f"{p}:{n}", "reason": "line is not a JSON object"})
                elif text_column is None and "messages" in obj:
                    try:
                        add(str(n), _from_messages(obj["messages"], fld))
                    except ValueError as e:
                        out.problems.append({"source": f"{p}:{n}", "reason": f"field 'messages': {e}"})
                elif col in obj:
                    add(str(n), obj[col])
                else:
                    out.problems.append({"source": f"{p}:{n}", "reason": f"no 'messages' and no {col!r} key (keys: {sorted(obj)[:10]})"})
    elif suf in (".csv", ".tsv"):
        with p.open(encoding="utf-8", newline="") as f:
            rd = csv.DictReader(f, delimiter="\t" if suf == ".tsv" else ",")
            if not rd.fieldnames or col not in rd.fieldnames:
                raise ValueError(f"{p}: no column {col!r} (columns: {rd.fieldnames}); name one with --text-column")
            for n, row in enumerate(rd, 2):
                add(str(n), row.get(col))
    elif suf == ".parquet":
        import polars as pl

        df = pl.read_parquet(p)
        if col in df.columns:
            for n, t in enumerate(df[col].to_list(), 1):
                add(f"row {n}", t)
        elif "messages" in df.columns:
            for n, msgs in enumerate(df["messages"].to_list(), 1):
                try:
                    add(f"row {n}", _from_messages(msgs, fld))
                except ValueError as e:
                    out.problems.append({"source": f"{p}:row {n}", "reason": f"column 'messages': {e}"})
        else:
            raise ValueError(f"{p}: no column {col!r} and no 'messages' column (columns: {df.columns}); use --text-column")
    else:
        raise ValueError(f"{p}: unsupported eval file type {suf!r} (use .jsonl, .csv, .tsv or .parquet)")
    if not out.texts:
        raise ValueError(f"{p}: no usable text rows ({len(out.problems)} problem(s), first: "
                         f"{out.problems[0] if out.problems else 'file is empty'})")
    return out


# long: one pass over both sides — read, the three detectors in priority order, signals, report, counters
def run(store: Store, cfg: DedupConfig, against: list[str] | None = None, text_column: str | None = None,
        *, progress: bool = False) -> dict[str, Any]:
    from .embed import EmbedStats, cosine_pairs, embed, text_key

    t0 = time.time()
    b, r = mh.lsh_params(cfg.threshold, cfg.num_perm)
    files = [read_eval_file(f, text_column, cfg.field) for f in (against or [])]
    if cfg.shingle == "auto":  # one shingling for both sides, chosen on the train prompts
        sample = [record_text(e, cfg.field) for e in store.query({"split": "train"}, limit=2000)]
        cfg.shingle = mh.choose_shingle(sample, "auto")
    est = EmbedStats()
    encoder = sd.Encoder() if uses_edit_rule(cfg) else None  # one vocabulary: train, held-out, eval rows in that order
    train = load_corpus(store, cfg, {"split": "train"}, progress=progress, embed_stats=est, encoder=encoder)
    held = load_corpus(store, cfg, {"split": "heldout"}, progress=progress, embed_stats=est, encoder=encoder)
    # the "other" side: held-out records, then every eval file's texts
    o_src = ["heldout"] * len(held.ids)
    o_id: list[str | None] = list(held.ids)
    o_text: list[str | None] = [None] * len(held.ids)  # fetched from the store when reported
    keys, exacts, embs = [held.keys], [held.exact], [held.emb] if held.emb is not None else []
    for ef in files:
        texts = [t.text for t in ef.texts]
        k_, x = mh.lsh_keys_of(texts, cfg.shingle, cfg.num_perm, b, r, batch=cfg.batch)
        keys.append(k_)
        exacts.append(x)
        if encoder is not None:
            encoder.add(texts)
        if "semantic" in cfg.detectors:
            embs.append(embed(store, [text_key(t) for t in texts], texts, model=cfg.model, field="eval",
                              progress=progress, stats=est))
        o_src += [t.source for t in ef.texts]
        o_id += [None] * len(texts)
        o_text += texts
    o_keys, o_exact = np.concatenate(keys, axis=1), np.concatenate(exacts)
    n_tr = len(train.ids)
    hits: dict[tuple[int, int], tuple[int, str, float]] = {}  # (train row, other row) → (priority, detector, score)

    def add(pairs: np.ndarray, scores: np.ndarray, det: str) -> int:
        pr = DETECTORS.index(det)
        for (a, o), s in zip(pairs.tolist(), scores.tolist()):
            cur = hits.get((a, o))
            if cur is None or pr < cur[0]:
                hits[(a, o)] = (pr, det, float(s))
        return len(pairs)

    per_det: dict[str, dict[str, int]] = {}
    if "exact" in cfg.detectors and n_tr and len(o_exact):
        index: dict[int, list[int]] = defaultdict(list)
        for j, h in enumerate(o_exact.tolist()):
            if h:
                index[h].append(j)
        pairs = [(i, j) for i, h in enumerate(train.exact.tolist()) if h in index for j in index[h]]
        p = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        per_det["exact"] = {"pairs": add(p, np.ones(len(p), np.float32), "exact")}
    if "near" in cfg.detectors and n_tr and len(o_exact):
        ok = np.flatnonzero(np.concatenate([train.exact, o_exact]) != 0)  # texts with at least one word
        cand = mh.lsh_candidates_keys(np.concatenate([train.keys, o_keys], axis=1), ok)
        cross = (cand[:, 0] < n_tr) & (cand[:, 1] >= n_tr)
        train_texts = store_texts(store, train.ids, cfg.field)
        held_texts = store_texts(store, [i or "" for i in o_id], cfg.field)

        def texts(rows: np.ndarray) -> list[str]:  # rows: train, then held-out, then eval texts
            out: list[str | None] = [None] * len(rows)
            tr = np.flatnonzero(rows < n_tr)
            for k, t in zip(tr.tolist(), train_texts(rows[tr]) if len(tr) else []):
                out[k] = t
            o = rows - n_tr
            need = [k for k in np.flatnonzero(rows >= n_tr).tolist() if o_text[o[k]] is None]
            for k, t in zip(need, held_texts(o[need]) if need else []):
                out[k] = t
            return [t if t is not None else o_text[o[k]] for k, t in enumerate(out)]  # type: ignore[misc]

        p, s = mh.verify_pairs(cand[cross], texts, cfg.shingle, cfg.threshold)
        near_stats: dict[str, int] = {}
        if encoder is not None:  # short texts: the edit rule decides (curate/shortdup.py)
            enc = encoder.finish()
            ep, _, es = sd.near_pairs(enc, cross=n_tr)
            p, s = merge_near((p, s), enc, (ep, es), cfg.edit_words, near_stats)
        p = np.stack([p[:, 0], p[:, 1] - n_tr], axis=1) if len(p) else p
        per_det["near"] = {"pairs": add(p, s, "near"), **near_stats}
    if "semantic" in cfg.detectors and n_tr and embs:
        o_emb = np.concatenate([e for e in embs if e is not None and len(e)]) if any(len(e) for e in embs) else None
        if o_emb is not None and train.emb is not None:
            p, s = cosine_pairs(train.emb, o_emb, cfg.cosine, progress=progress)
            per_det["semantic"] = {"pairs": add(p, s, "semantic")}
    # texts for the report and the signals
    held_text = {e.id: record_text(e, cfg.field) for e in store.get_many(sorted({o_id[o] for _, o in hits if o_id[o]}))}
    train_text = {e.id: record_text(e, cfg.field) for e in store.get_many(sorted({train.ids[a] for a, _ in hits}))}
    rows = []
    for (a, o), (_, det, s) in sorted(hits.items(), key=lambda kv: (kv[0][0], kv[1][0], -kv[1][2])):
        other = o_text[o] if o_text[o] is not None else held_text.get(o_id[o] or "", "")
        rows.append({"train_id": train.ids[a], "train_text": train_text.get(train.ids[a], ""), "detector": det,
                     "score": round(s, 4), "other_id": o_id[o], "other_text": other, "source": o_src[o]})
    by_train: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for h in rows:
        by_train[h["train_id"]].append(h)
    store.clear_signal("leakage")
    upd = {tid: {"leakage": [{"detector": h["detector"], "score": h["score"], "other_id": h["other_id"],
                              "other_text": _short(h["other_text"], 300), "source": h["source"]}
                             for h in hs[:MAX_HITS_IN_SIGNAL]]} for tid, hs in by_train.items()}
    items = list(upd.items())
    for i in range(0, len(items), 5000):
        store.update_signals(dict(items[i : i + 5000]))
    det_hits = Counter(h["detector"] for h in rows)
    det_records = {d: len({h["train_id"] for h in rows if h["detector"] == d}) for d in det_hits}
    for d in per_det:
        per_det[d]["hits"] = det_hits.get(d, 0)
        per_det[d]["train_records"] = det_records.get(d, 0)
    counters = {
        "read": {"train": n_tr, "heldout": len(held.ids), **{f.path: len(f.texts) for f in files}},
        "eval_rows_skipped": {f.path: len(f.problems) for f in files if f.problems},
        "hits": len(rows),
        "leaking_train_records": len(by_train),
        "hits_by_source": dict(Counter("heldout" if h["source"] == "heldout" else h["source"].rsplit(":", 1)[0] for h in rows)),
        "detectors": per_det,
        "params": {"threshold": cfg.threshold, "num_perm": cfg.num_perm, "bands": b, "rows": r,
                   "candidate_probability_at_threshold": round(mh.candidate_probability(cfg.threshold, b, r), 4),
                   "near_verification": "exact Jaccard", "shingle": cfg.shingle, **edit_rule_params(cfg),
                   "cosine": cfg.cosine if "semantic" in cfg.detectors else None,
                   "model": cfg.model if "semantic" in cfg.detectors else None, "field": cfg.field},
        "embeddings": {"cached": est.cached, "computed": est.computed} if "semantic" in cfg.detectors else None,
        "seconds": round(time.time() - t0, 2),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report = write_report(store, rows, counters, files)
    counters["report"] = str(report)
    store.meta_put("leakage_counters", counters)
    store.meta_put("leakage_report_path", str(report))
    return {"counters": counters, "hits": rows}


def write_report(store: Store, rows: list[dict[str, Any]], counters: dict[str, Any], files: list[EvalFile],
                 max_md: int = 1000) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    d = reports_dir(store)
    jl, md = d / f"leakage-{stamp}.jsonl", d / f"leakage-{stamp}.md"
    with jl.open("w", encoding="utf-8") as f:
        for h in rows:
            f.write(json.dumps(h, ensure_ascii=False) + "\n")
        for ef in files:
            for pr in ef.problems:
                f.write(json.dumps({"skipped_eval_row": pr["source"], "reason": pr["reason"]}, ensure_ascii=False) + "\n")
    L = [f"# Leakage report {counters['at']}", "",
         f"{counters['leaking_train_records']} train record(s) leak ({counters['hits']} hit(s)); they are blocked from "
         f"snapshots until rejected/edited or until the other side changes and `curate leakage` is rerun.", "",
         f"Read: `{json.dumps(counters['read'])}`  ", f"Parameters: `{json.dumps(counters['params'])}`", "",
         "| detector | hits | leaking train records |", "|---|---:|---:|"]
    for det, v in counters["detectors"].items():
        L.append(f"| {det} | {v.get('hits', 0)} | {v.get('train_records', 0)} |")
    L += ["", f"Every hit with full texts: `{jl.name}`.", ""]
    for ef in files:
        if ef.problems:
            L.append(f"Skipped {len(ef.problems)} row(s) of `{ef.path}` (first: {ef.problems[0]['source']}: {ef.problems[0]['reason']}).")
    L += ["", "| # | detector | score | train record | train text | other (source) | other text |", "|---:|---|---:|---|---|---|---|"]

    def cell(t: str) -> str:
        return _short(t, 200).replace("|", "\\|")

    for n, h in enumerate(rows[:max_md], 1):
        L.append(f"| {n} | {h['detector']} | {h['score']} | `{h['train_id'][:12]}` | {cell(h['train_text'])} | "
                 f"{h['source'] if h['source'] == 'heldout' else h['source'].rsplit('/', 1)[-1]}"
                 f"{' `' + h['other_id'][:12] + '`' if h['other_id'] else ''} | {cell(h['other_text'])} |")
    if len(rows) > max_md:
        L.append(f"\n… {len(rows) - max_md} more hits in `{jl.name}`.")
    md.write_text("\n".join(L) + "\n", encoding="utf-8")
    return md


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--against", nargs="+", metavar="FILE", default=[],
                   help="external eval files (OpenAI messages JSONL, CSV/TSV, Parquet) compared with the train split")
    p.add_argument("--text-column", metavar="COL",
                   help="column/key holding the text in --against files (default: 'messages' in JSONL, else 'text')")
    add_detector_args(p, "user")


def main(args: argparse.Namespace, store: Store) -> int:
    cfg = DedupConfig(detectors=detectors_from_args(args), threshold=args.threshold, num_perm=args.num_perm,
                      shingle=args.shingle, cosine=args.cosine, model=args.model, field=args.field, batch=args.batch,
                      edit_words=args.edit_words)
    if args.redis_url:
        print("note: --redis-url applies to `curate dedup`; leakage keeps its (train × eval) index in memory", file=sys.stderr)
    res = run(store, cfg, args.against, args.text_column, progress=not args.json and sys.stderr.isatty())
    k = res["counters"]
    if args.json:
        print(json.dumps(k, indent=2, ensure_ascii=False))
        return 0
    print(f"read {json.dumps(k['read'])}")
    print(f"{k['leaking_train_records']} leaking train record(s), {k['hits']} hit(s) {k['hits_by_source']}  ({k['seconds']} s)")
    for det, v in k["detectors"].items():
        print(f"  {det:9s} hits {v.get('hits', 0):6d}  train records {v.get('train_records', 0):6d}")
    if k["params"].get("edit_rule") and "near" in k["detectors"]:
        print(f"  near pairs: {k['detectors']['near'].get('edit_pairs', 0)} by the word edit rule (texts of ≤ "
              f"{k['params']['edit_rule']['decides_pairs_up_to_words']} words), {k['detectors']['near'].get('jaccard_pairs', 0)} "
              f"by Jaccard ≥ {k['params']['threshold']}")
    for f, n in k["eval_rows_skipped"].items():
        print(f"  skipped {n} row(s) of {f} without usable text (listed in the report)")
    print(f"report: {k['report']}")
    return 0
