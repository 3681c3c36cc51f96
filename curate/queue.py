"""Server-side queue queries for the review app: paging, counts, neighbours — never "load everything".

The app shows one record at a time from a filtered queue. Everything here is one
indexed SQL query with ``LIMIT`` (keyset on ``seq``, the insertion order), so the
cost does not grow with the size of the workspace:

* :func:`next_record` — the first matching record after a cursor (``seq > ?``);
* :func:`page` — a light table of the next N matching records (no messages parsed);
* :func:`position` / :func:`count` — where the cursor is and how many match;
* :func:`cluster_members` — the other records of a near-duplicate cluster
  (``signals.dup_cluster``, via an expression index on ``json_extract``);
* :func:`progress` — records per status.

Filters are the store's (:data:`curate.store.FILTER_KEYS`) plus ``undecided_by``
(records a given labeler has no event on yet, for a second opinion).
:func:`ensure_indexes` adds the few indexes these queries need (idempotent).
"""
from __future__ import annotations

import json
from typing import Any

from .example import Example
from .store import RECORD_COLS, Store, _row_to_example

EXTRA_KEYS = ("undecided_by",)

INDEXES = (
    # duplicate-cluster members: WHERE json_extract(signals,'$.dup_cluster') = ?
    "CREATE INDEX IF NOT EXISTS records_dup_cluster ON records(json_extract(signals, '$.dup_cluster'))"
    " WHERE json_extract(signals, '$.dup_cluster') IS NOT NULL",
    # has_duplicate / has_leak / low_reward filters without a table scan
    "CREATE INDEX IF NOT EXISTS records_has_dup ON records(seq) WHERE dup_of IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS records_has_leak ON records(seq) WHERE leak = 1",
    "CREATE INDEX IF NOT EXISTS records_reward ON records(reward) WHERE reward IS NOT NULL",
    # (label, seq) is the store's records_label: seq is the rowid, which every index ends in. A copy of
    # it cost each ingested row ~2.5 us, so workspaces opened by an older app lose it here.
    "DROP INDEX IF EXISTS records_label_seq",
)


def ensure_indexes(store: Store) -> None:
    """Create the queue's indexes if missing (cheap when present; once per app process)."""
    with store.tx() as c:
        for sql in INDEXES:
            c.execute(sql)


def _where(store: Store, filters: dict[str, Any] | None) -> tuple[str, list[Any]]:
    f = dict(filters or {})
    extra = {k: f.pop(k) for k in EXTRA_KEYS if k in f}
    where, args = store._where(f)
    who = (extra.get("undecided_by") or "").strip()
    if who:
        clause = "NOT EXISTS (SELECT 1 FROM events e WHERE e.record_id = records.id AND e.reviewer = ?)"
        where = f"{where} AND {clause}" if where else f" WHERE {clause}"
        args = args + [who]
    return where, args


def _and(where: str, clause: str) -> str:
    return f"{where} AND {clause}" if where else f" WHERE {clause}"


def count(store: Store, filters: dict[str, Any] | None = None) -> int:
    where, args = _where(store, filters)
    return store.conn.execute(f"SELECT COUNT(*) FROM records{where}", args).fetchone()[0]


def position(store: Store, filters: dict[str, Any] | None, seq: int) -> int:
    """How many matching records come before ``seq`` (0-based position of a record at ``seq``)."""
    where, args = _where(store, filters)
    return store.conn.execute(f"SELECT COUNT(*) FROM records{_and(where, 'seq < ?')}", args + [seq]).fetchone()[0]


def next_record(store: Store, filters: dict[str, Any] | None = None, after_seq: int = 0) -> Example | None:
    """The first matching record with ``seq > after_seq`` (keyset paging; ``None`` at the end)."""
    where, args = _where(store, filters)
    r = store.conn.execute(
        f"SELECT {RECORD_COLS} FROM records{_and(where, 'seq > ?')} ORDER BY seq LIMIT 1", args + [after_seq]
    ).fetchone()
    return None if r is None else _row_to_example(r)


def page(store: Store, filters: dict[str, Any] | None = None, after_seq: int = 0, limit: int = 20) -> list[dict[str, Any]]:
    """A light listing of the next ``limit`` matching records: seq, id, status, split, label, source, first user turn."""
    where, args = _where(store, filters)
    rows = store.conn.execute(
        "SELECT seq, id, status, split, origin_kind, label, source_kind, source_file, source_loc, reward,"
        " dup_of IS NOT NULL AS dup, leak,"
        " (SELECT substr(json_extract(j.value, '$.content'), 1, 90) FROM json_each(records.messages) j"
        "   WHERE json_extract(j.value, '$.role') = 'user' LIMIT 1) AS first_user"
        f" FROM records{_and(where, 'seq > ?')} ORDER BY seq LIMIT ?",
        args + [after_seq, int(limit)],
    ).fetchall()
    return [dict(r) for r in rows]


def cluster_members(store: Store, cluster: str, exclude: str | None = None, limit: int = 6) -> list[Example]:
    """Other records of near-duplicate cluster ``cluster`` (keeper first), at most ``limit``."""
    rows = store.conn.execute(
        f"SELECT {RECORD_COLS} FROM records WHERE json_extract(signals, '$.dup_cluster') = ? AND id != ?"
        " ORDER BY (dup_of IS NOT NULL), seq LIMIT ?",
        (cluster, exclude or "", int(limit)),
    ).fetchall()
    return [_row_to_example(r) for r in rows]


def cluster_size(store: Store, cluster: str) -> int:
    return store.conn.execute(
        "SELECT COUNT(*) FROM records WHERE json_extract(signals, '$.dup_cluster') = ?", (cluster,)).fetchone()[0]


def progress(store: Store) -> dict[str, int]:
    """Records per status (all of the workspace), e.g. ``{"pending": 90, "approved": 10}``."""
    return store.count_by("status")


def distinct(store: Store, column: str) -> list[str]:
    """Distinct values of an indexed column for the filter pick lists (label, source_kind, split, origin_kind)."""
    if column not in ("label", "source_kind", "split", "origin_kind"):
        raise ValueError(f"no pick list for column {column!r}")
    # skip-scan over the index: one probe per distinct value instead of reading every row
    out, last = [], None
    c = store.conn
    while True:
        r = c.execute(
            f"SELECT {column} FROM records WHERE {column} IS NOT NULL" + (f" AND {column} > ?" if last is not None else "")
            + f" ORDER BY {column} LIMIT 1", ([last] if last is not None else [])).fetchone()
        if r is None:
            return out
        last = r[0]
        out.append(last)


def history(store: Store, record_id: str) -> list[dict[str, Any]]:
    """Review events of one record, oldest first, with the event each undo cancels marked."""
    evs = store.events(record_id=record_id)
    undone = {e["undoes"] for e in evs if e["action"] == "undo"}
    for e in evs:
        e["undone"] = e["id"] in undone
    return evs


def edited_into(store: Store, record_id: str) -> list[str]:
    """Ids of records that replaced ``record_id`` by an edit (newest last)."""
    return [r[0] for r in store.conn.execute("SELECT id FROM records WHERE parent_id=? ORDER BY seq", (record_id,))]


def dumps_short(value: Any, n: int = 400) -> str:
    s = json.dumps(value, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 1] + "…"
