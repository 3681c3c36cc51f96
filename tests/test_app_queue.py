"""curate.queue: keyset paging, positions, 'not decided by me', cluster members, pick lists, index use."""
from __future__ import annotations

from test_app import build_workspace

from curate import queue
from curate.store import open_store


def test_paging_position_and_filters(tmp_path):
    ids = build_workspace(tmp_path / "ws")
    store = open_store(tmp_path / "ws")
    queue.ensure_indexes(store)
    queue.ensure_indexes(store)  # idempotent
    first = queue.next_record(store, {"status": "pending"})
    assert first.id == ids[0] and queue.position(store, {"status": "pending"}, first.seq) == 0
    second = queue.next_record(store, {"status": "pending"}, after_seq=first.seq)
    assert second.id == ids[1] and queue.position(store, {}, second.seq) == 1
    rows = queue.page(store, {}, after_seq=first.seq, limit=3)
    assert [r["id"] for r in rows] == ids[1:4]
    assert rows[0]["first_user"] == "I was charged twice for one card payment, please help" and rows[0]["dup"] == 1
    assert queue.next_record(store, {"has_leak": True}, after_seq=queue.next_record(store, {"has_leak": True}).seq) is None
    assert queue.count(store, {"low_reward": True}) == 1 and queue.count(store, {"origin": "synthetic"}) == 1
    store.add_event(ids[0], "ann", "approve", frontend="streamlit")
    store.add_event(ids[2], "bob", "reject", frontend="streamlit", reason="duplicate")
    assert queue.count(store, {"undecided_by": "ann"}) == 5
    assert queue.next_record(store, {"status": "approved", "undecided_by": "bob"}).id == ids[0]
    assert queue.count(store, {"status": "approved", "undecided_by": "ann"}) == 0
    assert queue.progress(store) == {"approved": 1, "pending": 4, "rejected": 1}
    assert queue.distinct(store, "label") == sorted({"card_payment_fee_charged", "activate_my_card", "exchange_rate",
                                                      "top_up_failed", "card_arrival"})
    assert queue.distinct(store, "source_kind") == ["synthetic", "ticket"]
    hist = queue.history(store, ids[0])
    assert [(e["reviewer"], e["action"], e["undone"]) for e in hist] == [("ann", "approve", False)]


def test_cluster_members_use_the_expression_index(tmp_path):
    ids = build_workspace(tmp_path / "ws")
    store = open_store(tmp_path / "ws")
    queue.ensure_indexes(store)
    assert [m.id for m in queue.cluster_members(store, ids[0], exclude=ids[1])] == [ids[0]]
    assert [m.id for m in queue.cluster_members(store, ids[0], exclude=ids[0])] == [ids[1]]
    assert queue.cluster_size(store, ids[0]) == 2
    plan = " ".join(r[3] for r in store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM records WHERE json_extract(signals, '$.dup_cluster') = ?", ("x",)))
    assert "records_dup_cluster" in plan
    plan = " ".join(r[3] for r in store.conn.execute("EXPLAIN QUERY PLAN SELECT COUNT(*) FROM records WHERE dup_of IS NOT NULL"))
    assert "records_has_dup" in plan
