"""Review events from the command line (and the shared helpers the app and Argilla use).

Every decision is an append-only event in the store; a record's status is
derived from its events by the rule in :mod:`curate.status`.
"""
from __future__ import annotations

from typing import Any, Iterable

from .store import ConflictError, Store

DEFAULT_REJECT_REASONS = (
    "wrong answer",
    "wrong label",
    "unhelpful or off-policy reply",
    "contains unredacted PII",
    "duplicate",
    "leaks held-out / eval data",
    "low quality synthetic",
    "other",
)


def select_ids(store: Store, ids: Iterable[str] = (), filters: dict[str, Any] | None = None, limit: int | None = None) -> list[str]:
    ids = list(ids)
    if ids:
        return ids
    return [e.id for e in store.query(filters or {}, limit=limit)]


def decide(
    store: Store,
    ids: Iterable[str],
    action: str,
    reviewer: str,
    *,
    reason: str | None = None,
    frontend: str = "cli",
    expected_versions: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Apply one verdict to many records. Conflicts are collected, not raised."""
    done, conflicts, missing = [], [], []
    for rid in ids:
        try:
            store.add_event(rid, reviewer, action, frontend=frontend, reason=reason,
                            expected_version=(expected_versions or {}).get(rid))
            done.append(rid)
        except ConflictError as e:
            conflicts.append({"id": rid, "error": str(e)})
        except KeyError:
            missing.append(rid)
    return {"action": action, "reviewer": reviewer, "applied": len(done), "conflicts": conflicts, "missing": missing}


def last_own_event(store: Store, reviewer: str) -> dict[str, Any] | None:
    """The reviewer's latest event that is not an undo and not already undone."""
    evs = store.events(reviewer=reviewer)
    undone = {e["undoes"] for e in evs if e["action"] == "undo"}
    for e in reversed(evs):
        if e["action"] != "undo" and e["id"] not in undone:
            return e
    return None


def undo_last(store: Store, reviewer: str, frontend: str = "cli") -> dict[str, Any] | None:
    ev = last_own_event(store, reviewer)
    if ev is None:
        return None
    store.add_event(ev["record_id"], reviewer, "undo", frontend=frontend, undoes=ev["id"])
    return ev


def status_summary(store: Store) -> dict[str, Any]:
    rows = store.conn.execute("SELECT reviewer, frontend, action, COUNT(*) FROM events GROUP BY 1,2,3 ORDER BY 1,2,3").fetchall()
    return {
        "by_status": store.count_by("status"),
        "events": [{"reviewer": r[0], "frontend": r[1], "action": r[2], "n": r[3]} for r in rows],
        "rule": "latest verdict per reviewer; any open reject -> rejected; >= min_approvals approvals -> approved; "
                f"adjudication overrides; edit -> edited (min_approvals={store.config.min_approvals})",
    }
