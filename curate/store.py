"""The store: one SQLite file (WAL mode) per workspace, the source of truth.

Tables
------
``records``      one row per :class:`~curate.example.Example` (id = content hash).
                 ``status`` and ``version`` are a cache of what the review events
                 say (see :mod:`curate.status`); they are only ever written by
                 :meth:`Store.add_event` in the same transaction as the event.
                 ``dup_of``/``leak``/``reward`` mirror ``signals`` for indexed filters.
``occurrences``  every *further* (file, location) a record was seen at (its
                 first sighting is the record's own ``source_file``/``source_loc``),
                 so an exact duplicate row keeps its provenance instead of vanishing.
``groups``       the split of each group, fixed at first sight (never moves).
``split_counts`` groups and held-out groups per label (kept in step with ``groups``
                 in the same transaction; the stratified split reads it instead
                 of counting ``groups`` for every batch).
``events``       append-only review events (who, when, action, reason, front-end).
``rejects``      input that could not become a record, with file/loc/field/reason.
``chunks``       document chunks (inputs to doc-grounded synthesis).
``cache``        key/value cache (synthesis responses …) by namespace.
``embeddings``   embedding vectors by (record id, model).
``meta``         small JSON blobs (last dedup/leakage counters …).

Every write is a transaction; ``BEGIN IMMEDIATE`` serialises writers so an
optimistic version check and its event insert are atomic.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .example import Example, Source
from .status import ACTIONS, derive_status
from .workspace import WorkspaceConfig, resolve

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  messages TEXT NOT NULL,
  source_kind TEXT NOT NULL, source_file TEXT, source_loc TEXT, source_ref TEXT,
  grp TEXT NOT NULL, split TEXT NOT NULL,
  origin_kind TEXT NOT NULL, origin TEXT NOT NULL,
  signals TEXT NOT NULL DEFAULT '{}',
  label TEXT, parent_id TEXT,
  created_at REAL NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending',
  version INTEGER NOT NULL DEFAULT 0,
  dup_of TEXT, leak INTEGER NOT NULL DEFAULT 0, reward REAL
);
CREATE TABLE IF NOT EXISTS occurrences (
  record_id TEXT NOT NULL, file TEXT NOT NULL, loc TEXT NOT NULL,
  PRIMARY KEY (record_id, file, loc)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
  grp TEXT PRIMARY KEY, split TEXT NOT NULL, label TEXT, assigned_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS split_counts (
  label TEXT PRIMARY KEY, total INTEGER NOT NULL, heldout INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  record_id TEXT NOT NULL, reviewer TEXT NOT NULL, action TEXT NOT NULL,
  reason TEXT, new_record_id TEXT, undoes INTEGER, frontend TEXT NOT NULL,
  created_at REAL NOT NULL, external_id TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS events_record ON events(record_id, id);
CREATE INDEX IF NOT EXISTS events_reviewer ON events(reviewer, id);
CREATE TABLE IF NOT EXISTS rejects (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  file TEXT NOT NULL, loc TEXT NOT NULL, field TEXT, reason TEXT NOT NULL, raw TEXT,
  created_at REAL NOT NULL, UNIQUE(file, loc, reason)
);
CREATE TABLE IF NOT EXISTS chunks (
  id TEXT PRIMARY KEY, file TEXT NOT NULL, loc TEXT NOT NULL, grp TEXT NOT NULL,
  title TEXT, text TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cache (
  ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, created_at REAL NOT NULL,
  PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS embeddings (
  record_id TEXT NOT NULL, model TEXT NOT NULL, dim INTEGER NOT NULL, vec BLOB NOT NULL,
  PRIMARY KEY (record_id, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Secondary indexes of ``records`` — each one is there because a query uses it (EXPLAIN QUERY PLAN,
# docs/curate.md "Store schema and indexes"); each costs ~2-3 us of CPU per ingested row at 1M rows,
# so an index no query uses is not kept. ``seq`` is the rowid, so every index ends in ``seq`` implicitly:
# ``(status)`` is ``(status, seq)``, which is what keyset paging (``… AND seq > ? ORDER BY seq``) needs.
#   records_status  review queue / snapshot / bulk review: WHERE status IN (…) [AND seq > ?] ORDER BY seq;
#                   count_by('status') (stats, app progress) as a covering scan
#   records_split   filters --split (+ status), count_by('split') covering scan
#   records_origin  filter --origin (+ status), count_by('origin_kind')
#   records_kind    filter --source-kind (+ status), count_by('source_kind'), the app's source-kind pick list
#   records_label   filter --label (label, seq), count_by('label'), COUNT(DISTINCT label), the label pick list
#   records_parent  queue.edited_into: WHERE parent_id = ? ORDER BY seq. Partial (only edits have a parent):
#                   ingested rows (parent_id NULL) cost nothing; `parent_id = ?` implies NOT NULL, so the
#                   planner still uses it.
# Dropped in schema v2: records_grp (no query filters records by grp: the split reads the ``groups`` table).
# Lookups by id use the UNIQUE constraint's own index.
#
# Bulk loads (:meth:`Store.deferred_indexes`) drop these and build them once at the end: CREATE INDEX
# over a finished table costs ~1 us/row per index against ~2.5 us/row kept up to date row by row. A
# store opened after a load that was killed gets them back from :meth:`Store._ensure_schema`.
SECONDARY_INDEXES = {
    "records_status": "CREATE INDEX IF NOT EXISTS records_status ON records(status, seq)",
    "records_split": "CREATE INDEX IF NOT EXISTS records_split ON records(split, status)",
    "records_origin": "CREATE INDEX IF NOT EXISTS records_origin ON records(origin_kind, status)",
    "records_kind": "CREATE INDEX IF NOT EXISTS records_kind ON records(source_kind, status)",
    "records_label": "CREATE INDEX IF NOT EXISTS records_label ON records(label)",
    "records_parent": "CREATE INDEX IF NOT EXISTS records_parent ON records(parent_id) WHERE parent_id IS NOT NULL",
}
SCHEMA_VERSION = 2  # 1: records_grp, full records_parent; 2: see SECONDARY_INDEXES
CACHE_KIB = 65536  # SQLite page cache per connection (a bound on memory, whatever the store's size)
WAL_AUTOCHECKPOINT = 10000  # pages (~40 MB of WAL) between automatic checkpoints
BULK_WAL_AUTOCHECKPOINT = 100000  # the same during a bulk load (Store.deferred_indexes)

RECORD_COLS = (
    "id, messages, source_kind, source_file, source_loc, source_ref, grp, split, origin_kind, origin, "
    "signals, label, parent_id, created_at, status, version, seq"
)


class ConflictError(RuntimeError):
    """A writer acted on a version of a record that is no longer current."""

    def __init__(self, record_id: str, expected: int, current: int, status: str):
        self.record_id, self.expected, self.current, self.status = record_id, expected, current, status
        super().__init__(
            f"record {record_id} changed since you loaded it (you saw version {expected}, it is now "
            f"version {current}, status {status}); reload it and decide again"
        )


class NotFound(KeyError):
    pass


def _row_to_example(r: sqlite3.Row) -> Example:
    ex = Example.__new__(Example)  # trusted rows: skip re-validation for speed
    ex.id = r["id"]
    ex.messages = json.loads(r["messages"])
    ex.source = Source(kind=r["source_kind"], file=r["source_file"] or "", loc=r["source_loc"] or "", ref=r["source_ref"] or "")
    ex.group, ex.split = r["grp"], r["split"]
    ex.origin = json.loads(r["origin"])
    ex.signals = json.loads(r["signals"])
    ex.label, ex.parent_id = r["label"], r["parent_id"]
    ex.created_at, ex.status = r["created_at"], r["status"]
    ex.version = r["version"]  # type: ignore[attr-defined]
    ex.seq = r["seq"]  # type: ignore[attr-defined]
    return ex


_ENCODER = json.JSONEncoder(ensure_ascii=False)


def _dumps(obj: Any, ensure_ascii: bool = False) -> str:
    """``json.dumps(obj, ensure_ascii=False)`` without building an encoder per call."""
    return _ENCODER.encode(obj)


from json.encoder import encode_basestring as _json_str  # noqa: E402  (C: a JSON string literal, non-ASCII kept)


def _messages_json(messages: list[dict[str, str]]) -> str:
    """``_dumps(messages)`` for validated ``[{"role", "content"}, …]`` turns, built from
    C-encoded string literals (byte-identical); anything else goes through the encoder."""
    try:
        parts = []
        for m in messages:
            if len(m) != 2 or next(iter(m)) != "role":  # json.dumps keeps the dict's key order
                return _dumps(messages)
            parts.append('{"role": ' + _json_str(m["role"]) + ', "content": ' + _json_str(m["content"]) + "}")
    except (KeyError, TypeError):
        return _dumps(messages)
    return "[" + ", ".join(parts) + "]"


def _signal_columns(signals: dict[str, Any]) -> tuple[Any, int, Any]:
    reward = signals.get("reward")
    score = reward.get("score") if isinstance(reward, dict) else None
    leak = signals.get("leakage")
    return signals.get("duplicate_of"), int(bool(leak)), score


_HUMAN = '{"kind": "human"}'


def prepare_row(e: Example) -> list:
    """The ``records`` row of an example, in the INSERT's column order (``id, messages, source_kind,
    source_file, source_loc, source_ref, grp, split, origin_kind, origin, signals, label, parent_id,
    created_at, dup_of, leak, reward``); ``split`` may still be empty (:meth:`Store.add_rows` assigns it).
    A list of str/float/None: cheap to pickle from an ingest reader process."""
    sig = e.signals
    if sig:
        dup, leak, reward = _signal_columns(sig)
        sig_s = _dumps(sig)
    else:
        dup, leak, reward, sig_s = None, 0, None, "{}"
    org = e.origin
    org_s = _HUMAN if org == {"kind": "human"} else _dumps(org)
    src = e.source
    return [e.id, _messages_json(e.messages), src.kind, src.file, src.loc, src.ref, e.group, e.split,
            org.get("kind", "human"), org_s, sig_s, e.label, e.parent_id, e.created_at, dup, leak, reward]


class TicketRows:
    """A batch of ``records`` rows of one ticket file in a compact layout, for the ingest's hot path:
    ``[id, messages, source_loc, source_ref, grp, split, signals, label, created_at]`` per row; the
    other columns are the same for every row (``source_kind`` 'ticket', ``source_file`` = ``file``,
    origin human, no parent, no duplicate/leakage/reward signal). Half the values to pickle across
    the reader process's channel and to bind per INSERT. :meth:`full` gives :func:`prepare_row` rows."""

    __slots__ = ("file", "rows")

    def __init__(self, file: str, rows: list[list]):
        self.file, self.rows = file, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __reduce__(self):
        return (TicketRows, (self.file, self.rows))

    def full(self) -> list[list]:
        f = self.file
        return [[r[0], r[1], "ticket", f, r[2], r[3], r[4], r[5], "human", _HUMAN, r[6], r[7], None, r[8], None, 0, None]
                for r in self.rows]

    @staticmethod
    def compact(row: list) -> list:
        """The compact row of a :func:`prepare_row` row of a human ticket record of this kind."""
        return [row[0], row[1], row[4], row[5], row[6], row[7], row[10], row[11], row[13]]


class _SplitRef:
    """What :func:`curate.split.assign_splits` reads and sets (group, label, split) for one row."""

    __slots__ = ("row", "group", "label", "split")

    def __init__(self, row: list, gi: int = 6, li: int = 11):
        self.row, self.group, self.label, self.split = row, row[gi], row[li], ""


_INSERT_COLS = ("INSERT INTO records (id, messages, source_kind, source_file, source_loc, source_ref, grp, split,"
                " origin_kind, origin, signals, label, parent_id, created_at, dup_of, leak, reward)")


def _sql_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# filters understood by Store.query / count (also used by the CLI and the app)
FILTER_KEYS = ("status", "split", "origin", "source_kind", "label", "has_duplicate", "has_leak", "low_reward", "ids")


class Store:
    def __init__(self, path: str | Path, config: WorkspaceConfig | None = None):
        self.path = Path(path)
        self.config = config or WorkspaceConfig()
        self.workspace = self.path.parent
        self._local = threading.local()
        self.conn.executescript(SCHEMA)
        self._ensure_schema()
        self._backfill_split_counts()

    def _ensure_schema(self) -> None:
        """Bring the secondary indexes to :data:`SECONDARY_INDEXES`: stores made by schema v1 lose
        ``records_grp`` and get the partial ``records_parent`` (a migration of indexes only: no row
        changes); indexes missing after a bulk load that was killed are built again."""
        c = self.conn
        have = dict(c.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='records'"
                              " AND sql IS NOT NULL").fetchall())
        stale = [n for n in ("records_grp",) if n in have]
        if "records_parent" in have and "WHERE" not in have["records_parent"].upper():
            stale.append("records_parent")
        missing = [n for n in SECONDARY_INDEXES if n not in have or n in stale]
        if not stale and not missing:
            return
        with self.tx() as c:
            for n in stale:
                c.execute(f"DROP INDEX IF EXISTS {n}")
            for n in missing:
                c.execute(SECONDARY_INDEXES[n])
            c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @contextmanager
    def deferred_indexes(self) -> Iterator[None]:
        """Drop the secondary indexes of ``records`` for a bulk load and build them once at the end
        (also when the load fails). Lookups by id and the ``groups`` table are untouched, so
        idempotence and splits are the same; only filtered queries by other processes are slower
        meanwhile. If the process dies in between, the next :class:`Store` opened builds them.

        Meanwhile the WAL is checkpointed every ``BULK_WAL_AUTOCHECKPOINT`` pages (~400 MB) instead of
        every ~40 MB: fewer checkpoints, each with its fsyncs, and an id-index page that many batches
        dirty is copied into the database once per checkpoint (1M generated rows, writer alone: ~4 s
        less wall, ~1 us/row less CPU). Commits, and what a kill -9 can lose, are unchanged."""
        with self.tx() as c:
            for n in SECONDARY_INDEXES:
                c.execute(f"DROP INDEX IF EXISTS {n}")
        self.conn.execute(f"PRAGMA wal_autocheckpoint={BULK_WAL_AUTOCHECKPOINT}")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
            # each index sort spills to a temp file past cache_size (temp_store=MEMORY would hold the
            # whole sort in memory, RSS growing with the store); a 16 MiB cache meanwhile bounds the
            # sorter's memory (it takes up to cache_size) — the table is read sequentially anyway
            self.conn.execute("PRAGMA temp_store=FILE")
            self.conn.execute("PRAGMA cache_size=-16384")
            try:
                with self.tx() as c:
                    for sql in SECONDARY_INDEXES.values():
                        c.execute(sql)
            finally:
                self.conn.execute("PRAGMA temp_store=MEMORY")
                self.conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")

    def _backfill_split_counts(self) -> None:
        """Stores created before ``split_counts`` existed: fill it once from ``groups``."""
        c = self.conn
        if c.execute("SELECT 1 FROM meta WHERE key='split_counts_v1'").fetchone():
            return
        with self.tx() as c:
            if c.execute("SELECT 1 FROM meta WHERE key='split_counts_v1'").fetchone():
                return
            c.execute("DELETE FROM split_counts")
            c.execute("INSERT INTO split_counts SELECT label, COUNT(*), SUM(split='heldout') FROM groups"
                      " WHERE label IS NOT NULL GROUP BY label")
            c.execute("INSERT INTO meta VALUES ('split_counts_v1', 'true')")

    # -- connection -----------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA busy_timeout=60000")
            c.execute("PRAGMA foreign_keys=OFF")
            c.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # 64 MiB page cache: random-key index inserts stay in memory
            c.execute("PRAGMA temp_store=MEMORY")
            # checkpoint every ~40 MB of WAL instead of ~4 MB: an index page dirtied by many
            # batches is copied into the database once per checkpoint, not once per batch
            c.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: all or nothing, writers serialised."""
        c = self.conn
        if c.in_transaction:
            yield c
            return
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        else:
            c.execute("COMMIT")

    # -- records --------------------------------------------------------------
    def add_examples(self, examples: Sequence[Example], occurrences: bool = True) -> tuple[list[str], list[str]]:
        """Insert examples in one transaction. Returns (added ids, already-present ids).

        Splits are assigned by :func:`curate.split.assign_splits` before insertion
        when ``split`` is empty (and set on the examples). Ids already in the store
        (or repeated within the batch) count as already present; their (file, loc) is
        still recorded in ``occurrences``. See :meth:`add_rows`.
        """
        rows = [prepare_row(e) for e in examples]
        out = self.add_rows(rows, occurrences)
        for e, r in zip(examples, rows):
            if not e.split:
                e.split = r[7]
        return out

    def add_rows(self, rows: "Sequence[list] | TicketRows", occurrences: bool = True) -> tuple[list[str], list[str]]:
        """:meth:`add_examples` for rows made by :func:`prepare_row` (an ingest reader process
        makes them, this process only writes), or a :class:`TicketRows` batch (the same rows in the
        compact layout: its constant columns go into the INSERT as literals). Rows with an empty split
        get one (in place).

        One ``INSERT … ON CONFLICT(id) DO NOTHING`` for the batch: when every row was new
        (a fresh ingest) nothing else is read; otherwise the rows this batch added are
        the ones past the store's last ``seq`` (AUTOINCREMENT: never reused), the rest
        were already present and only their first sightings are looked up.
        """
        from .split import assign_splits

        if isinstance(rows, TicketRows):
            file = rows.file
            rows = rows.rows
            gi, si, li, fi, loci = 4, 5, 7, None, 2
            sql = (_INSERT_COLS + f" VALUES (?,?,'ticket',{_sql_text(file)},?,?,?,?,'human',{_sql_text(_HUMAN)},"
                   "?,?,NULL,?,NULL,0,NULL) ON CONFLICT(id) DO NOTHING")
        else:
            file = None
            gi, si, li, fi, loci = 6, 7, 11, 3, 4
            sql = _INSERT_COLS + " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO NOTHING"
        with self.tx() as c:
            todo = [_SplitRef(r, gi, li) for r in rows if not r[si]]
            if todo:
                assign_splits(c, todo, self.config.heldout_fraction, self.config.split_seed)
                for t in todo:
                    t.row[si] = t.split
            before = c.total_changes
            last_seq = c.execute("SELECT MAX(seq) FROM records").fetchone()[0] or 0
            c.executemany(sql, rows)
            if c.total_changes - before == len(rows):
                return [r[0] for r in rows], []
            new = {x[0] for x in c.execute("SELECT id FROM records WHERE seq > ?", (last_seq,))}
            added: list[str] = []
            present: list[str] = []
            first: dict[str, tuple[str, str]] = {}  # id -> (file, loc) of its first sighting
            old = [r[0] for r in rows if r[0] not in new]
            for i in range(0, len(old), 900):
                chunk = old[i : i + 900]
                q = f"SELECT id, source_file, source_loc FROM records WHERE id IN ({','.join('?' * len(chunk))})"
                first.update((x[0], (x[1] or "", x[2] or "")) for x in c.execute(q, chunk))
            occ = []
            for r in rows:
                rid = r[0]
                rf = file if fi is None else r[fi]
                sighting = first.get(rid)
                if sighting is None:  # new in this batch, first time in it
                    first[rid] = (rf, r[loci])
                    added.append(rid)
                    continue
                present.append(rid)
                if occurrences and rf and sighting != (rf, r[loci]):
                    occ.append((rid, rf, r[loci]))
            if occ:
                c.executemany("INSERT OR IGNORE INTO occurrences VALUES (?,?,?)", occ)
        return added, present

    def get(self, record_id: str) -> Example:
        r = self.conn.execute(f"SELECT {RECORD_COLS} FROM records WHERE id=?", (record_id,)).fetchone()
        if r is None:
            raise NotFound(f"no record with id {record_id!r}")
        return _row_to_example(r)

    def get_many(self, ids: Sequence[str]) -> list[Example]:
        out: list[Example] = []
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            q = f"SELECT {RECORD_COLS} FROM records WHERE id IN ({','.join('?' * len(chunk))})"
            out += [_row_to_example(r) for r in self.conn.execute(q, chunk)]
        return out

    def _where(self, filters: dict[str, Any] | None) -> tuple[str, list[Any]]:
        f = {k: v for k, v in (filters or {}).items() if v not in (None, "", [], "any")}
        unknown = set(f) - set(FILTER_KEYS)
        if unknown:
            raise ValueError(f"unknown filter(s) {sorted(unknown)}; known: {FILTER_KEYS}")
        clauses, args = [], []
        col = {"status": "status", "split": "split", "origin": "origin_kind", "source_kind": "source_kind", "label": "label"}
        for k, c in col.items():
            if k in f:
                vals = f[k] if isinstance(f[k], (list, tuple, set)) else [f[k]]
                clauses.append(f"{c} IN ({','.join('?' * len(vals))})")
                args += list(vals)
        if f.get("has_duplicate"):
            clauses.append("dup_of IS NOT NULL")
        if f.get("has_leak"):
            clauses.append("leak = 1")
        if "low_reward" in f and f["low_reward"] is not False:
            thr = 3.0 if f["low_reward"] is True else float(f["low_reward"])
            clauses.append("reward IS NOT NULL AND reward < ?")
            args.append(thr)
        if "ids" in f:
            ids = list(f["ids"])
            clauses.append(f"id IN ({','.join('?' * len(ids))})")
            args += ids
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def query(self, filters: dict[str, Any] | None = None, limit: int | None = None, offset: int = 0) -> list[Example]:
        where, args = self._where(filters)
        q = f"SELECT {RECORD_COLS} FROM records{where} ORDER BY seq"
        if limit is not None:
            q += " LIMIT ? OFFSET ?"
            args += [int(limit), int(offset)]
        return [_row_to_example(r) for r in self.conn.execute(q, args)]

    def iter_records(self, filters: dict[str, Any] | None = None, batch: int = 5000) -> Iterator[Example]:
        """Stream records in seq order without loading them all (keyset paging)."""
        where, args = self._where(filters)
        last = 0
        joiner = " AND " if where else " WHERE "
        while True:
            rows = self.conn.execute(
                f"SELECT {RECORD_COLS} FROM records{where}{joiner}seq > ? ORDER BY seq LIMIT ?", args + [last, batch]
            ).fetchall()
            if not rows:
                return
            for r in rows:
                yield _row_to_example(r)
            last = rows[-1]["seq"]

    def count(self, filters: dict[str, Any] | None = None) -> int:
        where, args = self._where(filters)
        return self.conn.execute(f"SELECT COUNT(*) FROM records{where}", args).fetchone()[0]

    def count_by(self, column: str, filters: dict[str, Any] | None = None) -> dict[str, int]:
        allowed = {"status", "split", "origin_kind", "source_kind", "label"}
        if column not in allowed:
            raise ValueError(f"cannot group by {column}")
        where, args = self._where(filters)
        rows = self.conn.execute(f"SELECT {column}, COUNT(*) FROM records{where} GROUP BY {column} ORDER BY {column}", args)
        return {(r[0] if r[0] is not None else "none"): r[1] for r in rows}

    def update_signals(self, updates: dict[str, dict[str, Any]], remove: Iterable[str] = ()) -> None:
        """Merge ``updates[id]`` into each record's signals (keys in ``remove`` dropped first)."""
        remove = list(remove)
        with self.tx() as c:
            for rid, upd in updates.items():
                r = c.execute("SELECT signals FROM records WHERE id=?", (rid,)).fetchone()
                if r is None:
                    raise NotFound(f"no record with id {rid!r}")
                sig = json.loads(r[0])
                for k in remove:
                    sig.pop(k, None)
                sig.update(upd)
                dup, leak, reward = _signal_columns(sig)
                c.execute(
                    "UPDATE records SET signals=?, dup_of=?, leak=?, reward=? WHERE id=?",
                    (json.dumps(sig, ensure_ascii=False), dup, leak, reward, rid),
                )

    def clear_signal(self, key: str, filters: dict[str, Any] | None = None) -> None:
        """Drop one signal key from every matching record (before a detector reruns)."""
        where, args = self._where(filters)
        with self.tx() as c:
            c.execute(
                f"UPDATE records SET signals=json_remove(signals, '$.' || ?) {where}", [key] + args
            )
            c.execute("UPDATE records SET dup_of=json_extract(signals,'$.duplicate_of'),"
                      " leak=CASE WHEN json_extract(signals,'$.leakage') IS NULL THEN 0 ELSE 1 END")

    def occurrences(self, record_id: str) -> list[tuple[str, str]]:
        """Every (file, loc) the record was seen at: its own source first, then further sightings."""
        r = self.conn.execute("SELECT source_file, source_loc FROM records WHERE id=?", (record_id,)).fetchone()
        own = [(r[0], r[1])] if r is not None and r[0] else []
        more = [(x[0], x[1]) for x in self.conn.execute(
            "SELECT file, loc FROM occurrences WHERE record_id=? ORDER BY file, loc", (record_id,))]
        return own + [o for o in more if o not in own]

    # -- review events --------------------------------------------------------
    def add_event(
        self,
        record_id: str,
        reviewer: str,
        action: str,
        *,
        frontend: str = "cli",
        reason: str | None = None,
        expected_version: int | None = None,
        new_example: Example | None = None,
        undoes: int | None = None,
        external_id: str | None = None,
    ) -> int | None:
        """Append one review event and refresh the derived status, atomically.

        ``expected_version`` is the version the reviewer saw; if the record has
        moved on, :class:`ConflictError` is raised and nothing is written.
        ``external_id`` makes the call idempotent (e.g. an Argilla response id):
        an event with the same external id already present returns ``None``.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
        if not reviewer or not reviewer.strip():
            raise ValueError("a reviewer name is required for every review event")
        if action == "edit" and new_example is None:
            raise ValueError("an edit needs the new record")
        with self.tx() as c:
            if external_id is not None and c.execute("SELECT 1 FROM events WHERE external_id=?", (external_id,)).fetchone():
                return None
            r = c.execute("SELECT version, status FROM records WHERE id=?", (record_id,)).fetchone()
            if r is None:
                raise NotFound(f"no record with id {record_id!r}")
            if expected_version is not None and r["version"] != expected_version:
                raise ConflictError(record_id, expected_version, r["version"], r["status"])
            if action == "undo":
                target = c.execute("SELECT reviewer, action FROM events WHERE id=? AND record_id=?", (undoes, record_id)).fetchone()
                if target is None or target["reviewer"] != reviewer:
                    raise ValueError(f"event {undoes} is not {reviewer}'s event on record {record_id}")
            new_id = None
            if new_example is not None:
                new_example.parent_id = record_id
                self.add_examples([new_example])
                new_id = new_example.id
            cur = c.execute(
                "INSERT INTO events (record_id, reviewer, action, reason, new_record_id, undoes, frontend, created_at, external_id)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (record_id, reviewer.strip(), action, reason, new_id, undoes, frontend, time.time(), external_id),
            )
            eid = cur.lastrowid
            evs = [dict(e) for e in c.execute("SELECT id, reviewer, action, undoes FROM events WHERE record_id=?", (record_id,))]
            status = derive_status(evs, self.config.min_approvals)
            c.execute("UPDATE records SET status=?, version=? WHERE id=?", (status, eid, record_id))
        return eid

    def events(self, record_id: str | None = None, reviewer: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM events", []
        conds = []
        if record_id:
            conds.append("record_id=?")
            args.append(record_id)
        if reviewer:
            conds.append("reviewer=?")
            args.append(reviewer)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        return [dict(r) for r in self.conn.execute(q + " ORDER BY id", args)]

    # -- rejects, chunks ------------------------------------------------------
    def add_rejects(self, rejects: Sequence[dict[str, Any]]) -> int:
        now = time.time()
        with self.tx() as c:
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO rejects (file, loc, field, reason, raw, created_at) VALUES (?,?,?,?,?,?)",
                [(rj["file"], rj["loc"], rj.get("field"), rj["reason"], (rj.get("raw") or "")[:2000], now) for rj in rejects],
            )
            return c.total_changes - before

    def add_chunks(self, chunks: Sequence[dict[str, Any]]) -> tuple[int, int]:
        added = 0
        with self.tx() as c:
            for ch in chunks:
                cur = c.execute(
                    "INSERT OR IGNORE INTO chunks (id, file, loc, grp, title, text, created_at) VALUES (?,?,?,?,?,?,?)",
                    (ch["id"], ch["file"], ch["loc"], ch["grp"], ch.get("title"), ch["text"], time.time()),
                )
                added += cur.rowcount
        return added, len(chunks) - added

    def chunks(self, limit: int | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM chunks ORDER BY file, rowid"
        if limit:
            q += f" LIMIT {int(limit)}"
        return [dict(r) for r in self.conn.execute(q)]

    # -- caches and meta ------------------------------------------------------
    def cache_get(self, ns: str, key: str) -> Any | None:
        r = self.conn.execute("SELECT value FROM cache WHERE ns=? AND key=?", (ns, key)).fetchone()
        return None if r is None else json.loads(r[0])

    def cache_put(self, ns: str, key: str, value: Any) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO cache VALUES (?,?,?,?)", (ns, key, json.dumps(value, ensure_ascii=False), time.time()))

    def meta_get(self, key: str, default: Any = None) -> Any:
        r = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if r is None else json.loads(r[0])

    def meta_put(self, key: str, value: Any) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, json.dumps(value, ensure_ascii=False)))


def open_store(workspace: str | Path | None = None) -> Store:
    ws = resolve(workspace)
    return Store(ws / "store.sqlite", WorkspaceConfig.load(ws))
