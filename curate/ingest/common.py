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

from ..example import Example, MessageError, Source, text_hash
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
    field_name: str | None = None,
) -> Example | Reject:
    """Scrub PII from non-system turns, validate, and build the Example (or a Reject)."""
    findings: list[dict[str, Any]] = []
    if opts.scrub_pii:
        names = tuple(opts.known_names) + tuple(n for n in known_names if n)
        scrubbed = []
        for i, m in enumerate(messages):
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str) and m.get("role") != "system":
                content, f = scrub(content, names)
                for x in f:
                    x["turn"] = i
                findings += f
                m = {**m, "content": content}
            scrubbed.append(m)
        messages = scrubbed
    try:
        ex = Example(messages=messages, source=source, group=group, label=label)
    except MessageError as e:
        return Reject(source.file, source.loc, f"invalid conversation: {e}", field_name or "messages", repr(messages)[:500])
    if findings:
        ex.signals["pii"] = findings
    return ex


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
