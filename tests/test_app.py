"""app.py page logic through Streamlit's AppTest (fast tier): login, decisions as events, conflicts, filters,
edit/undo, agreement and snapshot pages. The browser test reuses :func:`build_workspace`."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from curate.example import Example, Source
from curate.store import open_store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


def _ex(i: int, user: str, answer: str, label: str, **kw) -> Example:
    return Example(
        messages=[{"role": "system", "content": "You are a bank support agent."},
                  {"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        source=Source(kind=kw.pop("kind", "ticket"), file="tickets.csv", loc=f"row {i + 2}", ref=f"T-{100 + i}"),
        label=label, split=kw.pop("split", "train"), **kw,
    )


def build_workspace(ws: Path) -> list[str]:
    """Six records with every signal the review screen shows. Returns their ids in queue order."""
    exs = [
        _ex(0, "Hi, I'm [NAME]. My card [CARD] was charged twice, email me at [EMAIL].",
            "Sorry about that, [NAME]. I have flagged the duplicate charge; the refund reaches your card in 3-5 days.",
            "card_payment_fee_charged"),
        _ex(1, "I was charged twice for one card payment, please help",
            "I have flagged the duplicate charge; you will get the refund within 3-5 working days.", "card_payment_fee_charged"),
        _ex(2, "How do I activate my new card?", "Open the app, go to Cards and tap Activate.", "activate_my_card"),
        _ex(3, "what is the exchange rate today", "We use the interbank rate plus 0.5% on weekends.", "exchange_rate",
            origin={"kind": "synthetic", "parent_ids": ["abc"], "model": "smollm2-135m", "strategy": "paraphrase",
                    "prompt_hash": "p1"}, kind="synthetic"),
        _ex(4, "My top up failed", "Please retry; failed top ups are refunded automatically.", "top_up_failed"),
        _ex(5, "Where is my card? It has not arrived", "Cards arrive within 7 working days; I can track it for you.",
            "card_arrival"),
    ]
    store = open_store(ws)
    store.add_examples(exs)
    ids = [e.id for e in exs]
    now = time.time()
    store.update_signals({
        ids[0]: {"dup_cluster": ids[0], "pii": [{"type": "NAME"}, {"type": "CARD"}, {"type": "EMAIL"}, {"type": "NAME"}]},
        ids[1]: {"duplicate_of": ids[0], "dedup_at": now, "dup_detector": "near", "dup_score": 0.874, "dup_cluster": ids[0]},
        ids[2]: {"leakage": [{"detector": "exact", "score": 1.0, "other_id": "h1", "source": "heldout",
                              "other_text": "How do I activate my new card?"}]},
        ids[3]: {"reward": {"score": 2.2, "rationale": "answer invents a weekend fee not in the policy", "judge": 2, "length": 4}},
        ids[4]: {"reward": {"score": 4.6, "rationale": "correct and concise"}},
    })
    store.close()
    return ids


@pytest.fixture
def ws(tmp_path, monkeypatch):
    d = tmp_path / "ws"
    ids = build_workspace(d)
    monkeypatch.setenv("WORKBENCH_HOME", str(d))
    return d, ids


def _app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=30)
    return at.run()


def _login(at, name="alice", password=None):
    at.text_input(key="login_name").input(name)
    if password is not None:
        at.text_input(key="login_password").input(password)
    next(b for b in at.button if b.label == "Sign in").click()
    return at.run()


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [s.value for s in at.success] + [i.value for i in at.info] + [h.value for h in at.subheader]
    parts += [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def test_login_required_before_any_decision(ws):
    d, ids = ws
    at = _app()
    assert not at.exception
    assert [b for b in at.button if b.key == "btn_approve"] == []  # no action before sign-in
    assert "Sign in to review" in [t.value for t in at.title]
    at = _login(at, name="   ")
    assert any("Enter your name" in e.value for e in at.error)
    assert [b for b in at.button if b.key == "btn_approve"] == []
    at = _login(at, "alice")
    assert at.button(key="btn_approve")
    assert "Signed in as **alice**" in _texts(at) or any("alice" in m.value for m in at.sidebar.markdown)


def test_password_list_from_workspace_config(ws):
    d, ids = ws
    (d / "config.toml").write_text('[labelers]\nalice = "s3cret"\n', encoding="utf-8")
    at = _app()
    at = _login(at, "alice", "wrong")
    assert any("wrong password" in e.value for e in at.error)
    at = _login(at, "mallory", "s3cret")
    assert any("Unknown labeler" in e.value for e in at.error)
    at = _login(at, "alice", "s3cret")
    assert at.button(key="btn_approve")


def test_approve_writes_event_with_reviewer_and_advances(ws):
    d, ids = ws
    at = _login(_app(), "alice")
    assert ids[0][:16] in _texts(at)  # first pending record shown
    assert '<mark class="pii">[EMAIL]</mark>' in _texts(at)  # PII placeholders highlighted
    at.button(key="btn_approve").click()
    at = at.run()
    store = open_store(d)
    evs = store.events()
    assert [(e["record_id"], e["reviewer"], e["action"], e["frontend"]) for e in evs] == [(ids[0], "alice", "approve", "streamlit")]
    assert store.get(ids[0]).status == "approved"
    assert ids[1][:16] in _texts(at)  # moved on to the next pending record


def test_reject_needs_a_reason(ws):
    d, ids = ws
    at = _login(_app(), "alice")
    at.button(key="btn_reject").click()
    at = at.run()
    assert any("reject reason" in e.value for e in at.error)
    store = open_store(d)
    assert store.events() == []
    at.selectbox(key=f"reason_pick_{ids[0]}").select("contains unredacted PII")
    at.text_input(key=f"reason_text_{ids[0]}").input("real surname in turn 2")
    at.button(key="btn_reject").click()
    at = at.run()
    evs = store.events()
    assert [(e["reviewer"], e["action"], e["reason"]) for e in evs] == [
        ("alice", "reject", "contains unredacted PII; real surname in turn 2")]
    assert store.get(ids[0]).status == "rejected"


def test_stale_version_is_refused_and_fresh_record_shown(ws):
    d, ids = ws
    at = _login(_app(), "alice")
    assert "version 0" in _texts(at)
    store = open_store(d)
    bob = store.add_event(ids[0], "bob", "reject", frontend="streamlit", reason="wrong answer")  # behind alice's back
    at.button(key="btn_approve").click()
    at = at.run()
    assert any("changed since you loaded it" in w.value for w in at.warning)
    assert [(e["reviewer"], e["action"]) for e in store.events()] == [("bob", "reject")]  # nothing overwritten
    txt = _texts(at)
    assert ids[0][:16] in txt and f"version {bob}" in txt and "no longer in this queue" in txt
    # deciding again on the fresh version works
    at.button(key="btn_approve").click()
    at = at.run()
    assert [(e["reviewer"], e["action"]) for e in store.events()] == [("bob", "reject"), ("alice", "approve")]


def test_filters_narrow_the_queue(ws):
    d, ids = ws
    at = _login(_app(), "alice")
    assert "6 matching" in _texts(at)
    at.sidebar.checkbox(key="f_dup").check()
    at = at.run()
    txt = _texts(at)
    assert "1 matching" in txt and ids[1][:16] in txt and "Near-duplicate cluster" in txt
    at.sidebar.checkbox(key="f_dup").uncheck()
    at.sidebar.checkbox(key="f_leak").check()
    at = at.run()
    assert "1 matching" in _texts(at) and ids[2][:16] in _texts(at)
    at.sidebar.checkbox(key="f_leak").uncheck()
    at.sidebar.checkbox(key="f_low").check()
    at = at.run()
    assert "1 matching" in _texts(at) and ids[3][:16] in _texts(at)
    assert any("invents a weekend fee" in c.value for c in at.caption)
    at.sidebar.checkbox(key="f_low").uncheck()
    at.sidebar.selectbox(key="f_origin").select("synthetic")
    at = at.run()
    assert "1 matching" in _texts(at)
    at.sidebar.selectbox(key="f_origin").select("any")
    at.sidebar.selectbox(key="f_label").select("card_arrival")
    at = at.run()
    assert "1 matching" in _texts(at) and ids[5][:16] in _texts(at)
    at.sidebar.selectbox(key="f_label").select("any")
    at.sidebar.selectbox(key="f_status").select("approved")
    at = at.run()
    assert "0 matching" in _texts(at) and any("Nothing left" in i.value for i in at.info)


def test_edit_skip_and_undo(ws):
    d, ids = ws
    at = _login(_app(), "alice")
    at.button(key="btn_skip").click()
    at = at.run()
    assert ids[1][:16] in _texts(at)
    at.button(key="btn_edit").click()
    at = at.run()
    at.button(key="btn_save_edit").click()  # unchanged: refused
    at = at.run()
    assert any("Nothing changed" in w.value for w in at.warning)
    at.text_area(key=f"edit_{ids[1]}_2").input("I have flagged the double charge; the refund arrives in 3-5 working days.")
    at.button(key="btn_save_edit").click()
    at = at.run()
    store = open_store(d)
    evs = store.events()
    assert [(e["record_id"], e["reviewer"], e["action"]) for e in evs] == [(ids[1], "alice", "edit")]
    new = store.get(evs[0]["new_record_id"])
    assert new.parent_id == ids[1] and new.messages[2]["content"].startswith("I have flagged the double charge")
    assert store.get(ids[1]).status == "edited" and new.status == "pending"
    at.button(key="btn_undo").click()
    at = at.run()
    evs = store.events()
    assert [(e["action"], e["undoes"]) for e in evs] == [("edit", None), ("undo", evs[0]["id"])]
    assert store.get(ids[1]).status == "pending"
    assert any("Undid your edit" in s.value for s in at.success)


def test_agreement_page_and_adjudication(ws):
    d, ids = ws
    store = open_store(d)
    store.add_event(ids[0], "alice", "approve", frontend="streamlit")
    store.add_event(ids[0], "bob", "approve", frontend="streamlit")
    store.add_event(ids[4], "alice", "approve", frontend="streamlit")
    store.add_event(ids[4], "bob", "reject", frontend="streamlit", reason="wrong answer")
    at = _login(_app(), "carol")
    at.sidebar.radio(key="page").set_value("Agreement")
    at = at.run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["records with ≥ 2 decisions"] == "2" and metrics["percent agreement"] == "50%"
    assert metrics["open conflicts"] == "1"
    at.button(key="btn_adj_reject").click()
    at = at.run()
    assert [(e["reviewer"], e["action"]) for e in store.events(record_id=ids[4])][-1] == ("carol", "adjudicate-reject")
    assert {m.label: m.value for m in at.metric}["open conflicts"] == "0"
    assert store.get(ids[4]).status == "rejected"


def test_snapshot_page_creates_and_diffs(ws):
    d, ids = ws
    store = open_store(d)
    store.add_event(ids[4], "alice", "approve", frontend="streamlit")
    at = _login(_app(), "alice")
    at.sidebar.radio(key="page").set_value("Snapshots")
    at = at.run()
    next(b for b in at.button if b.label == "Create snapshot").click()
    at = at.run()
    assert any("Snapshot v1 created: 1 train" in s.value for s in at.success), [s.value for s in at.success] + [e.value for e in at.error]
    store.add_event(ids[5], "alice", "approve", frontend="streamlit")
    next(b for b in at.button if b.label == "Create snapshot").click()
    at = at.run()
    assert (d / "snapshots" / "v2" / "manifest.json").exists()
    assert not at.exception
    assert any(s.value == "hashes verified" for s in at.success)
    # creating an existing name is refused with the snapshot module's message
    at.text_input(key="snap_name").input("v1")
    next(b for b in at.button if b.label == "Create snapshot").click()
    at = at.run()
    assert any("already exists" in e.value for e in at.error)


def test_missing_workspace_and_switching_workspace_needs_new_sign_in(ws, tmp_path, monkeypatch):
    d, ids = ws
    at = _login(_app(), "alice")
    assert at.button(key="btn_approve")
    at.sidebar.text_input(key="ws").input(str(tmp_path / "nope"))
    at = at.run()
    assert any("No store.sqlite" in w.value for w in at.warning)
    assert not (tmp_path / "nope").exists()  # nothing created by a typo
    other = tmp_path / "other"
    build_workspace(other)
    (other / "config.toml").write_text('[labelers]\nbob = "pw"\n', encoding="utf-8")
    at.sidebar.text_input(key="ws").input(str(other))
    at = at.run()
    assert [b for b in at.button if b.key == "btn_approve"] == []  # alice must sign in again here
    assert "Sign in to review" in [t.value for t in at.title]


def test_redeciding_an_undone_record_does_not_replay_skipped_ones(ws):
    d, ids = ws
    at = _login(_app(), "alice")
    at.sidebar.selectbox(key="f_status").select("any")
    at = at.run()
    at.button(key="btn_approve").click()
    at = at.run()
    for expect_id in (ids[1], ids[2]):
        assert expect_id[:16] in _texts(at)
        at.button(key="btn_skip").click()
        at = at.run()
    assert ids[3][:16] in _texts(at)
    at.button(key="btn_undo").click()
    at = at.run()
    assert ids[0][:16] in _texts(at) and any("Undid your approve" in s.value for s in at.success)
    at.button(key="btn_reject").click()  # no reason: refused, stays on the record
    at = at.run()
    assert ids[0][:16] in _texts(at)
    at.selectbox(key=f"reason_pick_{ids[0]}").select("wrong label")
    at.button(key="btn_reject").click()
    at = at.run()
    assert ids[3][:16] in _texts(at)  # back where alice was, not at ids[1]
    store = open_store(d)
    assert [(e["action"], e["reason"]) for e in store.events()] == [("approve", None), ("undo", None), ("reject", "wrong label")]
    assert store.get(ids[0]).status == "rejected"
