"""Snapshot gates: which approved records may not enter a snapshot, and why.

* **leakage**: a ``train`` record with a ``leakage`` signal (it matches a
  held-out or external eval text) is always blocked; fix it by rejecting or
  editing it, or by re-running ``curate leakage`` after the held-out side changed.
* **duplicate**: a record with a ``duplicate_of`` signal (not the keeper of its
  cluster) is blocked unless a reviewer explicitly approved it *after* it was
  flagged (an ``approve`` event from a person — front-end other than ``rule`` —
  later than ``signals.dedup_at``).
"""
from __future__ import annotations

from typing import Iterable

from .example import Example
from .store import Store


def blocked(store: Store, examples: Iterable[Example]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in examples:
        if e.split == "train" and e.signals.get("leakage"):
            hits = e.signals["leakage"]
            n = len(hits) if isinstance(hits, list) else 1
            out[e.id] = f"leakage ({n} hit(s) against held-out/eval data)"
            continue
        if e.signals.get("duplicate_of"):
            flagged_at = float(e.signals.get("dedup_at") or 0)
            human_ok = any(
                ev["action"] == "approve" and ev["frontend"] != "rule" and ev["created_at"] > flagged_at
                for ev in store.events(e.id)
            )
            if not human_ok:
                out[e.id] = f"duplicate of {e.signals['duplicate_of']}"
    return out
