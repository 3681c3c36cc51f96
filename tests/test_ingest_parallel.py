"""``ingest --workers N`` gives exactly the records, order, splits and rejects of one worker."""
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
    for w in (1, 3):
        store = open_store(tmp_path / f"ws{w}")
        reps[w] = ingest_paths(store, [p], mapping=mapping, batch_size=400, workers=w).totals()
        store.close()
    assert reps[1] == reps[3] and reps[1]["added"] == 3000 and reps[1]["rejected"] == 1
    a, b = _state(tmp_path / "ws1"), _state(tmp_path / "ws3")
    assert a == b and len(a[0]) == 3000
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
