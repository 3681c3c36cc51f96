"""Split rule: stable when data is added, groups never straddle, stratified by label."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from curate.example import Example, Source
from curate.ingest import ingest_paths


def _write_threads(path: Path, tickets: range) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ticket_id", "author", "body"])
        for t in tickets:
            w.writerow([f"T{t}", "customer", f"question {t} about my card"])
            w.writerow([f"T{t}", "agent", f"answer {t}"])
            w.writerow([f"T{t}", "customer", f"follow-up {t}"])
            w.writerow([f"T{t}", "agent", f"second answer {t}"])


MAPPING = {"thread": {"id": "ticket_id", "role": "author", "text": "body", "user_values": ["customer"]}}


def _splits(store) -> dict[str, str]:
    return {e.group: e.split for e in store.iter_records()}


def test_adding_data_never_moves_a_group(store, tmp_path):
    a = tmp_path / "a.csv"
    _write_threads(a, range(0, 300))
    ingest_paths(store, [a], mapping=MAPPING)
    before = _splits(store)
    assert len(before) == 300
    b = tmp_path / "b.csv"
    _write_threads(b, range(300, 900))
    ingest_paths(store, [a, b], mapping=MAPPING)
    after = _splits(store)
    assert len(after) == 900
    assert {g: after[g] for g in before} == before
    held = sum(s == "heldout" for s in after.values()) / len(after)
    assert 0.15 < held < 0.25


def test_group_never_straddles(store):
    rows = []
    for g in range(200):
        for k in range(3):  # three different records of one conversation/thread
            rows.append(Example([{"role": "user", "content": f"conv {g} turn {k}"}, {"role": "assistant", "content": "ok"}],
                                Source("transcript", "x.vtt", f"cue {k}"), group=f"transcript:x#{g}"))
    store.add_examples(rows[:250])
    store.add_examples(rows[250:])
    per_group: dict[str, set] = {}
    for e in store.iter_records():
        per_group.setdefault(e.group, set()).add(e.split)
    assert len(per_group) == 200 and all(len(s) == 1 for s in per_group.values())


def test_stratified_by_label(store):
    exs = [Example([{"role": "user", "content": f"q {lab} {i}"}, {"role": "assistant", "content": lab}], Source("ticket"), label=lab)
           for lab in ("a", "b", "c") for i in range(50)]
    for i in range(0, len(exs), 37):  # arriving in odd batches
        store.add_examples(exs[i:i + 37])
    held = Counter(e.label for e in store.iter_records({"split": "heldout"}))
    assert held == {"a": 10, "b": 10, "c": 10}
    assert [tuple(r) for r in store.conn.execute("SELECT label, total, heldout FROM split_counts ORDER BY label")] == [
        ("a", 50, 10), ("b", 50, 10), ("c", 50, 10)]


def test_same_split_across_workspaces(tmp_path):
    from curate.store import open_store

    exs = [Example([{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "x"}], Source("ticket")) for i in range(100)]
    s1, s2 = open_store(tmp_path / "w1"), open_store(tmp_path / "w2")
    s1.add_examples(exs)
    s2.add_examples(list(reversed(exs)))
    assert {e.id: e.split for e in s1.iter_records()} == {e.id: e.split for e in s2.iter_records()}
