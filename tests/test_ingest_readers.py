"""Each reader on the sample files in data/: what comes out, with provenance."""
from __future__ import annotations

import json
from pathlib import Path

from curate.example import Example
from curate.ingest import detect_kind, ingest_paths, load_mapping
from curate.ingest import chatfiles, docs, tickets, transcripts
from curate.ingest.common import Chunk, ReadOptions, Reject
from curate.ingest.transcripts import speaker_role

DATA = Path(__file__).resolve().parent.parent / "data"
S = DATA / "samples"


def _examples(items):
    return [i for i in items if isinstance(i, Example)]


def test_detection_rules():
    assert detect_kind(S / "support_call.vtt") == "transcripts"
    assert detect_kind(S / "refund_call.srt") == "transcripts"
    assert detect_kind(S / "chat_log.txt") == "transcripts"
    assert detect_kind(S / "faq.md") == "docs"
    assert detect_kind(S / "help_refunds.html") == "docs"
    assert detect_kind(S / "openai_messages.jsonl") == "chat"
    assert detect_kind(S / "sharegpt.jsonl") == "chat"
    assert detect_kind(S / "alpaca.json") == "chat"
    assert detect_kind(S / "ticket_threads.csv") == "tickets"
    assert detect_kind(DATA / "abcd" / "abcd_sample.json") == "transcripts"
    assert detect_kind(DATA / "abcd" / "guidelines.json") == "docs"
    assert detect_kind(DATA / "abcd" / "kb.json") == "docs"


def test_speaker_rule_and_override():
    assert [speaker_role(s) for s in ("Agent", "agent smith", "Support Bot", "REP", "Customer", "Crystal", "action", "NOTE", "system")] == [
        "assistant", "assistant", "assistant", "assistant", "user", "user", "action", "action", "action"]
    m = {"speakers": {"assistant": ["Dana"], "user": ["Agent Smith"], "action": ["Narrator"]}}
    assert speaker_role("dana", m) == "assistant"
    assert speaker_role("Agent Smith", m) == "user"
    assert speaker_role("Narrator", m) == "action"
    assert speaker_role("Agent", m) == "assistant"  # unlisted names fall back to the default rule


def test_vtt_sample():
    (ex,) = list(transcripts.read(S / "support_call.vtt", ReadOptions()))
    assert [m["role"] for m in ex.messages] == ["user", "assistant", "user", "assistant"]
    # consecutive customer cues 2+3 merged; the agent greeting (cue 1) and the last thank-you dropped
    assert ex.messages[0]["content"].startswith("Hi Dana. My card payment") and "ends in 4421" in ex.messages[0]["content"]
    assert ex.signals["trimmed"] == {"leading_assistant_turns": 1, "trailing_user_turns": 1}
    assert ex.group == f"transcript:{S / 'support_call.vtt'}#support_call"
    assert ex.source.kind == "transcript" and ex.source.loc == "cue 1 – cue 7"
    assert "[PHONE]" in ex.messages[2]["content"] and "415-555" not in ex.text


def test_srt_and_txt_samples():
    (ex,) = list(transcripts.read(S / "refund_call.srt", ReadOptions()))
    assert [m["role"] for m in ex.messages] == ["user", "assistant", "user", "assistant"]
    assert "order number is [ORDER_ID]" in ex.messages[0]["content"]
    a, b = list(transcripts.read(S / "chat_log.txt", ReadOptions()))
    assert a.group.endswith("#chat_log") and b.group.endswith("#chat_log-2")
    assert a.signals["actions"] == [{"speaker": "system", "text": "Agent sent a new password reset link.", "after_turn": 2, "loc": "line 5"}]
    assert b.signals["actions"][0]["text"] == "customer asked to be contacted at [PHONE] later"
    assert all("system" not in m["content"].lower()[:8] for m in a.messages)


def test_speakers_mapping_override(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("Dana: Hello, Northwind here.\nBob: my card is stuck in the ATM\nDana: I've blocked it and ordered a new one.\n")
    (r,) = list(transcripts.read(p, ReadOptions()))
    assert isinstance(r, Reject)  # by default Dana and Bob are both users
    (ex,) = list(transcripts.read(p, ReadOptions(mapping={"speakers": {"assistant": ["Dana"]}})))
    assert [m["role"] for m in ex.messages] == ["user", "assistant"]


def test_abcd_json():
    items = list(transcripts.read(DATA / "abcd" / "abcd_sample.json", ReadOptions()))
    exs = _examples(items)
    assert len(exs) == 3 and len(items) == 3
    ex = exs[0]
    assert ex.source.ref == "3592" and ex.source.loc == "item 0"
    assert ex.group == f"transcript:{DATA / 'abcd' / 'abcd_sample.json'}#3592"
    assert ex.messages[0]["content"] == "Hi! I need to return an item, can you help me with that?"
    acts = ex.signals["actions"]
    assert acts[0]["text"] == "Account has been pulled up for [NAME]." and acts[0]["speaker"] == "action"
    assert ex.signals["scenario"] == {"flow": "product_defect", "subflow": "return_size"}
    for e in exs:  # roles alternate user/assistant (validated), actions never in the chat
        assert "pulled up" not in e.text


def test_docs_chunks():
    md = list(docs.read(S / "faq.md", ReadOptions()))
    assert all(isinstance(c, Chunk) for c in md) and len(md) == 2
    assert md[0].loc == "Northwind Bank help centre; lines 1-29"
    assert md[1].title == "Northwind Bank help centre > Transfers > Can I cancel a transfer?"
    assert md[1].text.startswith("### Can I cancel a transfer?")
    assert all(len(c.text.split()) <= 400 for c in md)
    html = list(docs.read(S / "help_refunds.html", ReadOptions()))
    (c,) = html
    assert c.title == "Refunds and returns" and "analytics" not in c.text and "Home" not in c.text
    assert "## When will I get my refund?" in c.text and "Orders > Return an item" in c.text
    g = list(docs.read(DATA / "abcd" / "guidelines.json", ReadOptions()))
    assert len(g) > 20 and all(isinstance(c, Chunk) for c in g)
    assert all(len(c.text.split()) <= 400 for c in g)
    assert g[0].loc.startswith('Product Defect; $["Product Defect"]')
    (kb,) = list(docs.read(DATA / "abcd" / "kb.json", ReadOptions()))
    assert "recover_username: pull-up-account, verify-identity" in kb.text


def test_long_text_chunking(tmp_path):
    p = tmp_path / "long.txt"
    para = " ".join(f"Sentence number {i} is here." for i in range(60))  # 300 words
    p.write_text("\n\n".join([para] * 5))
    chunks = list(docs.read(p, ReadOptions()))
    sizes = [len(c.text.split()) for c in chunks]
    assert len(chunks) == 5 and all(200 <= s <= 400 for s in sizes)
    assert chunks[0].loc == "line 1" and chunks[1].loc == "line 3"


def test_chat_files():
    oa = _examples(chatfiles.read(S / "openai_messages.jsonl", ReadOptions()))
    assert len(oa) == 3 and oa[0].messages[0]["role"] == "system" and oa[0].source.ref == "oa-1"
    assert oa[1].messages[0]["content"] == "How many free ATM withdrawals do I get each month?"  # text parts joined
    assert "1.5% fee" in oa[0].messages[2]["content"]  # not mistaken for PII
    sg = _examples(chatfiles.read(S / "sharegpt.jsonl", ReadOptions()))
    assert [m["role"] for m in sg[1].messages] == ["user", "assistant", "user", "assistant"]
    al = _examples(chatfiles.read(S / "alpaca.json", ReadOptions()))
    assert al[0].label == "shipping" and al[0].source.loc == "item 0"
    assert al[0].messages[0]["content"].endswith("\n\nWhere is my parcel? It was due yesterday.")
    assert al[2].messages[0]["content"] == "Explain in one sentence what a chargeback is."


def test_ticket_threads_with_mapping():
    m = load_mapping(S / "ticket_threads.mapping.toml")
    exs = _examples(tickets.read(S / "ticket_threads.csv", ReadOptions(mapping=m)))
    assert [e.group for e in exs] == ["ticket:T-1001", "ticket:T-1002", "ticket:T-1003"]
    e = exs[0]
    assert [x["role"] for x in e.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert "Sorry [NAME]!" in e.messages[2]["content"] and "order [ORDER_ID]" in e.messages[1]["content"]


def test_ingest_all_samples_then_again(store):
    r1 = ingest_paths(store, [S, DATA / "abcd"]).totals()
    assert r1["rejected"] == 0 and r1["added"] == 18 and r1["chunks_added"] == 55
    r2 = ingest_paths(store, [S, DATA / "abcd"]).totals()
    assert r2["added"] == 0 and r2["chunks_added"] == 0 and r2["already_present"] == 18 and r2["chunks_present"] == 55
    assert store.count() == 18
    kinds = store.count_by("source_kind")
    assert kinds == {"chat-file": 8, "ticket": 3, "transcript": 7}
    assert len(store.chunks()) == 55
