"""curate.agreement: kappas against references, event folding, conflicts, the store reader."""
from __future__ import annotations

import random

import pytest
from sklearn.metrics import cohen_kappa_score

from curate import agreement as ag
from curate.example import Example, Source


def test_cohen_kappa_matches_sklearn_on_random_labels():
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(5, 60)
        a = [rng.choice(ag.DECISIONS) for _ in range(n)]
        b = [x if rng.random() < 0.6 else rng.choice(ag.DECISIONS) for x in a]
        assert ag.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_cohen_kappa_edge_cases():
    assert ag.cohen_kappa([], []) is None
    assert ag.cohen_kappa(["approve"] * 4, ["approve"] * 4) is None  # p_e = 1: undefined
    assert ag.cohen_kappa(["approve", "reject"], ["reject", "approve"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="aligned"):
        ag.cohen_kappa(["approve"], [])


def test_fleiss_kappa_wikipedia_example():
    # Fleiss (1971) worked example as on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
    dec = {}
    for i, row in enumerate(table):
        labs = [f"c{k}" for k, n in enumerate(row) for _ in range(n)]
        dec[f"r{i}"] = {f"rater{j}": lab for j, lab in enumerate(labs)}
    assert ag.fleiss_kappa(dec, categories=[]) == pytest.approx(0.2099, abs=1e-4)


def test_fleiss_two_raters_and_perfect_agreement():
    dec = {"x": {"a": "approve", "b": "approve"}, "y": {"a": "reject", "b": "reject"}}
    assert ag.fleiss_kappa(dec) == pytest.approx(1.0)
    assert ag.percent_agreement(dec) == 1.0
    assert ag.fleiss_kappa({"x": {"a": "approve"}}) is None  # single-rated records do not count
    assert ag.fleiss_kappa({"x": {"a": "approve", "b": "approve"}}) is None  # P_e = 1


def test_events_fold_undo_edit_and_adjudication():
    evs = [
        {"id": 1, "record_id": "r1", "reviewer": "ann", "action": "approve", "undoes": None},
        {"id": 2, "record_id": "r1", "reviewer": "bob", "action": "reject", "undoes": None},
        {"id": 3, "record_id": "r1", "reviewer": "ann", "action": "reject", "undoes": None},
        {"id": 4, "record_id": "r1", "reviewer": "ann", "action": "undo", "undoes": 3},  # back to approve
        {"id": 5, "record_id": "r2", "reviewer": "bob", "action": "edit", "undoes": None},
        {"id": 6, "record_id": "r2", "reviewer": "cy", "action": "approve", "undoes": None},
        {"id": 7, "record_id": "r2", "reviewer": "boss", "action": "adjudicate-approve", "undoes": None},
        {"id": 8, "record_id": "r3", "reviewer": "cy", "action": "approve", "undoes": None},
        {"id": 9, "record_id": "r3", "reviewer": "cy", "action": "undo", "undoes": 8},
    ]
    dec, adj = ag.decisions_from_events(evs)
    assert dec == {"r1": {"ann": "approve", "bob": "reject"}, "r2": {"bob": "edit", "cy": "approve"}}
    assert adj == {"r2": "approve"}
    assert [c["record_id"] for c in ag.conflicts(dec, adj)] == ["r1"]
    assert [c["record_id"] for c in ag.conflicts(dec, adj, include_resolved=True)] == ["r1", "r2"]
    pairs = ag.pairwise(dec)
    assert [(p["labeler_a"], p["labeler_b"], p["records"], p["agreement"]) for p in pairs] == [
        ("ann", "bob", 1, 0.0), ("bob", "cy", 1, 0.0)]
    assert ag.percent_agreement(dec) == 0.0


def test_by_label_groups_records():
    dec = {"a": {"x": "approve", "y": "approve"}, "b": {"x": "approve", "y": "reject"}, "c": {"x": "reject", "y": "reject"}}
    rows = ag.by_label(dec, {"a": "card", "b": "card", "c": None})
    assert rows == [
        {"label": "card", "records": 2, "agreement": 0.5, "fleiss_kappa": pytest.approx(ag.fleiss_kappa({k: dec[k] for k in "ab"})),
         "pairs": [{"labeler_a": "x", "labeler_b": "y", "records": 2, "agreement": 0.5,
                    "cohen_kappa": pytest.approx(cohen_kappa_score(["approve", "approve"], ["approve", "reject"]))}]},
        {"label": "none", "records": 1, "agreement": 1.0, "fleiss_kappa": None,
         "pairs": [{"labeler_a": "x", "labeler_b": "y", "records": 1, "agreement": 1.0, "cohen_kappa": None}]},
    ]


def test_report_from_store(store):
    exs = [Example(messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                   source=Source(kind="ticket", file="t.csv", loc=f"row {i}"), label="L" if i < 2 else None) for i in range(3)]
    store.add_examples(exs)
    a, b, c = (e.id for e in exs)
    store.add_event(a, "ann", "approve", frontend="streamlit")
    store.add_event(a, "bob", "approve", frontend="streamlit")
    store.add_event(b, "ann", "approve", frontend="streamlit")
    store.add_event(b, "bob", "reject", frontend="streamlit", reason="wrong answer")
    store.add_event(c, "ann", "approve", frontend="streamlit")  # single-rated: not in the report
    rep = ag.report(store)
    assert rep["records"] == 2 and rep["labelers"] == ["ann", "bob"]
    assert rep["percent_agreement"] == 0.5
    assert [x["record_id"] for x in rep["conflicts"]] == [b]
    assert rep["pairs"][0]["records"] == 2 and rep["pairs"][0]["agreement"] == 0.5
    store.add_event(b, "carol", "adjudicate-reject", frontend="streamlit")
    rep = ag.report(store)
    assert rep["conflicts"] == [] and rep["resolved"] == 1
    assert store.get(b).status == "rejected"
