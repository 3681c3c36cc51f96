"""Scoring by task type, and paired bootstrap confidence intervals.

* ``label_accuracy`` and ``macro_f1``: when every reference is a label from a
  closed set (the snapshot's ``label`` column is filled), a prediction counts
  when its first line, stripped, equals the reference label.
* ``exact_match``: whitespace-normalised, case-sensitive equality.
* ``rouge_l``: ROUGE-L F1 on lowercased word tokens (LCS by dynamic programming).
* ``json_valid``: share of predictions that parse as JSON, reported only when
  the references are JSON.
Each metric reports base, tuned, delta and a 95 % paired bootstrap interval of
the delta (the same resampled examples for both models). :func:`paired_scores`
does the same for any two prediction lists (a baseline against the tuned model,
run A against run B); :func:`sign_test` is the exact two-sided binomial test on
the per-example wins and losses (ties dropped).
"""
from __future__ import annotations

import json
import math
import random
from collections import Counter
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
    """Mean F1 over the labels that occur in ``refs`` (a prediction outside them only adds false negatives)."""
    labels = set(refs)
    if not labels:
        return 0.0
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for p, r in zip(preds, refs):
        if p == r:
            tp[r] += 1
        else:
            fn[r] += 1
            fp[p] += 1
    return sum(2 * tp[lab] / (2 * tp[lab] + fp[lab] + fn[lab]) for lab in labels if tp[lab]) / len(labels)


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


def metric_kinds(refs: Sequence[str], closed_labels: bool) -> list[str]:
    """The per-example metrics that apply to these references (macro-F1, a corpus metric, comes on top)."""
    kinds = ["exact_match", "rouge_l"]
    if closed_labels:
        kinds = ["label_accuracy"] + kinds
    if refs and all(is_json(r) for r in refs):
        kinds.append("json_valid")
    return kinds


def paired_scores(a_preds: Sequence[str], b_preds: Sequence[str], refs: Sequence[str], closed_labels: bool,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Every metric for two prediction lists on the same examples: ``{name: {"a", "b", "delta" (b - a),
    "ci95" (paired bootstrap of the delta), "per_example" ([a values], [b values]) or None for macro-F1}}``."""
    out: dict[str, dict] = {}
    for k in metric_kinds(refs, closed_labels):
        a, b = per_example(k, a_preds, refs), per_example(k, b_preds, refs)
        ma, mb = sum(a) / max(len(a), 1), sum(b) / max(len(b), 1)
        out[k] = {"a": ma, "b": mb, "delta": mb - ma, "ci95": list(bootstrap_delta(a, b, n=n_boot, seed=seed)),
                  "per_example": (a, b)}
    if closed_labels:
        ap = [first_line(p) for p in a_preds]
        bp = [first_line(p) for p in b_preds]
        rr = [r.strip() for r in refs]

        def stat(idx: list[int]) -> float:
            return macro_f1([bp[i] for i in idx], [rr[i] for i in idx]) - macro_f1([ap[i] for i in idx], [rr[i] for i in idx])

        fa, fb = macro_f1(ap, rr), macro_f1(bp, rr)
        lo, hi = bootstrap_delta(ap, bp, stat=stat, n=min(n_boot, 300), seed=seed)
        out["macro_f1"] = {"a": fa, "b": fb, "delta": fb - fa, "ci95": [lo, hi], "per_example": None}
    return out


def score(base_preds: Sequence[str], tuned_preds: Sequence[str], refs: Sequence[str],
          closed_labels: bool, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{metric: {"base", "tuned", "delta", "ci95"}}`` (the report's ``metrics``)."""
    return {k: {"base": m["a"], "tuned": m["b"], "delta": m["delta"], "ci95": m["ci95"]}
            for k, m in paired_scores(base_preds, tuned_preds, refs, closed_labels, n_boot, seed).items()}


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p-value of ``k`` successes in ``n`` fair trials: ``2·P(X ≤ min(k, n-k))``, capped at 1."""
    if n == 0:
        return 1.0
    m = min(k, n - k)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(m + 1)) / 2 ** n)


def sign_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Paired sign test: examples where b scores higher (``b_wins``), lower (``a_wins``), equal (``ties``,
    dropped), and the exact two-sided p-value of the wins among the non-tied examples."""
    bw = sum(y > x for x, y in zip(a, b))
    aw = sum(x > y for x, y in zip(a, b))
    return {"b_wins": bw, "a_wins": aw, "ties": len(a) - bw - aw, "p": binom_two_sided(bw, bw + aw)}
