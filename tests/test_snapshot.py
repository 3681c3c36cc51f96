"""Snapshots: approved only, immutable, verified by sha256, loadable by polars and datasets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curate import snapshot as snap
from curate.example import Example, Source

ROOT = Path(__file__).resolve().parent.parent


def _fill(store, n=40):
    exs = [Example([{"role": "system", "content": "classify"}, {"role": "user", "content": f"query number {i}"},
                    {"role": "assistant", "content": f"label_{i % 3}"}], Source("ticket", "t.csv", f"row {i}"), label=f"label_{i % 3}")
           for i in range(n)]
    store.add_examples(exs)
    return exs


def _approve_all_but(store, exs, skip: int):
    for e in exs[skip:]:
        store.add_event(e.id, "alice", "approve")


def test_create_only_approved_and_manifest(store):
    exs = _fill(store)
    _approve_all_but(store, exs, 5)
    store.add_event(exs[0].id, "bob", "reject", reason="wrong label")
    m = snap.create(store, "v1")
    d = snap.snapshots_dir(store) / "v1"
    assert set(os.listdir(d)) == {"train.parquet", "heldout.parquet", "manifest.json"}
    for f in ("train.parquet", "heldout.parquet"):
        assert len(m["files"][f]["sha256"]) == 64 and m["files"][f]["sha256"] == snap.sha256_file(d / f)
    rows = snap.load(store, "v1", "train") + snap.load(store, "v1", "heldout")
    ids = {r["id"] for r in rows}
    assert ids == {e.id for e in exs[5:]}  # pending (1-4) and rejected (0) never enter
    assert m["counts"]["records"] == 35 and sum(m["counts"]["by_split"].values()) == 35
    assert m["files"]["train.parquet"]["rows"] + m["files"]["heldout.parquet"]["rows"] == 35
    assert rows[0]["messages"][0] == {"role": "system", "content": "classify"}
    assert snap.verify(store, "v1") == []


def test_immutable_and_byte_flip_detected(store):
    exs = _fill(store)
    _approve_all_but(store, exs, 0)
    snap.create(store, "v1")
    with pytest.raises(snap.SnapshotError, match="already exists"):
        snap.create(store, "v1")
    d = snap.snapshots_dir(store) / "v1"
    for name in ("train.parquet", "manifest.json"):
        p = d / name
        orig = p.read_bytes()
        os.chmod(p, 0o644)
        flipped = bytearray(orig)
        flipped[len(flipped) // 2] ^= 0x01
        p.write_bytes(bytes(flipped))
        problems = snap.verify(store, "v1")
        assert problems, name
        r = subprocess.run([sys.executable, "-m", "curate", "snapshot", "verify", "v1", "--workspace", str(store.workspace)],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 1 and "FAILED" in r.stdout
        with pytest.raises(snap.SnapshotError, match="failed verification"):
            snap.load(store, "v1")
        p.write_bytes(orig)
        assert snap.verify(store, "v1") == []


def test_loads_with_polars_and_datasets(store):
    import polars as pl

    exs = _fill(store)
    _approve_all_but(store, exs, 0)
    snap.create(store, "v1")
    d = snap.snapshots_dir(store) / "v1"
    df = pl.read_parquet(d / "train.parquet")
    assert df.height > 0 and df["messages"].dtype == pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files={"train": str(d / "train.parquet"), "heldout": str(d / "heldout.parquet")},
                      cache_dir=str(store.workspace / "hf-cache"))
    assert ds["train"].num_rows == df.height and ds["train"][0]["messages"][1]["role"] == "user"
    assert ds["heldout"].num_rows == json.loads((d / "manifest.json").read_text())["files"]["heldout.parquet"]["rows"]


def test_list_show_diff_and_parent(store):
    exs = _fill(store)
    _approve_all_but(store, exs, 20)
    snap.create(store, "v1")
    _approve_all_but(store, exs, 10)
    m2 = snap.create(store, "v2")
    assert m2["parent"] == "v1"
    assert [s["name"] for s in snap.list_snapshots(store)] == ["v1", "v2"]
    d = snap.diff(store, "v1", "v2")
    assert sum(v["added"] for v in d["summary"].values()) == 10 and sum(v["removed"] for v in d["summary"].values()) == 0
    with pytest.raises(snap.SnapshotError):
        snap.show(store, "v9")


def test_nothing_approved_fails(store):
    _fill(store)
    with pytest.raises(snap.SnapshotError, match="no approved records"):
        snap.create(store, "v1")
