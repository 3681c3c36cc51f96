"""Train / held-out split by group.

Rule (documented in the README):

* A group's split is decided the first time the group is seen and stored in
  the ``groups`` table; it never moves, so adding data never moves an existing
  group and a conversation (one group) never straddles the split.
* Each new group gets ``u = hash(seed, group)`` uniform in [0, 1).
* Without a label, the group is held out iff ``u < heldout_fraction``.
* With a label (stratification), new groups of that label are held out in
  ``u`` order until the label's held-out share reaches
  ``round(heldout_fraction * n_groups_of_label)``; so every label is
  represented in held-out in proportion, as far as the counts allow.
"""
from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import defaultdict
from typing import Sequence

from .example import Example


def unit_hash(seed: int, group: str) -> float:
    h = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_splits(conn: sqlite3.Connection, examples: Sequence[Example], frac: float, seed: int) -> None:
    """Set ``e.split`` for each example from its group (new groups are assigned and
    recorded in ``groups`` + ``split_counts``). Runs inside the caller's transaction."""
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {frac}")
    groups = list({e.group for e in examples})
    known: dict[str, str] = {}
    for i in range(0, len(groups), 900):
        chunk = groups[i : i + 900]
        for g, s in conn.execute(f"SELECT grp, split FROM groups WHERE grp IN ({','.join('?' * len(chunk))})", chunk):
            known[g] = s
    new_by_label: dict[str | None, dict[str, float]] = defaultdict(dict)
    seen: set[str] = set()
    for e in examples:  # a new group is stratified under the label of its first example
        if e.group not in known and e.group not in seen:
            seen.add(e.group)
            new_by_label[e.label][e.group] = unit_hash(seed, e.group)
    now = time.time()
    rows = []
    for label, gs in new_by_label.items():
        order = sorted(gs, key=gs.get)
        if label is None:
            chosen = {g for g in order if gs[g] < frac}
        else:
            r = conn.execute("SELECT total, heldout FROM split_counts WHERE label=?", (label,)).fetchone()
            tot, held = (r[0], r[1]) if r else (0, 0)
            quota = round(frac * (tot + len(order))) - held
            chosen = set(order[: max(0, min(quota, len(order)))])
            conn.execute(
                "INSERT INTO split_counts VALUES (?,?,?) ON CONFLICT(label) DO UPDATE SET"
                " total=total+excluded.total, heldout=heldout+excluded.heldout",
                (label, len(order), len(chosen)),
            )
        for g in order:
            s = "heldout" if g in chosen else "train"
            known[g] = s
            rows.append((g, s, label, now))
    if rows:
        conn.executemany("INSERT INTO groups VALUES (?,?,?,?)", rows)
    for e in examples:
        if not e.split:
            e.split = known[e.group]
