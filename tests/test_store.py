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


def _indexes(store) -> dict[str, str]:
    return dict(store.conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='records' AND sql IS NOT NULL"))


def test_add_mixed_batch_new_present_and_repeated(store):
    """The batch insert's two paths: all new (nothing read back) and mixed (new, already stored,
    repeated within the batch) give the same answer and occurrences as one-by-one inserts."""
    added, present = store.add_examples([ex("a"), ex("b", loc="row 2")])
    assert (len(added), present) == (2, [])
    batch = [ex("c", loc="row 3"), ex("a", file="g.csv", loc="row 9"), ex("c", file="h.csv", loc="row 1"),
             ex("d", loc="row 4"), ex("a")]
    added, present = store.add_examples(batch)
    assert added == [ex("c").id, ex("d").id]
    assert present == [ex("a").id, ex("c").id, ex("a").id]
    assert store.count() == 4
    assert store.occurrences(ex("a").id) == [("f.csv", "row 1"), ("g.csv", "row 9")]
    assert store.occurrences(ex("c").id) == [("f.csv", "row 3"), ("h.csv", "row 1")]
    assert all(e.split in ("train", "heldout") for e in batch)  # splits are set on the examples too
    # insertion order kept (seq increases; a conflicting row may use up a seq number, so not dense)
    assert [r[0] for r in store.conn.execute("SELECT id FROM records ORDER BY seq")] == [ex(q).id for q in "abcd"]


def test_ticket_rows_batch_same_as_full_rows(workspace, tmp_path):
    """A compact TicketRows batch (the ingest's hot path) stores exactly what the same rows in the
    prepare_row layout store: every column, splits, present rows and occurrences; odd file names too."""
    from curate.store import Store, TicketRows, prepare_row

    def rows(file):
        out = []
        for q, loc in (("a", "row 1"), ("b", "row 2"), ("a", "row 3")):
            e = Example(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": "x"}],
                        source=Source("ticket", file, loc, "T" + q), group="ticket:T" + q, label="l" + q)
            e.created_at = 1.0
            out.append(prepare_row(e))
        return out

    dumps = []
    for i, compact in enumerate((False, True)):
        st = Store(tmp_path / f"s{i}.sqlite")
        for file in ("it's \"q\".csv", "other.csv"):
            r = rows(file)
            batch = TicketRows(file, [TicketRows.compact(x) for x in r]) if compact else r
            assert len(batch) == 3
            st.add_rows(batch)
        dumps.append((list(map(tuple, st.conn.execute("SELECT * FROM records ORDER BY seq"))),
                      list(map(tuple, st.conn.execute("SELECT * FROM occurrences ORDER BY 1, 2, 3"))),
                      list(map(tuple, st.conn.execute("SELECT grp, split, label FROM groups ORDER BY 1")))))
        st.close()
    assert dumps[0] == dumps[1]
    assert len(dumps[0][0]) == 2 and len(dumps[0][1]) == 4  # a, b; a's 2nd row and all three of other.csv
    assert dumps[0][0][0][4] == "it's \"q\".csv"


# Each secondary index is kept because a query uses it (store.SECONDARY_INDEXES); these are those queries.
INDEX_QUERIES = {
    "records_status": ("SELECT id FROM records WHERE status IN ('pending') AND seq > 5 ORDER BY seq LIMIT 10", ()),
    "records_split": ("SELECT COUNT(*) FROM records WHERE split IN ('heldout') AND status IN ('approved')", ()),
    "records_origin": ("SELECT COUNT(*) FROM records WHERE origin_kind IN ('synthetic')", ()),
    "records_kind": ("SELECT source_kind FROM records WHERE source_kind IS NOT NULL AND source_kind > 'a'"
                     " ORDER BY source_kind LIMIT 1", ()),
    "records_label": ("SELECT id FROM records WHERE label IN ('x') AND seq > 3 ORDER BY seq LIMIT 5", ()),
    "records_parent": ("SELECT id FROM records WHERE parent_id=? ORDER BY seq", ("abc",)),
}


def test_every_secondary_index_is_used_by_its_query(store):
    from curate.store import SECONDARY_INDEXES

    store.add_examples([ex(f"q{i}", label=f"l{i % 7}") for i in range(300)])
    assert set(INDEX_QUERIES) == set(SECONDARY_INDEXES)
    for name, (q, args) in INDEX_QUERIES.items():
        plan = " | ".join(r[3] for r in store.conn.execute("EXPLAIN QUERY PLAN " + q, args))
        assert name in plan, (name, plan)


def test_old_schema_is_migrated_on_open(workspace):
    """A v1 store (records_grp, a full records_parent) opens as v2 with its rows untouched."""
    import sqlite3

    from curate.store import SECONDARY_INDEXES, open_store

    s = open_store(workspace)
    s.add_examples([ex("old one"), ex("old two", loc="row 2")])
    before = [tuple(r) for r in s.conn.execute("SELECT * FROM records ORDER BY seq")]
    s.close()
    c = sqlite3.connect(workspace / "store.sqlite")  # what the v1 schema had
    c.execute("DROP INDEX records_parent")
    c.execute("CREATE INDEX records_parent ON records(parent_id)")
    c.execute("CREATE INDEX records_grp ON records(grp)")
    c.execute("DELETE FROM meta WHERE key='schema_version'")
    c.commit()
    c.close()
    s = open_store(workspace)
    idx = _indexes(s)
    assert "records_grp" not in idx and set(idx) == set(SECONDARY_INDEXES)
    assert "WHERE parent_id IS NOT NULL" in idx["records_parent"]
    assert [tuple(r) for r in s.conn.execute("SELECT * FROM records ORDER BY seq")] == before
    assert s.meta_get("schema_version") == 2
    s.add_examples([ex("new one", loc="row 3")])
    assert s.count() == 3
    s.close()


def test_deferred_indexes_come_back(workspace):
    from curate.store import SECONDARY_INDEXES, open_store

    s = open_store(workspace)
    with s.deferred_indexes():
        assert set(_indexes(s)) == set()  # the UNIQUE id index is kept (autoindex: no sql)
        s.add_examples([ex("during load")])
        assert s.add_examples([ex("during load")]) == ([], [ex("during load").id])  # still idempotent
    assert set(_indexes(s)) == set(SECONDARY_INDEXES)
    with pytest.raises(RuntimeError):
        with s.deferred_indexes():
            raise RuntimeError("load failed")
    assert set(_indexes(s)) == set(SECONDARY_INDEXES)
    # a load killed while they were dropped: the next store opened builds them again
    with s.tx() as c:
        for n in SECONDARY_INDEXES:
            c.execute(f"DROP INDEX {n}")
    s.close()
    s = open_store(workspace)
    assert set(_indexes(s)) == set(SECONDARY_INDEXES)
    assert s.count({"status": "pending"}) == 1
    s.close()
