"""Scoring by task type, and paired bootstrap confidence intervals.

* ``label_accuracy`` and ``macro_f1``: when every reference is a label from a
  closed set (the snapshot's ``label`` column is filled), a prediction counts
  when its first line, stripped, equals the reference label.
* ``exact_match``: whitespace-normalised, case-sensitive equality.
* ``rouge_l``: ROUGE-L F1 on lowercased word tokens (LCS by dynamic programming).
* ``json_valid``: share of predictions that parse as JSON, reported only when
  the references are JSON.
Each metric reports base, tuned, delta and a 95 % paired bootstrap interval of
the delta (the same resampled examples for both models).
"""
from __future__ import annotations

import json
import random
import re
from typing import Callable, Sequence

_WS = re.compile(r"\s+")


def norm(s: str) -> str:
    return _WS.sub(" ", s).strip()


def first_line(s: str) -> str:
    s = s.strip()
    return s.split("\n", 1)[0].strip() if s else ""


def lcs_len(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    p, r = pred.lower().split(), ref.lower().split()
    lcs = lcs_len(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def is_json(s: str) -> bool:
    s = s.strip()
    if not s or s[0] not in "{[":
        return False
    try:
        json.loads(s)
        return True
    except ValueError:
        return False


def macro_f1(preds: Sequence[str], refs: Sequence[str]) -> float:
    labels = sorted(set(refs))
    if not labels:
        return 0.0
    f1s = []
    for lab in labels:
        tp = sum(p == lab and r == lab for p, r in zip(preds, refs))
        fp = sum(p == lab and r != lab for p, r in zip(preds, refs))
        fn = sum(p != lab and r == lab for p, r in zip(preds, refs))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def per_example(kind: str, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
    if kind == "label_accuracy":
        return [float(first_line(p) == r.strip()) for p, r in zip(preds, refs)]
    if kind == "exact_match":
        return [float(norm(p) == norm(r)) for p, r in zip(preds, refs)]
    if kind == "rouge_l":
        return [rouge_l(p, r) for p, r in zip(preds, refs)]
    if kind == "json_valid":
        return [float(is_json(p)) for p in preds]
    raise ValueError(kind)


def bootstrap_delta(base: Sequence, tuned: Sequence, stat: Callable[[list[int]], float] | None = None,
                    n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % CI of stat(tuned) - stat(base) over paired resamples of example indices."""
    m = len(base)
    if m == 0:
        return (0.0, 0.0)
    rnd = random.Random(seed)
    deltas = []
    for _ in range(n):
        idx = [rnd.randrange(m) for _ in range(m)]
        if stat is None:
            deltas.append(sum(tuned[i] - base[i] for i in idx) / m)
        else:
            deltas.append(stat(idx))
    deltas.sort()
    return (deltas[int(0.025 * n)], deltas[min(n - 1, int(0.975 * n))])


def score(base_preds: Sequence[str], tuned_preds: Sequence[str], refs: Sequence[str],
          closed_labels: bool, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    kinds = ["exact_match", "rouge_l"]
    if closed_labels:
        kinds = ["label_accuracy"] + kinds
    if refs and all(is_json(r) for r in refs):
        kinds.append("json_valid")
    out: dict[str, dict] = {}
    for k in kinds:
        b, t = per_example(k, base_preds, refs), per_example(k, tuned_preds, refs)
        mb, mt = sum(b) / max(len(b), 1), sum(t) / max(len(t), 1)
        lo, hi = bootstrap_delta(b, t, n=n_boot, seed=seed)
        out[k] = {"base": mb, "tuned": mt, "delta": mt - mb, "ci95": [lo, hi]}
    if closed_labels:
        bp = [first_line(p) for p in base_preds]
        tp = [first_line(p) for p in tuned_preds]
        rr = [r.strip() for r in refs]

        def stat(idx: list[int]) -> float:
            return macro_f1([tp[i] for i in idx], [rr[i] for i in idx]) - macro_f1([bp[i] for i in idx], [rr[i] for i in idx])

        fb, ft = macro_f1(bp, rr), macro_f1(tp, rr)
        lo, hi = bootstrap_delta(bp, tp, stat=stat, n=min(n_boot, 300), seed=seed)
        out["macro_f1"] = {"base": fb, "tuned": ft, "delta": ft - fb, "ci95": [lo, hi]}
    return out
