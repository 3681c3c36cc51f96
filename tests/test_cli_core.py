"""The "Done when" flow through the real CLI: ingest data/ (minus the big BANKING77
files), stats add up, re-ingest adds 0, bulk approval, snapshot create/verify/show."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from curate.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv) -> tuple[int, dict | str]:
    rc = main(list(argv))
    out = capsys.readouterr().out
    try:
        return rc, json.loads(out)
    except json.JSONDecodeError:
        return rc, out


def test_done_when_flow(tmp_path, capsys):
    data = tmp_path / "data"
    for sub in ("abcd", "banking77_demo", "samples"):
        shutil.copytree(ROOT / "data" / sub, data / sub)
    ws = str(tmp_path / "ws")
    rc, rep = run(capsys, "ingest", str(data), "--workspace", ws, "--json")
    t = rep["totals"]
    assert rc == 0 and t["rejected"] == 0
    assert t["read"] == t["added"] + t["already_present"] + t["rejected"] + t["chunks_added"] + t["chunks_present"]
    rc, st = run(capsys, "stats", "--workspace", ws, "--json")
    assert st["records"] == t["added"] == 770 + 18 and st["occurrences_beyond_first"] == t["already_present"]
    for key in ("by_status", "by_split", "by_origin", "by_source_kind"):
        assert sum(st[key].values()) == st["records"], key
    assert st["chunks"] == t["chunks_added"] == 55
    rc, rep2 = run(capsys, "ingest", str(data), "--workspace", ws, "--json")
    assert rc == 0 and rep2["totals"]["added"] == 0 and rep2["totals"]["chunks_added"] == 0
    rc, res = run(capsys, "review", "approve", "--status", "pending", "--reviewer", "lead", "--workspace", ws, "--json")
    assert rc == 0 and res["applied"] == st["records"]
    rc, m = run(capsys, "snapshot", "create", "v1", "--workspace", ws, "--json")
    assert rc == 0
    rc, v = run(capsys, "snapshot", "verify", "v1", "--workspace", ws, "--json")
    assert rc == 0 and v["ok"] is True
    rc, show = run(capsys, "snapshot", "show", "v1", "--workspace", ws, "--json")
    assert rc == 0 and all(len(show["files"][f]["sha256"]) == 64 for f in ("train.parquet", "heldout.parquet"))
    assert show["counts"]["records"] == st["records"]
    rc, _ = run(capsys, "snapshot", "create", "v1", "--workspace", ws)
    assert rc == 1  # immutable


def test_review_needs_ids_or_filters(tmp_path, capsys):
    rc, _ = run(capsys, "review", "approve", "--reviewer", "x", "--workspace", str(tmp_path / "ws"))
    assert rc == 2


def test_ingest_missing_path_is_an_error_not_a_traceback(tmp_path, capsys):
    rc = main(["ingest", str(tmp_path / "nope.csv"), "--workspace", str(tmp_path / "ws")])
    assert rc == 2 and "no such file" in capsys.readouterr().err
