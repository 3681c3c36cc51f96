"""PII scrubbing: recall on the ABCD sample (known scenario values and its
``delexed`` reference), and no false positives on BANKING77 queries."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from curate.ingest import transcripts
from curate.ingest.common import ReadOptions
from curate.pii import scrub

DATA = Path(__file__).resolve().parent.parent / "data"


def _abcd_values(convo) -> list[str]:
    """The scenario's PII values (name and its parts, username, email, phone, order id, address, zip, account)."""
    p, o = convo["scenario"].get("personal", {}), convo["scenario"].get("order", {})
    vals = [p.get(k) for k in ("customer_name", "username", "email", "phone", "account_id")]
    vals += [o.get(k) for k in ("order_id", "street_address", "zip_code")]
    name = p.get("customer_name") or ""
    vals += [w for w in name.split() if len(w) >= 3]
    return [v for v in vals if v]


def _count(values, texts) -> int:
    return sum(len(re.findall(r"(?i)(?<![\w@])" + re.escape(v) + r"(?![\w@])", t)) for v in values for t in texts)


def _recall(scrub_known: bool) -> tuple[float, int, int]:
    data = json.loads((DATA / "abcd" / "abcd_sample.json").read_text())
    before = after = 0
    opts = ReadOptions()
    for convo in data:
        vals = _abcd_values(convo)
        before += _count(vals, [t for _, t in convo["original"]])
        if scrub_known:
            (ex,) = [e for e in transcripts.read(DATA / "abcd" / "abcd_sample.json", opts) if e.source.ref == str(convo["convo_id"])]
            texts = [m["content"] for m in ex.messages] + [a["text"] for a in ex.signals.get("actions", [])]
        else:
            texts = [scrub(t)[0] for _, t in convo["original"]]
        after += _count(vals, texts)
    return 1 - after / before, before, after


def test_abcd_recall_with_scenario_values():
    recall, before, after = _recall(scrub_known=True)
    print(f"ABCD PII recall (reader, scenario values known): {recall:.3f} ({before - after}/{before})")
    assert before >= 15
    assert recall >= 0.9


def test_abcd_recall_generic_patterns_only():
    """Without the scenario: what the patterns alone catch (emails, phones, order ids, 'Username: x')."""
    recall, before, after = _recall(scrub_known=False)
    print(f"ABCD PII recall (patterns only): {recall:.3f} ({before - after}/{before})")
    # names and bare usernames ("aphoenix939") need the known values; pinned at the measured 7/21
    assert recall >= 0.33


def test_abcd_delexed_slots_are_scrubbed():
    """Every turn ABCD delexicalised (``<email>``, ``<order_id>`` …) loses its value in our output."""
    data = json.loads((DATA / "abcd" / "abcd_sample.json").read_text())
    exs = {e.source.ref: e for e in transcripts.read(DATA / "abcd" / "abcd_sample.json", ReadOptions())}
    slots = 0
    for convo in data:
        ex = exs[str(convo["convo_id"])]
        out = "\n".join([m["content"] for m in ex.messages] + [a["text"] for a in ex.signals.get("actions", [])]).lower()
        for (spk, orig), dx in zip(convo["original"], convo["delexed"]):
            for slot in re.findall(r"<(\w+)>", dx["text"]):
                slots += 1
                # the delexed value: the original text minus the delexed template around the slot
                pre, post = dx["text"].split(f"<{slot}>", 1)
                value = orig.lower()[len(pre):len(orig) - len(post)] if post else orig.lower()[len(pre):]
                assert value.strip() and value.strip() not in out, (slot, value)
    assert slots >= 8


def test_no_false_positives_on_banking77():
    hits = []
    for f in ("train.csv", "test.csv"):
        with open(DATA / "banking77" / f, encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                out, found = scrub(row["text"])
                if found:
                    hits.append((row["text"], out))
    assert hits == []


def test_patterns():
    cases = {
        "I got charged 1.5% extra": "I got charged 1.5% extra",
        "How can I order virtual cards?": "How can I order virtual cards?",
        "I don't remember my login details": "I don't remember my login details",
        "I paid £100 on 12/03/2019 and 2.50 on 2019-11-06": "I paid £100 on 12/03/2019 and 2.50 on 2019-11-06",
        "Order ID: 3348917502": "Order ID: [ORDER_ID]",
        "my order number is AB12345C": "my order number is [ORDER_ID]",
        "Username: cminh730": "Username: [USERNAME]",
        "my username is bob_77": "my username is [USERNAME]",
        "call me at (977) 625-2661": "call me at [PHONE]",
        "mail x.y+z@mail.example.org now": "mail [EMAIL] now",
        "card 4111 1111 1111 1111 please": "card [CARD] please",
        "card 4111 1111 1111 1112 please": "card 4111 1111 1111 1112 please",  # fails Luhn
        "account number 12345678": "account number [ACCOUNT]",
        "IBAN GB82 WEST 1234 5698 7654 32": "IBAN [ACCOUNT]",
        "My name is Joyce Wu and I live at 9998 lincoln ave": "My name is [NAME] and I live at [ADDRESS]",
        "I live at 42 Elm Street. Thanks": "I live at [ADDRESS]. Thanks",
    }
    for text, want in cases.items():
        assert scrub(text)[0] == want, text
    out, found = scrub("Hi crystal, Crystal Minh here, (977) 625-2661 / 9776252661",
                       known=[("NAME", "crystal minh"), ("PHONE", "(977) 625-2661")])
    assert out == "Hi [NAME], [NAME] here, [PHONE] / [PHONE]"
    assert [f["type"] for f in found] == ["NAME", "PHONE", "PHONE", "NAME"] or sorted(f["type"] for f in found) == ["NAME", "NAME", "PHONE", "PHONE"]
