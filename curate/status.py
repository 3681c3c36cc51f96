"""The one status rule: how a record's status is derived from its review events.

Events are append-only rows ``(id, reviewer, action, undoes)`` with action one of
``approve``, ``reject``, ``edit``, ``undo``, ``adjudicate-approve``,
``adjudicate-reject``. The rule, applied in event-id order:

1. ``undo`` cancels the event it names (only the reviewer's own event).
2. An ``edit`` that is not undone makes the record ``edited``: it has been
   replaced by a new record (which starts ``pending`` and is reviewed on its own).
3. The latest not-undone ``adjudicate-*`` event, if any, decides
   (``approved`` / ``rejected``): adjudication resolves labeler conflicts.
4. Otherwise each reviewer's **latest** not-undone verdict counts (front-end
   does not matter: Streamlit, Argilla, CLI and rules are equal). Any reject →
   ``rejected``; at least ``min_approvals`` approvals → ``approved``;
   otherwise ``pending``.
"""
from __future__ import annotations

from typing import Iterable, Mapping

VERDICTS = ("approve", "reject")
ACTIONS = ("approve", "reject", "edit", "undo", "adjudicate-approve", "adjudicate-reject")


def derive_status(events: Iterable[Mapping], min_approvals: int = 1) -> str:
    evs = sorted(events, key=lambda e: e["id"])
    undone = {e["undoes"] for e in evs if e["action"] == "undo" and e.get("undoes")}
    live = [e for e in evs if e["id"] not in undone and e["action"] != "undo"]
    if any(e["action"] == "edit" for e in live):
        return "edited"
    adj = [e for e in live if e["action"].startswith("adjudicate-")]
    if adj:
        return "approved" if adj[-1]["action"] == "adjudicate-approve" else "rejected"
    latest: dict[str, str] = {}
    for e in live:
        if e["action"] in VERDICTS:
            latest[e["reviewer"]] = e["action"]
    if any(v == "reject" for v in latest.values()):
        return "rejected"
    if sum(v == "approve" for v in latest.values()) >= max(1, min_approvals):
        return "approved"
    return "pending"
