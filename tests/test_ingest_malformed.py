"""Malformed inputs of every format become rejects with the exact file, location,
field and reason — never an exception, never a silent drop."""
from __future__ import annotations

from pathlib import Path

import pytest

from curate.example import Example
from curate.ingest import ingest_paths
from curate.ingest import chatfiles, docs, tickets, transcripts
from curate.ingest.common import ReadOptions, Reject


def _items(reader, path: Path, mapping=None):
    return list(reader(path, ReadOptions(mapping=mapping or {})))


def _rejects(items):
    return [(r.loc, r.field, r.reason) for r in items if isinstance(r, Reject)]


def _write(tmp: Path, name: str, data: bytes | str) -> Path:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


# -- CSV tickets -------------------------------------------------------------------
def test_csv_bad_rows(tmp_path):
    p = _write(tmp_path, "t.csv", b'text,category\n"hello there",card_lost\n"caf\xe9 bill",fee\n"good row",fee\n'
               b'"too",many,fields\n"short"\n')
    items = _items(tickets.read, p)
    assert [i.messages[0]["content"] for i in items if isinstance(i, Example)] == ["hello there", "good row"]
    assert _rejects(items) == [
        ("row 2 (line 3)", "encoding", "not valid UTF-8 (line 3, byte 4 of the line: b'\\xe9'); re-save the file as UTF-8"),
        ("row 4 (line 5)", "row", "row has 3 fields, header has 2"),
        ("row 5 (line 6)", "row", "row is truncated: missing fields ['category']"),
    ]


def test_csv_bom_accepted_and_empty_files(tmp_path):
    bom = _write(tmp_path, "bom.csv", b"\xef\xbb\xbftext,category\nhi there,x\n")
    (ex,) = _items(tickets.read, bom)
    assert isinstance(ex, Example) and ex.label == "x"
    assert _rejects(_items(tickets.read, _write(tmp_path, "e.csv", b""))) == [("file", "file", "empty file: no header row")]
    assert _rejects(_items(tickets.read, _write(tmp_path, "h.csv", "text,category\n"))) == [
        ("file", "file", "no data rows after the header")]


def test_csv_missing_columns(tmp_path):
    p = _write(tmp_path, "cols.csv", "foo,bar\n1,2\n")
    (r,) = _items(tickets.read, p)
    assert r.field == "columns" and r.loc == "file"
    assert r.reason.startswith(f"{p}: cannot tell which column is the user's message (columns: ['foo', 'bar'])")
    (r,) = _items(tickets.read, p, {"columns": {"user": "foo", "assistant": "reply"}})
    assert r.reason == f"{p}: mapping column assistant = 'reply' is not in the file's columns ['foo', 'bar']"


def test_csv_empty_value(tmp_path):
    p = _write(tmp_path, "v.csv", "text,category\n,fee\n")
    assert _rejects(_items(tickets.read, p)) == [("row 1 (line 2)", "text", "missing value for user turn")]


# -- JSON / JSONL ------------------------------------------------------------------
def test_jsonl_chat_bad_lines(tmp_path):
    p = _write(tmp_path, "c.jsonl", "\n".join([
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
        '{"messages": [{"role": "user", "content": "x"}',
        '{"conversations": [{"from": "alien", "value": "x"}]}',
        '{"instruction": "", "output": "y"}',
        '{"messages": [{"role": "assistant", "content": "hi"}]}',
        '[1, 2]',
        '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}',
    ]) + "\n")
    items = _items(chatfiles.read, p)
    assert sum(isinstance(i, Example) for i in items) == 1
    assert _rejects(items) == [
        ("line 2", "json", "truncated JSON: Expecting ',' delimiter at column 47"),
        ("line 3", "conversations[0].from", "sharegpt: turn 0: unknown speaker 'alien' (expected human/gpt/system)"),
        ("line 4", "instruction", "alpaca: missing or empty 'instruction'"),
        ("line 5", "messages", "openai: invalid conversation: roles-alternate (turn 0): expected user after the previous turn, got assistant"),
        ("line 6", "json", "expected a JSON object, got list"),
        ("line 7", "messages[0].content", "openai: turn 0: content part of type 'image_url' is not supported (text only)"),
    ]


def test_jsonl_latin1_line_and_bom(tmp_path):
    p = _write(tmp_path, "c.jsonl", b'\xef\xbb\xbf{"instruction": "Say hi", "output": "hi"}\n'
               b'{"instruction": "caf\xe9", "output": "x"}\n')
    items = _items(chatfiles.read, p)
    assert isinstance(items[0], Example)
    assert _rejects(items) == [("line 2", "encoding", "not valid UTF-8 at byte 20 of the line; re-save the file as UTF-8")]


def test_json_invalid_truncated_empty(tmp_path):
    p = _write(tmp_path, "a.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c"')
    assert _rejects(_items(chatfiles.read, p)) == [("line 2", "json", "truncated JSON: Expecting ',' delimiter at line 2 column 21")]
    p = _write(tmp_path, "b.json", '{"a": 1,, }')
    assert _rejects(_items(transcripts.read, p)) == [("line 1", "json", "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 9")]
    assert _rejects(_items(chatfiles.read, _write(tmp_path, "e.json", "  \n"))) == [("file", "file", "empty file")]
    assert _rejects(_items(chatfiles.read, _write(tmp_path, "e.jsonl", ""))) == [("file", "file", "empty file")]
    p = _write(tmp_path, "l.json", b'[{"instruction": "caf\xe9", "output": "x"}]')
    assert _rejects(_items(chatfiles.read, p)) == [("file", "encoding", "not valid UTF-8 (line 1, byte 21); re-save the file as UTF-8")]


def test_json_transcript_bad_turns(tmp_path):
    p = _write(tmp_path, "t.json", '[{"id": 1, "turns": "oops"}, {"id": 2, "original": [["agent", "hi"], ["customer"]]},'
               ' {"id": 3, "dialogue": []}, {"id": 4, "foo": 1}]')
    assert _rejects(_items(transcripts.read, p)) == [
        ("item 0", "turns", "turns must be a list of turns, got str"),
        ("item 1", "original[1]", "turn 1 must be [speaker, text] or an object, got \"['customer']\""),
        ("item 2", "dialogue", "dialogue is empty"),
        ("item 3", None, "no turn list: expected one of ['original', 'turns', 'dialogue', 'utterances']"),
    ]


# -- WebVTT / SRT / text -------------------------------------------------------------
VTT_BAD = (
    "WEBVTT\n\n1\n00:00:01.000 --> 00:00:02.000\n<v Customer>hi there\n\n"
    "2\n00:00:0x.000 --> 00:00:03.000\n<v Agent>bad\n\n"
    "3\n00:00:05.000 --> 00:00:04.000\n<v Agent>backwards\n\n"
    "4\n00:00:06.000 --> 00:00:07.000\n<v Agent>hello, how can I help?\n\n"
    "5\n00:00:08.000 --> 00:00:09.000\n"
)


def test_vtt_bad_cues(tmp_path):
    items = _items(transcripts.read, _write(tmp_path, "c.vtt", VTT_BAD))
    assert _rejects(items) == [
        ("cue 2 (line 8)", "timing", "bad timestamp in '00:00:0x.000 --> 00:00:03.000'"),
        ("cue 3 (line 12)", "timing", "bad timestamp: end 00:00:04.000 is before start 00:00:05.000"),
        ("cue 5 (line 20)", "text", "truncated cue: timing line without text"),
    ]
    (ex,) = [i for i in items if isinstance(i, Example)]
    assert ex.messages == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello, how can I help?"}]


def test_vtt_header_empty_encoding(tmp_path):
    assert _rejects(_items(transcripts.read, _write(tmp_path, "a.vtt", "1\n00:00:01.000 --> 00:00:02.000\nhi\n"))) == [
        ("line 1", "header", "not a WebVTT file: the first line must be 'WEBVTT'"),
        ("file", "file", "no usable cues in the file")]
    assert _rejects(_items(transcripts.read, _write(tmp_path, "e.vtt", b""))) == [("file", "file", "empty file")]
    p = _write(tmp_path, "l.vtt", b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<v Customer>caf\xe9\n")
    assert _rejects(_items(transcripts.read, p)) == [("file", "encoding", "not valid UTF-8 (line 4, byte 53); re-save the file as UTF-8")]
    # BOM accepted
    p = _write(tmp_path, "b.vtt", "\ufeffWEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<v Customer>hi\n\n00:00:02.000 --> 00:00:03.000\n<v Agent>hello\n")
    assert [type(i).__name__ for i in _items(transcripts.read, p)] == ["Example"]


def test_srt_truncated_and_bad(tmp_path):
    p = _write(tmp_path, "t.srt", "1\n00:00:01,000 --> 00:00:02,000\nCustomer: my card is blocked\n\n"
               "2\n00:00:03,000 --> 00:00:04,000\nAgent: I have unblocked it.\n\n"
               "3\n00:00:05,000 -> 00:00:06,000\nCustomer: thanks\n\n4\n")
    items = _items(transcripts.read, p)
    assert _rejects(items) == [
        ("cue 3 (line 9)", "timing", "cue has no timing line ('start --> end')"),
        ("cue 4 (line 13)", "timing", "truncated cue: the file ends after the cue number"),
    ]
    assert sum(isinstance(i, Example) for i in items) == 1


def test_txt_bad_timestamp_orphan_text_and_no_answer(tmp_path):
    p = _write(tmp_path, "c.txt", "Call notes\n[00:00:01] Customer: my card failed\n[00:99:00] Agent: bad ts\n"
               "[00:00:09] Agent: fixed now\n")
    assert _rejects(_items(transcripts.read, p)) == [
        ("line 1", "speaker", "text before the first 'Speaker: …' line"),
        ("line 3", "timestamp", "bad timestamp [00:99:00] (expected [HH:MM:SS] or [MM:SS])"),
    ]
    p = _write(tmp_path, "only.txt", "Customer: hello?\nCustomer: anyone?\n")
    (r,) = _items(transcripts.read, p)
    assert r.field == "speaker" and r.reason.startswith("conversation 'only' has no customer turn answered by the agent")


# -- docs ------------------------------------------------------------------------------
def test_docs_empty_and_encoding(tmp_path):
    assert _rejects(_items(docs.read, _write(tmp_path, "e.md", "\n\n"))) == [("file", "file", "empty file")]
    assert _rejects(_items(docs.read, _write(tmp_path, "l.md", b"# T\n\ncaf\xe9\n"))) == [
        ("file", "encoding", "not valid UTF-8 (line 3, byte 8); re-save the file as UTF-8")]
    assert _rejects(_items(docs.read, _write(tmp_path, "k.json", '{"a": {"b": ["x"'))) == [
        ("line 1", "json", "truncated JSON: Expecting ',' delimiter at line 1 column 17")]


# -- whole command ------------------------------------------------------------------------
def test_ingest_writes_rejects_file_and_counts(store, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _write(d, "c.vtt", VTT_BAD)
    _write(d, "e.srt", "")
    rep = ingest_paths(store, [d])
    t = rep.totals()
    assert (t["read"], t["added"], t["rejected"]) == (5, 1, 4)
    lines = Path(rep.rejects_file).read_text().splitlines()
    assert len(lines) == 4
    assert store.conn.execute("SELECT COUNT(*) FROM rejects").fetchone()[0] == 4


def test_cli_exit_codes_no_traceback(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    bad = _write(tmp_path, "bad.jsonl", '{"messages": [\n')
    p = subprocess.run([sys.executable, "-m", "curate", "ingest", str(bad), "--workspace", str(tmp_path / "ws")],
                       capture_output=True, text=True, cwd=root)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and "nothing usable was read" in p.stderr
    good = _write(tmp_path, "good.jsonl", '{"instruction": "Say hi", "output": "hi"}\n{"broken\n')
    p = subprocess.run([sys.executable, "-m", "curate", "ingest", str(good), "--workspace", str(tmp_path / "ws")],
                       capture_output=True, text=True, cwd=root)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("name", ["x.xyz"])
def test_unknown_extension_is_a_reject(store, tmp_path, name):
    p = _write(tmp_path, name, "hello")
    rep = ingest_paths(store, [p])
    assert rep.totals()["rejected"] == 1
