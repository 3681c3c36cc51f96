"""``curate stats``: what is in the workspace, at a glance."""
from __future__ import annotations

from typing import Any

from .store import Store


def stats(store: Store) -> dict[str, Any]:
    c = store.conn
    out: dict[str, Any] = {
        "records": store.count(),
        "by_status": store.count_by("status"),
        "by_split": store.count_by("split"),
        "by_origin": store.count_by("origin_kind"),
        "by_source_kind": store.count_by("source_kind"),
        "labels": c.execute("SELECT COUNT(DISTINCT label) FROM records WHERE label IS NOT NULL").fetchone()[0],
        "chunks": c.execute("SELECT COUNT(*) FROM chunks").fetchone()[0],
        "rejects": c.execute("SELECT COUNT(*) FROM rejects").fetchone()[0],
        "occurrences_beyond_first": c.execute("SELECT COUNT(*) FROM occurrences").fetchone()[0],
        "events": c.execute("SELECT COUNT(*) FROM events").fetchone()[0],
        "signals": {
            "with_pii": c.execute("SELECT COUNT(*) FROM records WHERE json_extract(signals,'$.pii') IS NOT NULL").fetchone()[0],
            "duplicates": c.execute("SELECT COUNT(*) FROM records WHERE dup_of IS NOT NULL").fetchone()[0],
            "leaks": c.execute("SELECT COUNT(*) FROM records WHERE leak=1").fetchone()[0],
            "scored": c.execute("SELECT COUNT(*) FROM records WHERE reward IS NOT NULL").fetchone()[0],
        },
    }
    for key in ("dedup", "leakage", "synth"):
        rep = store.meta_get(f"{key}_counters")
        if rep:
            out[key] = rep
    return out
