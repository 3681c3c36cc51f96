"""``ingest --workers N`` (0: one process, 1: a reader process beside the writer, N>1: a pool) gives
exactly the same records, order, splits and rejects."""
from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

from curate.ingest import ingest_paths
from curate.store import open_store


def _csv(path: Path, n: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ticket_id", "text", "category"])
        for i in range(n):
            if i == 1500:
                f.write("T-bad,too,many,fields\n")
            w.writerow([f"T{i}", f"question {i} about card {i % 7} call 415-555-{i % 10000:04d}" if i % 50 == 0 else f"question {i}",
                        f"intent_{i % 5}"])


def _state(ws: Path):
    c = sqlite3.connect(ws / "store.sqlite")
    try:
        return ([tuple(r) for r in c.execute("SELECT id, split, source_loc, signals FROM records ORDER BY seq")],
                sorted(c.execute("SELECT file, loc, reason FROM rejects")))
    finally:
        c.close()


def test_workers_same_result(tmp_path):
    p = tmp_path / "t.csv"
    _csv(p, 3000)
    mapping = {"columns": {"user": "text", "assistant": "category", "label": "category", "group": "ticket_id"}}
    reps = {}
    for w in (0, 1, 3):
        store = open_store(tmp_path / f"ws{w}")
        reps[w] = ingest_paths(store, [p], mapping=mapping, batch_size=400, workers=w, defer_indexes=w == 1).totals()
        store.close()
    assert reps[0] == reps[1] == reps[3] and reps[1]["added"] == 3000 and reps[1]["rejected"] == 1
    a, b, c = _state(tmp_path / "ws0"), _state(tmp_path / "ws1"), _state(tmp_path / "ws3")
    assert a == b == c and len(a[0]) == 3000
    assert sum('"PHONE"' in r[3] for r in a[0]) == 60


def test_workers_mapping_error_and_threads_fall_back(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("foo,bar\n1,2\n")
    store = open_store(tmp_path / "ws")
    rep = ingest_paths(store, [p], workers=2)
    assert rep.totals()["rejected"] == 1 and rep.totals()["added"] == 0
    th = Path(__file__).resolve().parent.parent / "data" / "samples" / "ticket_threads.csv"
    rep = ingest_paths(store, [th], workers=2)  # [thread] mapping: read serially
    assert rep.totals()["added"] == 3


def test_reader_process_errors_reach_the_caller(tmp_path, monkeypatch):
    """A bad sibling mapping raises the same ValueError as in one process, after the files before it
    were written; a reader process that dies is a clear error, not a hang."""
    import os

    import pytest

    import curate.ingest as ingest

    good, bad_dir = tmp_path / "a.csv", tmp_path / "b"
    good.write_text("text,category\nhello,greet\n")
    bad_dir.mkdir()
    (bad_dir / "t.csv").write_text("text,category\nhi,greet\n")
    (bad_dir / "mapping.toml").write_text("[columns\n")
    for w in (0, 1):
        store = open_store(tmp_path / f"ws{w}")
        with pytest.raises(ValueError, match="invalid TOML"):
            ingest_paths(store, [good, bad_dir / "t.csv"], workers=w)
        assert store.count() == 1
        store.close()

    monkeypatch.setattr(ingest, "_cores", lambda: 2)  # the reader process even on a 1-core machine
    monkeypatch.setattr(ingest, "_events", lambda *a, **k: os._exit(3))  # the reader process dies at once
    store = open_store(tmp_path / "ws2")
    with pytest.raises(RuntimeError, match="reader process died"):
        ingest_paths(store, [good], workers=1)
    assert store.count() == 0


def test_batches_built_by_the_writer_give_the_same_result(tmp_path, monkeypatch):
    """Work sharing: the reader process hands some batches to the writer as raw rows; with every
    other batch handed over (whatever the timing) the store is the same as in one process."""
    import itertools

    import curate.ingest as ingest

    p = tmp_path / "t.csv"
    _csv(p, 3000)
    mapping = {"columns": {"user": "text", "assistant": "category", "label": "category", "group": "ticket_id"}}
    flip = itertools.cycle([True, False])
    monkeypatch.setattr(ingest, "_cores", lambda: 2)
    monkeypatch.setattr(ingest._Balance, "__call__", lambda self: next(flip))
    handed = []
    real = ingest.tickets.build_batch

    def spy(chunk):
        out = real(chunk)
        handed.append(out[3])
        return out

    # in this (writer) process with a reader process: called for handed-over batches only
    monkeypatch.setattr(ingest.tickets, "build_batch", spy)
    reps = {}
    for w in (0, 1):
        store = open_store(tmp_path / f"ws{w}")
        reps[w] = ingest_paths(store, [p], mapping=mapping, batch_size=400, workers=w).totals()
        store.close()
        if w == 0:
            handed.clear()
    assert reps[0] == reps[1] and reps[1]["added"] == 3000 and reps[1]["rejected"] == 1
    assert len(handed) >= 3  # batches 2, 4, 6 (of 8) were built by the writer
    assert _state(tmp_path / "ws0") == _state(tmp_path / "ws1")


def test_build_batch_matches_the_generic_path():
    """``tickets.build_batch`` (store rows straight from the strings) gives exactly the rows and rejects
    of the generic path (Example objects, make_example, prepare_row) for plain and odd rows alike."""
    from curate.ingest import _split
    from curate.ingest.common import ReadOptions
    from curate.ingest.tickets import _process_chunk, _resolve_columns, build_batch

    texts = ["plain question", "  padded\tturn\r\n\n\n\nwith  runs  ", "mail me at a.b@x.com", "call 415-555-1234",
             "my name is John Smith", "login is bob_1", "user id is u_9", "Café ünïcode ok", "quote \" and \\ slash",
             "card 4111 1111 1111 1111", "   ", "", "order number 1234567890", "\u00a0nbsp\u2003space", "\x1fctl",
             "tab\there", "dup", "dup"]
    rows = []
    for i, t in enumerate(texts):
        rows.append((f"row {i}", {"tid": f"T{i % 5}" if i % 3 else "", "subject": t[:4], "text": t,
                                   "reply": texts[-1 - i] or "ok", "category": f"c{i % 3}" if i % 4 else ""}, None))
    rows.append(("row 99", None, "row has 3 fields, header has 2"))
    rows.append(("row 100", {"tid": 7, "subject": None, "text": 12, "reply": "r", "category": 3}, None))
    cols = ["tid", "subject", "text", "reply", "category"]
    mappings = [
        {"columns": {"user": "text", "assistant": "reply", "label": "category", "group": "tid"}},
        {"system": "Be nice.\n\n\n", "columns": {"user_template": "{subject}\n\n{text}", "assistant": "reply"}},
        {"columns": {"user": "text", "assistant_template": "{reply} / {category}", "label": "category"}},
        {"columns": {"user_template": "{nope}", "assistant": "reply"}},
        {"columns": {"user": "text", "assistant": "reply", "names": ["subject"]}},
        {"system": "   ", "columns": {"user": "text", "assistant": "reply"}},
    ]
    for mapping in mappings:
        for opts in (ReadOptions(mapping=mapping), ReadOptions(mapping=mapping, scrub_pii=False)):
            m = _resolve_columns(cols, mapping, "f.csv")
            chunk = (rows, "f.csv", mapping, opts, m)
            want = _split(_process_chunk(chunk))
            got = build_batch(chunk)
            strip = lambda rs: [r[:13] + r[14:] for r in rs]  # created_at: the clock
            built = got[0].full() if hasattr(got[0], "full") else got[0]
            assert strip(built) == strip(want[0]), mapping
            assert [r.to_dict() for r in got[1]] == [r.to_dict() for r in want[1]], mapping
            assert got[2:] == want[2:]
