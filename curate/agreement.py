"""Agreement between labelers: who decided what, percent agreement, Cohen's and Fleiss' kappa, conflicts.

A labeler's *decision* on a record is their latest verdict that is not undone
(the same reading as :mod:`curate.status`, rule 4): ``approve``, ``reject`` or
``edit`` (an edit is a decision too: "this record needs changing").
Adjudication events (``adjudicate-*``) are not labeler decisions; they resolve
conflicts and are reported separately.

Math (categories ``k``, items ``i``):

* percent agreement of a pair: share of items both decided where they chose
  the same category; of a set of items: share of items where all raters agree.
* Cohen's kappa of a pair: ``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed
  agreement and ``p_e = sum_k pA_k * pB_k`` (each rater's own marginals).
  Undefined (``None``) when ``p_e == 1`` (both always used one and the same category).
* Fleiss' kappa, generalised to a varying number of raters ``n_i >= 2`` per item:
  ``P_i = (sum_k n_ik^2 - n_i) / (n_i (n_i - 1))``, ``P = mean_i P_i``,
  ``p_k = sum_i n_ik / sum_i n_i``, ``P_e = sum_k p_k^2``,
  ``kappa = (P - P_e) / (1 - P_e)`` (``None`` when ``P_e == 1``). With a constant
  ``n_i`` this is exactly Fleiss (1971).

All functions are plain and take plain data (``{record_id: {reviewer: decision}}``),
so they are unit-tested without a store; :func:`load_decisions` reads a store.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Any, Iterable, Mapping

DECISIONS = ("approve", "reject", "edit")

Decisions = dict[str, dict[str, str]]  # record id -> reviewer -> decision


def decisions_from_events(events: Iterable[Mapping[str, Any]]) -> tuple[Decisions, dict[str, str]]:
    """Fold events into each reviewer's latest live decision per record.

    Returns ``(decisions, adjudicated)`` where ``adjudicated`` maps a record id to
    the latest live adjudication (``approve``/``reject``).
    """
    evs = sorted(events, key=lambda e: e["id"])
    undone = {e["undoes"] for e in evs if e["action"] == "undo" and e.get("undoes")}
    out: Decisions = defaultdict(dict)
    adjudicated: dict[str, str] = {}
    for e in evs:
        if e["id"] in undone or e["action"] == "undo":
            continue
        if e["action"] in DECISIONS:
            out[e["record_id"]][e["reviewer"]] = e["action"]
        elif e["action"].startswith("adjudicate-"):
            adjudicated[e["record_id"]] = e["action"].split("-", 1)[1]
    # a reviewer whose only decision was undone has no entry at all: drop empty records
    return {r: d for r, d in out.items() if d}, adjudicated


def multi_rated(decisions: Decisions, min_raters: int = 2) -> Decisions:
    """Only the records decided by at least ``min_raters`` distinct labelers."""
    return {r: d for r, d in decisions.items() if len(d) >= min_raters}


def percent_agreement(decisions: Decisions) -> float | None:
    """Share of multi-rated records on which every rater chose the same decision."""
    items = multi_rated(decisions)
    if not items:
        return None
    return sum(len(set(d.values())) == 1 for d in items.values()) / len(items)


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two aligned label lists (``None`` when undefined)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs aligned lists, got {len(a)} and {len(b)} labels")
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def pairwise(decisions: Decisions) -> list[dict[str, Any]]:
    """Per labeler pair: records both decided, percent agreement and Cohen's kappa."""
    pairs: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for d in decisions.values():
        for x, y in combinations(sorted(d), 2):
            la, lb = pairs[(x, y)]
            la.append(d[x])
            lb.append(d[y])
    out = []
    for (x, y), (la, lb) in sorted(pairs.items()):
        out.append({
            "labeler_a": x, "labeler_b": y, "records": len(la),
            "agreement": sum(p == q for p, q in zip(la, lb)) / len(la),
            "cohen_kappa": cohen_kappa(la, lb),
        })
    return out


def fleiss_kappa(decisions: Decisions, categories: Iterable[str] = DECISIONS) -> float | None:
    """Fleiss' kappa over multi-rated records (varying rater counts allowed, see module doc)."""
    items = multi_rated(decisions)
    if not items:
        return None
    cats = list(dict.fromkeys(list(categories) + sorted({v for d in items.values() for v in d.values()})))
    totals = Counter()
    n_all = 0
    p_sum = 0.0
    for d in items.values():
        c = Counter(d.values())
        n = len(d)
        p_sum += (sum(v * v for v in c.values()) - n) / (n * (n - 1))
        totals.update(c)
        n_all += n
    p_bar = p_sum / len(items)
    pe = sum((totals[k] / n_all) ** 2 for k in cats)
    if pe >= 1.0:
        return None
    return (p_bar - pe) / (1 - pe)


def by_label(decisions: Decisions, labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """Per record label (e.g. the intent): multi-rated records, percent agreement, Fleiss' kappa, and
    the per-pair numbers (:func:`pairwise`) restricted to that label's records."""
    groups: dict[str, Decisions] = defaultdict(dict)
    for rid, d in multi_rated(decisions).items():
        groups[labels.get(rid) or "none"][rid] = d
    return [
        {"label": lab, "records": len(g), "agreement": percent_agreement(g), "fleiss_kappa": fleiss_kappa(g),
         "pairs": pairwise(g)}
        for lab, g in sorted(groups.items())
    ]


def conflicts(decisions: Decisions, adjudicated: Mapping[str, str] | None = None, include_resolved: bool = False) -> list[dict[str, Any]]:
    """Records whose labelers disagree, oldest id order; adjudicated ones only if ``include_resolved``."""
    adjudicated = adjudicated or {}
    out = []
    for rid, d in decisions.items():
        if len(set(d.values())) > 1 and (include_resolved or rid not in adjudicated):
            out.append({"record_id": rid, "decisions": dict(sorted(d.items())), "adjudicated": adjudicated.get(rid)})
    return sorted(out, key=lambda c: c["record_id"])


def load_decisions(store) -> tuple[Decisions, dict[str, str]]:
    """Decisions of records that at least two labelers decided (plus adjudications), from a store.

    Reads only events of records with >= 2 distinct reviewers (one indexed query),
    never every record.
    """
    rows = store.conn.execute(
        "SELECT id, record_id, reviewer, action, undoes FROM events WHERE record_id IN ("
        " SELECT record_id FROM events GROUP BY record_id HAVING COUNT(DISTINCT reviewer) >= 2)"
        " ORDER BY id"
    ).fetchall()
    return decisions_from_events(dict(r) for r in rows)


def report(store) -> dict[str, Any]:
    """Everything the agreement page shows, in one dict (also handy from a notebook)."""
    decisions, adjudicated = load_decisions(store)
    multi = multi_rated(decisions)
    labels: dict[str, str | None] = {}
    ids = list(multi)
    for i in range(0, len(ids), 900):
        chunk = ids[i : i + 900]
        labels.update(store.conn.execute(
            f"SELECT id, label FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk).fetchall())
    return {
        "records": len(multi),
        "labelers": sorted({r for d in multi.values() for r in d}),
        "percent_agreement": percent_agreement(multi),
        "fleiss_kappa": fleiss_kappa(multi),
        "pairs": pairwise(multi),
        "by_label": by_label(multi, labels),
        "conflicts": conflicts(multi, adjudicated),
        "resolved": len([c for c in conflicts(multi, adjudicated, include_resolved=True) if c["adjudicated"]]),
    }
