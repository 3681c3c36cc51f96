"""The Example record: message rules with named errors, content-hash ids, linked edits."""
from __future__ import annotations

import pytest

from curate.example import Example, MessageError, Source, content_id, validate_messages

U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
SYS = {"role": "system", "content": "be nice"}


@pytest.mark.parametrize("msgs,rule", [
    ([], "messages-not-empty-list"),
    ("x", "messages-not-empty-list"),
    (["x"], "turn-is-object"),
    ([{"role": "bot", "content": "x"}], "known-role"),
    ([{"role": "user", "content": 3}], "content-is-string"),
    ([{"role": "user", "content": "  \n "}, A], "no-empty-turns"),
    ([U, SYS, A], "system-only-first"),
    ([A, U], "roles-alternate"),
    ([U, U, A], "roles-alternate"),
    ([SYS], "has-user-turn"),
    ([U], "ends-with-assistant"),
])
def test_rules_named(msgs, rule):
    with pytest.raises(MessageError) as e:
        validate_messages(msgs)
    assert e.value.rule == rule and str(e.value).startswith(rule)


def test_id_is_content_hash_and_whitespace_insensitive():
    a = Example([U, A], Source("ticket", "f.csv", "row 1"))
    b = Example([{"role": "user", "content": "  hi "}, {"role": "assistant", "content": "hello\r\n"}], Source("ticket", "g.csv", "row 9"))
    assert a.id == b.id == content_id(a.messages) and len(a.id) == 24
    c = Example([SYS, U, A], Source("ticket"))
    assert c.id != a.id
    with pytest.raises(MessageError, match="id-is-content-hash"):
        Example([U, A], Source("ticket"), id="0" * 24)


def test_fields_validated():
    with pytest.raises(MessageError, match="known-source-kind"):
        Example([U, A], Source("email"))
    with pytest.raises(MessageError, match="known-split"):
        Example([U, A], Source("ticket"), split="dev")
    with pytest.raises(MessageError, match="known-origin"):
        Example([U, A], Source("ticket"), origin={"kind": "robot"})


def test_default_group_is_first_user_turn():
    a = Example([U, A], Source("ticket"))
    b = Example([{"role": "user", "content": "HI"}, {"role": "assistant", "content": "other"}], Source("ticket"))
    assert a.group == b.group and a.id != b.id


def test_edited_is_a_new_linked_record():
    a = Example([U, A], Source("ticket", "f.csv", "row 1"), label="greet", signals={"pii": [{"type": "NAME"}], "reward": {"score": 2}})
    b = a.edited([U, {"role": "assistant", "content": "hello, how can I help?"}])
    assert b.id != a.id and b.parent_id == a.id and b.source.kind == "edit" and b.source.ref == a.id
    assert b.group == a.group and b.label == "greet" and b.signals == {"pii": [{"type": "NAME"}]}
    assert a.messages[1]["content"] == "hello"  # the original is untouched


def test_roundtrip_dict():
    a = Example([SYS, U, A], Source("chat-file", "x.jsonl", "line 3", "r1"), label="l")
    b = Example.from_dict(a.to_dict())
    assert b.id == a.id and b.source == a.source and b.label == "l"


def test_id_is_stable_across_versions():
    """Ids are the store's keys: changing the canonical form would make re-ingestion add everything again."""
    msgs = [{"role": "system", "content": "classify"}, {"role": "user", "content": "I got charged  1.5% extra — café"},
            {"role": "assistant", "content": "extra_charge"}]
    assert content_id(msgs) == "52af4ab6ca686eddcf76f3f3"
