"""Measure the synth reward filter itself: planted good vs planted bad candidates on BANKING77.

The filter is scored the way ``synth generate`` scores a candidate (``synth.reward``: the heuristics,
:meth:`RewardModel.measure` for format / novelty / label consistency, the embedded judge through
:func:`synth.backends.run_requests`, then :func:`synth.reward.combine` and :func:`synth.reward.decide`),
on candidates whose truth is known:

* a workspace of HUMAN train rows: ``--pool`` rows per intent of BANKING77 ``train.csv`` (77 intents),
  drawn with ``--seed``; the label classifier is fitted on these rows only (``RewardModel.from_store``);
* planted GOOD: other real BANKING77 rows (never in the pool, never seeds) with their own labels; each
  gets as its "seed" the most similar pool row of its intent (a paraphrase is close to its seed: the
  hardest honest case for the novelty signal);
* planted BAD, by kind:
    ``near-label``  real rows whose label is swapped to the NEAREST other intent (cosine of the pool's
                    intent centroids), seeded by the nearest pool row of that intent;
    ``off-topic``   ABCD customer turns (data/abcd, >= 4 words) and generic chit-chat, not about banking,
                    with the label of a random pool row (their seed);
    ``copy``        a pool row as its own paraphrase: identical, case/punctuation changed, a filler word
                    added, one typo, one word dropped;
    ``format``      real rows broken: empty, cut off after 40% of the words, wrapped in chat role markers,
                    wrapped in JSON.

Each scorer is reported as AUROC of good vs every bad kind (and vs all bad): the combined reward,
each signal alone, and the old judge-only score (the anchor: the embedded SmolLM2-135M judge's 1-5).
Precision/recall of "kept" (positive = good) at the default threshold ``min_reward``, for the combined
score alone and for the whole production decision (heuristic gates + judge gate + ``min_reward``),
against the old decision (heuristic gates + ``min_judge_score``).  The two examples quoted in the
issue are scored too.  Writes ``bench/results/reward_filter.json``::

    python bench/reward_filter.py                       # seed 0, pools of 8 and 2 rows per intent
    python bench/reward_filter.py --seed 1 --out /tmp/dev.json   # the seed the constants were chosen on
    python bench/reward_filter.py --judge-n 0           # no judge calls (judge factor n/a)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYSTEM = "Classify the banking query. Reply with its intent label."  # data/banking77_demo/mapping.toml
DEV_SEED = 1  # the seed min_reward, novelty_lo/hi, min_words, label_c were chosen on; report another one

OFF_TOPIC_CHAT = [
    "What's a good recipe for banana bread without eggs?",
    "Can you recommend a funny movie to watch tonight?",
    "How tall is the Eiffel Tower in meters?",
    "My cat keeps scratching the sofa, what should I do?",
    "Who won the football match last night?",
    "What is the best way to learn to play the guitar?",
    "Can you tell me a joke about penguins?",
    "How long should I boil an egg for a soft yolk?",
    "What's the weather going to be like this weekend?",
    "I need some ideas for my daughter's birthday party.",
    "How do I get rid of weeds in my vegetable garden?",
    "Which is better for running, morning or evening?",
    "Write me a short poem about the autumn leaves.",
    "My phone screen cracked, where can I get it repaired?",
    "How do I reset the password of my wifi router?",
    "What time does the pharmacy on the corner close today?",
    "Can I bring my dog with me on the train?",
    "I need to change my flight to next Tuesday morning.",
    "The shoes I ordered from the online store are too small.",
    "How many calories are there in a slice of pizza?",
    "What are some good books to read on holiday?",
    "How do I fix a leaking kitchen tap?",
    "Is it going to rain in London tomorrow afternoon?",
    "What's the capital city of Australia?",
    "Recommend me a podcast about history please.",
    "My laptop keeps freezing when I open the browser.",
    "How do I make my houseplants grow faster?",
    "Where can I watch the new season of that series?",
    "What should I pack for a week of hiking in the mountains?",
    "How do you say thank you in Japanese?",
    "I'm looking for a good hairdresser near the station.",
    "Can you help me plan a three day trip to Rome?",
    "Why does my car make a strange noise when braking?",
    "What is the difference between a latte and a cappuccino?",
    "How do I teach my puppy to sit?",
    "Which vegetables grow well on a balcony?",
    "The pizza delivery is late again, this is annoying.",
    "I want to sign up for a yoga class on Thursdays.",
    "How do I remove a red wine stain from a carpet?",
    "Tell me something interesting about octopuses.",
]
# the two texts quoted in the issue (both stored as card_arrival by the old filter)
ISSUE_EXAMPLES = [
    ("I'm looking for a new wallet that is only available online.", "card_arrival"),
    ("The customer was trying to offer a refund but … unable to process them.", "card_arrival"),
]
COPY_EDITS = ("identical", "case-punct", "filler", "typo", "word-drop")
BREAKS = ("empty", "truncated", "role-markers", "json")
KINDS = ("near-label", "off-topic", "copy", "format")


def load_banking(path: Path) -> dict[str, list[str]]:
    by: dict[str, list[str]] = {}
    seen: set[str] = set()
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            t = r["text"].strip()
            k = " ".join(t.lower().split())
            if t and k not in seen:
                seen.add(k)
                by.setdefault(r["category"], []).append(t)
    return by


def abcd_turns(path: Path) -> list[str]:
    if not path.exists():
        return []
    out = []
    for conv in json.loads(path.read_text(encoding="utf-8")):
        for speaker, text in conv.get("original", []):
            if speaker == "customer" and len(text.split()) >= 4:
                out.append(text.strip())
    return out


def copy_edit(text: str, how: str, rng: random.Random) -> str:
    if how == "identical":
        return text
    if how == "case-punct":
        t = text.lower().rstrip("?.! ")
        return t if text.rstrip()[-1:] in "?.!" else t + "?"
    if how == "filler":
        return rng.choice(["Hi, ", "Hello, ", "Please, "]) + text[0].lower() + text[1:] if rng.random() < 0.5 \
            else text.rstrip() + rng.choice([" Thanks!", " please", " Thank you."])
    words = text.split()
    if how == "typo":
        long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()] or [0]
        i = rng.choice(long)
        w = words[i]
        j = rng.randrange(max(1, len(w) - 1))
        words[i] = w[:j] + w[j + 1: j + 2] + w[j: j + 1] + w[j + 2:] if len(w) > 1 else w + w
        return " ".join(words)
    # word-drop: one short function word, else the last-but-one word
    small = [i for i, w in enumerate(words) if w.lower() in {"the", "a", "my", "to", "i", "is", "do", "can", "please"}]
    if len(words) > 3:
        del words[rng.choice(small) if small else len(words) - 2]
    return " ".join(words)


def broken(text: str, label: str, how: str, variant: int = 0) -> str:
    if how == "empty":
        return ""
    if how == "truncated":
        words = text.split()
        return " ".join(words[: max(2, int(len(words) * 0.4))]).rstrip("?.!,")
    if how == "role-markers":
        return f"User: {text}\nAssistant: {label}" if variant % 2 else f"<|im_start|>user\n{text}<|im_end|>"
    return json.dumps({"text": text, "label": label}) if variant % 2 else json.dumps([{"role": "user", "content": text}])


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """P(a good candidate scores above a bad one), ties count half (Mann-Whitney)."""
    if not pos or not neg:
        return None
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score([1] * len(pos) + [0] * len(neg), list(pos) + list(neg))), 4)


def pr(kept: list[bool], good: list[bool]) -> dict:
    tp = sum(k and g for k, g in zip(kept, good))
    nk, ng = sum(kept), sum(good)
    return {"precision": round(tp / nk, 4) if nk else None, "recall": round(tp / ng, 4) if ng else None,
            "kept": nk, "kept_good": tp, "kept_bad": nk - tp}


def plant(by: dict[str, list[str]], per_intent: int, seed: int, embed, abcd: list[str]) -> tuple[list, list, dict]:
    """Pool rows ``(text, label)`` and candidates ``{kind, sub, text, label, seed, true_label}``."""
    import numpy as np

    rng = random.Random(seed)
    labels = sorted(by)
    pool, rest = [], {}
    for lab in labels:
        texts = list(by[lab])
        rng.shuffle(texts)
        pool += [(t, lab) for t in texts[:per_intent]]
        rest[lab] = texts[per_intent:]
    P = embed([t for t, _ in pool])
    rows_of = {lab: [i for i, (_, l) in enumerate(pool) if l == lab] for lab in labels}
    cent = np.stack([P[rows_of[lab]].mean(0) for lab in labels])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    S = cent @ cent.T
    np.fill_diagonal(S, -9)
    near = {lab: labels[int(S[i].argmax())] for i, lab in enumerate(labels)}

    cands: list[dict] = []
    take = {lab: iter(rest[lab]) for lab in labels}
    src = {k: [(next(take[lab]), lab) for lab in labels for _ in range(2)] for k in ("good", "near-label", "format")}

    def nearest_seed(texts: list[str], labs: list[str]) -> list[str]:
        V = embed(texts)
        out = []
        for v, lab in zip(V, labs):
            idx = rows_of[lab]
            out.append(pool[idx[int((P[idx] @ v).argmax())]][0])
        return out

    g = src["good"]
    for (t, lab), s in zip(g, nearest_seed([t for t, _ in g], [l for _, l in g])):
        cands.append({"kind": "good", "sub": "human-row", "text": t, "label": lab, "seed": s, "true_label": lab})
    sw = src["near-label"]
    for (t, lab), s in zip(sw, nearest_seed([t for t, _ in sw], [near[l] for _, l in sw])):
        cands.append({"kind": "near-label", "sub": "swapped-to-nearest-intent", "text": t, "label": near[lab], "seed": s,
                      "true_label": lab})
    for i, t in enumerate(abcd + OFF_TOPIC_CHAT):
        st, sl = pool[rng.randrange(len(pool))]
        cands.append({"kind": "off-topic", "sub": "abcd-turn" if i < len(abcd) else "chit-chat", "text": t, "label": sl,
                      "seed": st, "true_label": None})
    for k, lab in enumerate(lab for lab in labels for _ in range(2)):
        st = pool[rng.choice(rows_of[lab])][0]
        how = COPY_EDITS[k % len(COPY_EDITS)]
        cands.append({"kind": "copy", "sub": how, "text": copy_edit(st, how, rng), "label": lab, "seed": st,
                      "true_label": lab})
    fm = src["format"]
    for k, ((t, lab), s) in enumerate(zip(fm, nearest_seed([t for t, _ in fm], [l for _, l in fm]))):
        how = BREAKS[k % len(BREAKS)]
        cands.append({"kind": "format", "sub": how, "text": broken(t, lab, how, k // len(BREAKS)), "label": lab, "seed": s, "true_label": lab})
    return pool, cands, near


def memo_embedder(base):
    cache: dict[str, object] = {}

    def enc(texts):
        import numpy as np

        todo = [t for t in dict.fromkeys(texts) if t not in cache]
        if todo:
            for t, v in zip(todo, base(todo)):
                cache[t] = v
        if not texts:
            return base([])
        return np.stack([cache[t] for t in texts])

    enc.label = "all-MiniLM-L6-v2 (memoised)"
    return enc


def run_pool(per_intent: int, a, by, abcd, embed, backend, cfg, cache=None) -> dict:
    from curate.example import Example, MessageError, Source
    from curate.store import open_store
    from synth import reward as rw
    from synth.backends import Request, RunStats, run_requests

    t0 = time.time()
    pool, cands, near = plant(by, per_intent, a.seed, embed, abcd)
    cands += [{"kind": "issue", "sub": "quoted-in-issue", "text": t, "label": lab, "seed": None, "true_label": None}
              for t, lab in ISSUE_EXAMPLES]
    t_plant = time.time() - t0
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "ws")
        store.add_examples([Example(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": t},
                                              {"role": "assistant", "content": lab}],
                                    source=Source("ticket", "banking77/train.csv", f"pool {i}"), split="train", label=lab)
                            for i, (t, lab) in enumerate(pool)])
        t0 = time.time()
        model = rw.RewardModel.from_store(store, cfg, embed=embed)
        t_fit = time.time() - t0
        heldout = rw.HeldoutIndex([])
        # production order: heuristics, message validation, signals, judge, decide
        t0 = time.time()
        heur, valid, ids = [], [], []
        for c in cands:
            h = rw.heuristics(c["text"], [c["seed"]] if c["seed"] else [], heldout, cfg)
            heur.append(h)
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": c["text"]},
                    {"role": "assistant", "content": c["label"]}]
            try:
                ids.append(Example(messages=msgs, source=Source("synthetic", "bench", "x"), split="train").id)
                valid.append(True)
            except MessageError:
                ids.append(None)
                valid.append(False)
        sigs, _ = model.measure([c["text"] for c in cands], [c["label"] for c in cands],
                                [[c["seed"]] if c["seed"] else [] for c in cands], ids)
        t_measure = time.time() - t0
        # ablation: the label classifier without the label names as extra rows
        from dataclasses import replace

        plain = rw.RewardModel.from_store(store, replace(cfg, label_names=False), embed=embed)
        plain_sigs, _ = plain.measure([c["text"] for c in cands], [c["label"] for c in cands],
                                      [[c["seed"]] if c["seed"] else [] for c in cands], ids)
        # the judge on every candidate (the anchor needs a score for each; production skips sure rejects)
        judged: list[dict | None] = [None] * len(cands)
        order = list(range(len(cands)))
        random.Random(a.seed).shuffle(order)
        jsub = sorted(order if a.judge_n < 0 else order[: a.judge_n])
        t0 = time.time()
        stats = RunStats()
        if backend is not None and jsub:
            params = rw.judge_params(cfg)
            reqs = [Request(rw.judge_prompt([{"role": "user", "content": cands[i]["text"]},
                                             {"role": "assistant", "content": cands[i]["label"]}]), params) for i in jsub]
            res = run_requests(backend, reqs, store=cache or store, concurrency=cfg.concurrency, stats=stats)
            for i, r in zip(jsub, res):
                judged[i] = rw.judge_result(r.data if r.data is not None else r.text) if r.error is None else None
        t_judge = time.time() - t0
        store.close()

    rows = []
    for c, h, ok, sg, j, ps in zip(cands, heur, valid, sigs, judged, plain_sigs):
        sg = dict(sg, judge=rw.judge_factor(j["score"]) if j else None)
        gate = rw.heuristic_reason(h, cfg) or (None if ok else "invalid-chat")
        reason_new = gate or rw.decide(h, j, cfg, sg)
        reason_old = gate or rw.decide(h, j, cfg)
        rows.append({**c, "signals": sg, "combined": rw.combine(sg), "judge_score": j["score"] if j else None,
                     "heuristic_gate": gate, "kept_new": reason_new is None, "kept_old": reason_old is None,
                     "reason_new": reason_new, "label_without_names": ps["label"]})
    if a.rows_out:
        with open(a.rows_out, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"pool": per_intent, **r}, ensure_ascii=False) + "\n")
    graded = [r for r in rows if r["kind"] != "issue"]
    judged_rows = [r for r in graded if r["judge_score"] is not None]

    def one(v):
        return 1.0 if v is None else float(v)

    scorers = {
        "combined": lambda r: r["combined"],
        "label": lambda r: one(r["signals"]["label"]),
        "novelty": lambda r: one(r["signals"]["novelty"]),
        "format": lambda r: one(r["signals"]["format"]),
        "judge_only": lambda r: r["judge_score"],
        "combined_without_judge": lambda r: rw.combine(dict(r["signals"], judge=None)),
        "label_without_label_names": lambda r: one(r["label_without_names"]),
    }
    kinds_sub = {k: sorted({r["sub"] for r in graded if r["kind"] == k}) for k in KINDS}
    res: dict = {"pool_rows_per_intent": per_intent, "pool_rows": len(pool), "intents": len(by),
                 "label_model": model.info.get("label_model"),
                 "n": {k: sum(r["kind"] == k for r in graded) for k in ("good", *KINDS)},
                 "n_by_sub": {k: {s: sum(r["kind"] == k and r["sub"] == s for r in graded) for s in subs}
                              for k, subs in kinds_sub.items()},
                 "judged": len(judged_rows), "auroc": {}, "auroc_by_sub": {}}
    for name, f in scorers.items():
        # the combined score needs the judge: on a judge subsample only the judged rows count
        base = judged_rows if name in ("combined", "judge_only") else graded
        good = [f(r) for r in base if r["kind"] == "good"]
        per = {k: auroc(good, [f(r) for r in base if r["kind"] == k]) for k in KINDS}
        per["all_bad"] = auroc(good, [f(r) for r in base if r["kind"] in KINDS])
        res["auroc"][name] = per
        res["auroc_by_sub"][name] = {f"{k}/{s}": auroc(good, [f(r) for r in base if r["kind"] == k and r["sub"] == s])
                                     for k, subs in kinds_sub.items() for s in subs}
    good_mask = [r["kind"] == "good" for r in judged_rows]
    res["at_default_threshold"] = {
        "min_reward": cfg.min_reward, "min_judge_score": cfg.min_judge_score, "positive": "good (kept = positive)",
        "combined_score_alone": pr([r["combined"] >= cfg.min_reward for r in judged_rows], good_mask),
        "production_decision_new": pr([r["kept_new"] for r in judged_rows], good_mask),
        "production_decision_old": pr([r["kept_old"] for r in judged_rows], good_mask),
        "judge_only_at_min_judge_score": pr([(r["judge_score"] or 0) >= cfg.min_judge_score for r in judged_rows], good_mask),
        "rejected_share_by_kind_new": {k: round(sum(not r["kept_new"] for r in judged_rows if r["kind"] == k)
                                               / max(1, sum(r["kind"] == k for r in judged_rows)), 4) for k in ("good", *KINDS)},
        "rejected_share_by_kind_old": {k: round(sum(not r["kept_old"] for r in judged_rows if r["kind"] == k)
                                               / max(1, sum(r["kind"] == k for r in judged_rows)), 4) for k in ("good", *KINDS)},
    }
    res["score_quantiles"] = {}
    for k in ("good", *KINDS):
        vals = sorted(r["combined"] for r in judged_rows if r["kind"] == k)
        js = sorted(r["judge_score"] for r in judged_rows if r["kind"] == k)
        q = (lambda v, p: round(v[min(len(v) - 1, int(p * len(v)))], 4) if v else None)
        res["score_quantiles"][k] = {"combined_p10_p50_p90": [q(vals, .1), q(vals, .5), q(vals, .9)],
                                     "judge_min_max": [js[0], js[-1]] if js else None}
    res["issue_examples"] = [{"text": r["text"], "label": r["label"], "combined": r["combined"], "judge": r["judge_score"],
                              "kept_new": r["kept_new"], "kept_old": r["kept_old"], "reason_new": r["reason_new"],
                              "signals": r["signals"]} for r in rows if r["kind"] == "issue"]
    ex_rng = random.Random(a.seed)
    res["examples"] = {}
    for k in ("good", *KINDS):
        ks = [r for r in judged_rows if r["kind"] == k]
        res["examples"][k] = [{"text": r["text"], "label": r["label"], "true_label": r["true_label"], "sub": r["sub"],
                               "combined": r["combined"], "judge": r["judge_score"], "kept_new": r["kept_new"],
                               "label_p": r["signals"]["label"], "label_top": r["signals"]["label_top"],
                               "novelty": r["signals"]["novelty"], "format": r["signals"]["format"]}
                              for r in ex_rng.sample(ks, min(4, len(ks)))]
    res["good_rejected"] = [{"text": r["text"], "label": r["label"], "combined": r["combined"], "reason": r["reason_new"]}
                            for r in judged_rows if r["kind"] == "good" and not r["kept_new"]][:12]
    res["bad_kept"] = [{"kind": r["kind"], "sub": r["sub"], "text": r["text"], "label": r["label"], "combined": r["combined"],
                        "label_top": r["signals"]["label_top"]}
                       for r in judged_rows if r["kind"] in KINDS and r["kept_new"]][:20]
    res["near_pairs_sample"] = dict(list(sorted(near.items()))[:10])
    res["seconds"] = {"plant": round(t_plant, 1), "embed_pool_and_fit": round(t_fit, 1), "measure": round(t_measure, 1),
                      "judge": round(t_judge, 1), "judge_calls": stats.calls, "judge_cache_hits": stats.cache_hits}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="draws the pool and the planted candidates (default 0)")
    ap.add_argument("--pools", default="8,2", help="pool rows per intent, comma-separated (default 8,2: the demo "
                    "workspace's ~8 train rows per intent, and ~2 per intent like the issue's 160-row workspace)")
    ap.add_argument("--data", default=str(ROOT / "data/banking77/train.csv"))
    ap.add_argument("--abcd", default=str(ROOT / "data/abcd/abcd_sample.json"))
    ap.add_argument("--judge-n", type=int, default=-1, help="candidates judged per pool (-1 = all, 0 = none)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core box)")
    ap.add_argument("--judge-cache", help="a workspace folder whose store caches the judge's answers across runs "
                    "(default: none, every run calls the judge)")
    ap.add_argument("--rows-out", help="also write every candidate with its signals as JSON lines (analysis)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/reward_filter.json"))
    a = ap.parse_args(argv)

    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    from synth import reward as rw
    from synth.config import SynthConfig

    cfg = SynthConfig(judge_max_tokens=1)  # the score is read from the first token's probabilities either way
    t_all = time.time()
    t0 = time.time()
    embed = memo_embedder(rw.model_embedder(cfg.reward_embedder))
    t_load_embedder = time.time() - t0
    backend = None
    t_load_judge = 0.0
    if a.judge_n != 0:
        from synth.backends import LocalBackend

        t0 = time.time()
        backend = LocalBackend(cfg.model, max_batch=cfg.concurrency)
        t_load_judge = time.time() - t0
    by = load_banking(Path(a.data))
    abcd = abcd_turns(Path(a.abcd))
    cache = None
    if a.judge_cache:
        from curate.store import open_store

        cache = open_store(a.judge_cache)
    if a.rows_out:
        Path(a.rows_out).write_text("")
    pools = {}
    for per in [int(x) for x in a.pools.split(",") if x.strip()]:
        print(f"pool {per}/intent …", file=sys.stderr, flush=True)
        pools[str(per)] = run_pool(per, a, by, abcd, embed, backend, cfg, cache)
    head = pools[next(iter(pools))]
    out = {
        "what": "the synth reward filter on planted candidates (BANKING77): good = real human rows never in the pool "
                "or used as seeds; bad = near-label swap, off-topic, copied seed, broken format. AUROC = P(good scores "
                "above bad), ties half.",
        "formula": rw.REWARD_FORMULA,
        "config": {k: getattr(cfg, k) for k in ("min_reward", "min_judge_score", "label_c", "label_min_rows", "novelty_lo",
                                                "novelty_hi", "min_words", "max_words", "reward_embedder", "model",
                                                "judge_max_tokens")},
        "seed": a.seed, "dev_seed": DEV_SEED,
        "note": (f"constants (min_reward, novelty_lo/hi, min_words, label_c) were chosen on seed {DEV_SEED}"
                 + (" — THIS run is that dev seed" if a.seed == DEV_SEED else "; this run uses another seed")
                 + ". Judge: embedded SmolLM2-135M-Instruct in process, greedy, score read from the probabilities of "
                   "1..5 after 'Score: ' (judge_max_tokens=1: same score as the default 24, no rationale). "
                 + ("Every candidate was judged." if a.judge_n < 0 else f"Judge on a random subsample of {a.judge_n} per "
                    "pool; the combined score and judge-only AUROCs use that subsample, the other signals all rows.")
                 + " Shared 2-vCPU box, other jobs running: timings are indicative."),
        "headline": {"pool_rows_per_intent": head["pool_rows_per_intent"],
                     "auroc_combined": head["auroc"]["combined"], "auroc_judge_only": head["auroc"]["judge_only"],
                     "at_default_threshold": head["at_default_threshold"]["production_decision_new"],
                     "old_decision": head["at_default_threshold"]["production_decision_old"]},
        "pools": pools,
        "seconds": {"load_embedder": round(t_load_embedder, 1), "load_judge": round(t_load_judge, 1),
                    "total": round(time.time() - t_all, 1)},
        "machine": {"cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
                    "at": time.strftime("%Y-%m-%dT%H:%M:%S")},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for per, r in pools.items():
        print(f"pool {per}/intent ({r['pool_rows']} rows, judged {r['judged']}):")
        print(f"  {'scorer':24s} " + " ".join(f"{k:>10s}" for k in (*KINDS, "all_bad")))
        for name, v in r["auroc"].items():
            print(f"  {name:24s} " + " ".join(f"{(v[k] if v[k] is not None else float('nan')):10.3f}" for k in (*KINDS, "all_bad")))
        t = r["at_default_threshold"]
        print(f"  at min_reward {cfg.min_reward}: combined {t['combined_score_alone']}  production {t['production_decision_new']}"
              f"  old {t['production_decision_old']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
