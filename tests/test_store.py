"""The store: idempotent inserts, occurrences, optimistic conflicts, linked edits."""
from __future__ import annotations

import pytest

from curate.example import Example, Source
from curate.store import ConflictError, NotFound, open_store


def ex(q: str, a: str = "ok", file: str = "f.csv", loc: str = "row 1", **kw) -> Example:
    return Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}], Source("ticket", file, loc), **kw)


def test_add_is_idempotent_and_keeps_occurrences(store):
    added, present = store.add_examples([ex("a"), ex("b", loc="row 2"), ex("a", file="g.csv", loc="row 7")])
    assert len(added) == 2 and len(present) == 1
    added, present = store.add_examples([ex("a"), ex("b", loc="row 2")])
    assert added == [] and len(present) == 2
    assert store.count() == 2
    rid = ex("a").id
    assert store.occurrences(rid) == [("f.csv", "row 1"), ("g.csv", "row 7")]
    assert store.get(rid).split in ("train", "heldout")
    with pytest.raises(NotFound):
        store.get("nope")


def test_filters_and_counts(store):
    store.add_examples([ex(f"q{i}", label="x" if i % 2 else "y") for i in range(10)])
    assert store.count({"label": "x"}) == 5
    assert sum(store.count_by("split").values()) == 10
    assert [e.id for e in store.iter_records({"label": "y"}, batch=2)] == [e.id for e in store.query({"label": "y"})]
    with pytest.raises(ValueError, match="unknown filter"):
        store.query({"colour": "red"})


def test_stale_version_conflict_writes_nothing(store):
    e = ex("refund?")
    store.add_examples([e])
    seen = store.get(e.id).version
    store.add_event(e.id, "alice", "approve", expected_version=seen)
    n_events = len(store.events())
    with pytest.raises(ConflictError) as err:
        store.add_event(e.id, "bob", "reject", expected_version=seen, reason="wrong")
    assert "reload it" in str(err.value) and err.value.current != seen
    assert len(store.events()) == n_events
    assert store.get(e.id).status == "approved"


def test_concurrent_writers_one_wins(workspace):
    s1, s2 = open_store(workspace), open_store(workspace)
    e = ex("two reviewers")
    s1.add_examples([e])
    v = s1.get(e.id).version
    s1.add_event(e.id, "alice", "approve", expected_version=v)
    with pytest.raises(ConflictError):
        s2.add_event(e.id, "bob", "reject", expected_version=v)
    assert s2.get(e.id).status == "approved"


def test_edit_creates_linked_record(store):
    e = ex("wrong answer?", "bad")
    store.add_examples([e])
    new = e.edited([{"role": "user", "content": "wrong answer?"}, {"role": "assistant", "content": "good"}])
    store.add_event(e.id, "alice", "edit", new_example=new)
    old, fresh = store.get(e.id), store.get(new.id)
    assert old.status == "edited" and old.messages[1]["content"] == "bad"
    assert fresh.parent_id == e.id and fresh.status == "pending" and fresh.group == old.group and fresh.split == old.split
    assert store.events(e.id)[-1]["new_record_id"] == new.id


def test_external_id_idempotent(store):
    e = ex("argilla")
    store.add_examples([e])
    assert store.add_event(e.id, "ann", "approve", frontend="argilla", external_id="resp-1") is not None
    assert store.add_event(e.id, "ann", "approve", frontend="argilla", external_id="resp-1") is None
    assert len(store.events(e.id)) == 1


def test_signals_update_and_clear(store):
    e = ex("dup?")
    store.add_examples([e])
    store.update_signals({e.id: {"duplicate_of": "x", "leakage": [{"id": "y"}], "reward": {"score": 2.0}}})
    assert store.count({"has_duplicate": True}) == 1 and store.count({"has_leak": True}) == 1
    assert store.count({"low_reward": True}) == 1
    store.clear_signal("leakage")
    assert store.count({"has_leak": True}) == 0 and "leakage" not in store.get(e.id).signals


def test_cache_and_meta(store):
    store.cache_put("synth", "k", {"a": 1})
    assert store.cache_get("synth", "k") == {"a": 1} and store.cache_get("synth", "missing") is None
    store.meta_put("m", [1, 2])
    assert store.meta_get("m") == [1, 2] and store.meta_get("x", 5) == 5
