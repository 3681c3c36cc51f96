"""Integration: SIGKILL a real ``python -m curate ingest`` (reader process, or ``--workers 2``) of a ~300k-row
ticket CSV mid-way, rerun it, and compare with a clean serial ingest into another
workspace: exactly the same record ids (and splits, groups, rejects), no duplicated
rows, no orphaned reader/pool processes, the secondary indexes back."""
from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = 300_000

pytestmark = pytest.mark.integration


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ingest", ROOT / "bench" / "ingest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cmd(csv_path: Path, mapping: Path, ws: Path, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "curate", "ingest", str(csv_path), "--mapping", str(mapping), "--workspace", str(ws),
            "--json", "--batch-size", "2000", "--workers", str(workers)]


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _count(ws: Path) -> int:
    db = ws / "store.sqlite"
    if not db.exists():
        return 0
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return c.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        finally:
            c.close()
    except sqlite3.OperationalError:
        return 0


def _state(ws: Path) -> dict:
    c = sqlite3.connect(ws / "store.sqlite")
    try:
        return {
            "ids": dict(c.execute("SELECT id, split FROM records")),
            "rows": c.execute("SELECT COUNT(*) FROM records").fetchone()[0],
            "groups": dict(c.execute("SELECT grp, split FROM groups")),
            "split_counts": sorted(c.execute("SELECT label, total, heldout FROM split_counts")),
            "rejects": sorted(c.execute("SELECT file, loc, reason FROM rejects")),
            "indexes": sorted(r[0] for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='records' AND sql IS NOT NULL")),
            "mismatched_splits": c.execute(
                "SELECT COUNT(*) FROM records r JOIN groups g ON g.grp = r.grp WHERE g.split != r.split").fetchone()[0],
        }
    finally:
        c.close()


@pytest.mark.parametrize("workers", [1, 2], ids=["reader-process", "pool"])
def test_sigkill_mid_ingest_then_rerun_matches_clean(tmp_path, workers):
    bench = _bench()
    csv_path = tmp_path / "tickets.csv"
    bench.generate(csv_path, ROWS)
    with open(csv_path, "a", encoding="utf-8") as f:  # a few bad rows so rejects are covered too
        f.write('T-bad1,"only two",fields\n')
        f.write('T-bad2,"subject","body",,intent_01\n')
    mapping = tmp_path / "m.toml"
    mapping.write_text(bench.MAPPING, encoding="utf-8")

    killed_ws = tmp_path / "killed"
    # the killed run has a reader process (workers=1) or a worker pool (2): its children must die with it;
    # the clean run is all in one process (workers=0). The input (~100 MB) is bigger than the empty store,
    # so the killed run also had its secondary indexes dropped (deferred): the rerun must bring them back.
    p = subprocess.Popen(_cmd(csv_path, mapping, killed_ws, workers=workers), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    seen = 0
    while time.time() < deadline and p.poll() is None:
        seen = _count(killed_ws)
        if seen >= 30_000:
            break
        time.sleep(0.2)
    assert p.poll() is None, f"ingest finished before it could be killed (saw {seen} rows): make ROWS larger"
    children = [int(x) for x in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()]
    assert len(children) == workers, children
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    time.sleep(2)
    alive = [w for w in children if Path(f"/proc/{w}").exists() and "Z" not in _proc_state(w)]
    assert alive == [], f"reader/pool processes outlived the killed ingest: {alive}"
    partial = _count(killed_ws)
    assert 0 < partial < ROWS

    rerun = subprocess.run(_cmd(csv_path, mapping, killed_ws, workers=workers), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    clean_ws = tmp_path / "clean"
    clean = subprocess.run(_cmd(csv_path, mapping, clean_ws, workers=0), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert clean.returncode == 0, clean.stderr[-2000:]

    a, b = _state(killed_ws), _state(clean_ws)
    assert a["rows"] == len(a["ids"]) == ROWS  # no duplicated rows; every generated ticket is one record
    assert set(a["ids"]) == set(b["ids"])
    assert a["ids"] == b["ids"]  # same splits too: the rolled-back batch is redone identically
    assert a["groups"] == b["groups"] and a["split_counts"] == b["split_counts"]
    assert a["mismatched_splits"] == 0
    assert a["rejects"] == b["rejects"] and len(a["rejects"]) == 2
    from curate.store import SECONDARY_INDEXES

    assert a["indexes"] == b["indexes"] == sorted(SECONDARY_INDEXES)
