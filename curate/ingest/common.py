"""Shared pieces of the readers: the :class:`Reject` record, :func:`make_example`
(PII scrubbing + validation in one place) and safe file opening.

Every reader is a generator yielding :class:`~curate.example.Example`,
:class:`Reject` or :class:`Chunk` items; it never raises for bad data.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..example import Example, MessageError, Source, new_example, text_hash
from ..pii import scrub


@dataclass
class Reject:
    """Input that could not become a record. Stored and written to the rejects JSONL."""

    file: str
    loc: str
    reason: str
    field: str | None = None
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "loc": self.loc, "field": self.field, "reason": self.reason, "raw": self.raw[:2000]}


@dataclass
class Chunk:
    """A document chunk (input for doc-grounded synthesis, not a chat pair)."""

    file: str
    loc: str
    text: str
    title: str = ""
    grp: str = ""
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.grp:
            self.grp = "doc:" + self.file
        if not self.id:
            self.id = text_hash(f"{self.file}\x00{self.loc}\x00{self.text}", 24)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "file": self.file, "loc": self.loc, "grp": self.grp, "title": self.title, "text": self.text}


@dataclass
class ReadOptions:
    """What a reader may need besides the path."""

    mapping: dict[str, Any] = field(default_factory=dict)
    known_names: tuple[str, ...] = ()
    scrub_pii: bool = True


def make_example(
    messages: list[dict[str, str]],
    source: Source,
    opts: ReadOptions,
    *,
    group: str = "",
    label: str | None = None,
    known_names: Iterable[str] = (),
    known: Iterable[tuple[str, str]] = (),
    field_name: str | None = None,
    signals: dict[str, Any] | None = None,
) -> Example | Reject:
    """Scrub PII from non-system turns, validate, and build the Example (or a Reject).

    ``known`` are ``(TYPE, value)`` pairs scrubbed as ``[TYPE]`` (see :mod:`curate.pii`).
    ``signals`` are extra measured facts for the record; an ``actions`` list in it
    (``[{"speaker", "text", "after_turn"}]``, the system/action lines a transcript
    dropped from the chat) is scrubbed too.
    """
    findings: list[dict[str, Any]] = []
    signals = dict(signals) if signals else {}
    if opts.scrub_pii:
        names = (tuple(opts.known_names) + tuple(n for n in known_names if n)) if (known_names or opts.known_names) else ()
        known = tuple(known) if known else ()
        scrubbed = None  # a copy of the list only once a turn changes
        for i, m in enumerate(messages):
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str) and m.get("role") != "system":
                new, f = scrub(content, names, known)
                if f:
                    for x in f:
                        x["turn"] = i
                    findings += f
                    if scrubbed is None:
                        scrubbed = list(messages)
                    scrubbed[i] = {**m, "content": new}
        if scrubbed is not None:
            messages = scrubbed
        if signals.get("actions"):
            acts = []
            for a in signals["actions"]:
                new, f = scrub(a.get("text", ""), names, known)
                for x in f:
                    x["action"] = len(acts)
                findings += f
                acts.append({**a, "text": new})
            signals["actions"] = acts
    if findings:
        signals["pii"] = findings
    try:
        return new_example(messages, source, group=group, label=label, signals=signals)
    except MessageError as e:
        return Reject(source.file, source.loc, f"invalid conversation: {e}", field_name or "messages", repr(messages)[:500])


def read_text(path: Path, file: str) -> tuple[str | None, Reject | None]:
    """A whole text file (:func:`open_text`), or the reject for an unreadable or empty one."""
    text, err = open_text(path)
    if err:
        return None, Reject(file, "file", err, "encoding")
    if not text.strip():
        return None, Reject(file, "file", "empty file", "file")
    return text, None


def open_text(path: Path) -> tuple[str | None, str | None]:
    """Read a whole text file as UTF-8 (BOM stripped). Returns (text, error)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"cannot read file: {e.strerror}"
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), None
        except UnicodeDecodeError as e:
            return None, f"not valid UTF-16 text at byte {e.start}"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, f"not valid UTF-8 (line {line}, byte {e.start}); re-save the file as UTF-8"


def load_json(path: Path) -> tuple[Any, str, str | None]:
    """A whole ``.json`` file parsed: ``(data, "", None)``, or ``(None, loc, reason)`` when it
    cannot be read, is empty, or is invalid / truncated JSON."""
    import json

    text, err = open_text(path)
    if err:
        return None, "file", err
    if not text.strip():
        return None, "file", "empty file"
    try:
        return json.loads(text), "", None
    except json.JSONDecodeError as e:
        why = "truncated JSON" if e.pos >= len(text.rstrip()) - 1 else "invalid JSON"
        return None, f"line {e.lineno}", f"{why}: {e.msg} at line {e.lineno} column {e.colno}"


def iter_json_items(path: Path, item_keys: tuple[str, ...] = ()) -> "Iterable[tuple[str, Any, str | None]]":
    """Yield ``(loc, object, error)`` for the objects in a ``.jsonl``/``.ndjson``/``.json`` file.

    JSONL is streamed line by line (``loc`` = ``line N``; a bad line is one error,
    the rest still reads). A ``.json`` file is read whole: a top-level array gives
    ``item N``; an object that has one of ``item_keys`` is itself the single item;
    an object of arrays (``{"train": […], "dev": […]}``) gives ``train[N]`` ….
    """
    import json

    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        try:
            f = open(path, "rb")
        except OSError as e:
            yield "file", None, f"cannot read file: {e.strerror}"
            return
        with f:
            n_items = 0
            for i, raw in enumerate(f, 1):
                if i == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    yield f"line {i}", None, f"not valid UTF-8 at byte {e.start} of the line; re-save the file as UTF-8"
                    continue
                if not line:
                    continue
                n_items += 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    why = "truncated JSON" if e.msg.startswith(("Unterminated", "Expecting")) and e.pos >= len(line) - 1 else "invalid JSON"
                    yield f"line {i}", None, f"{why}: {e.msg} at column {e.colno}"
                    continue
                if not isinstance(obj, dict):
                    yield f"line {i}", None, f"expected a JSON object, got {type(obj).__name__}"
                    continue
                yield f"line {i}", obj, None
            if n_items == 0:
                yield "file", None, "empty file"
        return
    data, loc, err = load_json(path)
    if err:
        yield loc, None, err
        return
    if isinstance(data, dict):
        if set(data) & set(item_keys) or not any(isinstance(v, list) for v in data.values()):
            seqs = [("item ", [data])]
        else:
            seqs = [(f"{k}[", v) for k, v in data.items() if isinstance(v, list)]
    elif isinstance(data, list):
        seqs = [("item ", data)]
    else:
        yield "file", None, f"expected a JSON array or object, got {type(data).__name__}"
        return
    n = 0
    for prefix, items in seqs:
        for i, obj in enumerate(items):
            loc = f"{prefix}{i}]" if prefix.endswith("[") else f"{prefix}{i}"
            n += 1
            if not isinstance(obj, dict):
                yield loc, None, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield loc, obj, None
    if n == 0:
        yield "file", None, "no items: the JSON holds an empty array"


def err_field(err: str) -> str:
    """The ``field`` of a reject raised by file/row reading (not by a mapped column)."""
    low = err.lower()
    if low.startswith(("empty file", "no data rows", "no items", "cannot read")):
        return "file"
    if "utf-8" in low or "utf-16" in low:
        return "encoding"
    if "json" in low:
        return "json"
    if "csv" in low or "fields" in low or "header" in low:
        return "row"
    return "file"
