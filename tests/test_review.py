"""Review events and the status rule (curate.status), via curate.review."""
from __future__ import annotations

from curate import review
from curate.example import Example, Source
from curate.status import derive_status


def ex(q: str) -> Example:
    return Example([{"role": "user", "content": q}, {"role": "assistant", "content": "a"}], Source("ticket"))


def ev(i, reviewer, action, undoes=None):
    return {"id": i, "reviewer": reviewer, "action": action, "undoes": undoes}


def test_status_rule():
    assert derive_status([]) == "pending"
    assert derive_status([ev(1, "a", "approve")]) == "approved"
    assert derive_status([ev(1, "a", "approve"), ev(2, "b", "reject")]) == "rejected"
    assert derive_status([ev(1, "a", "reject"), ev(2, "a", "approve")]) == "approved"  # latest per reviewer
    assert derive_status([ev(1, "a", "approve")], min_approvals=2) == "pending"
    assert derive_status([ev(1, "a", "approve"), ev(2, "b", "approve")], min_approvals=2) == "approved"
    assert derive_status([ev(1, "a", "reject"), ev(2, "c", "adjudicate-approve")]) == "approved"
    assert derive_status([ev(1, "a", "reject"), ev(2, "a", "undo", undoes=1)]) == "pending"
    assert derive_status([ev(1, "a", "edit")]) == "edited"


def test_decide_bulk_undo_and_summary(store):
    exs = [ex(f"q{i}") for i in range(5)]
    store.add_examples(exs)
    ids = review.select_ids(store, filters={"status": "pending"}, limit=3)
    assert len(ids) == 3
    res = review.decide(store, ids, "approve", "alice")
    assert res["applied"] == 3 and not res["conflicts"]
    res = review.decide(store, [exs[4].id, "missing-id"], "reject", "bob", reason="wrong answer")
    assert res["applied"] == 1 and res["missing"] == ["missing-id"]
    assert store.count_by("status") == {"approved": 3, "pending": 1, "rejected": 1}
    undone = review.undo_last(store, "bob")
    assert undone["record_id"] == exs[4].id and store.get(exs[4].id).status == "pending"
    s = review.status_summary(store)
    assert s["by_status"] == {"approved": 3, "pending": 2}
    assert {(e["reviewer"], e["action"]): e["n"] for e in s["events"]} == {("alice", "approve"): 3, ("bob", "reject"): 1, ("bob", "undo"): 1}


def test_decide_collects_conflicts(store):
    e = ex("x")
    store.add_examples([e])
    v = store.get(e.id).version
    review.decide(store, [e.id], "approve", "alice")
    res = review.decide(store, [e.id], "reject", "bob", expected_versions={e.id: v})
    assert res["applied"] == 0 and len(res["conflicts"]) == 1 and store.get(e.id).status == "approved"
