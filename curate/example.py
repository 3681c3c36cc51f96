"""The one record type that flows through the workbench: :class:`Example`.

Owns message validation (OpenAI chat format with precise errors), the
content-hash id, and (de)serialisation to plain dicts / SQLite rows.

Rules enforced by :func:`validate_messages` (each error names the rule):

* ``messages`` is a non-empty list of ``{"role", "content"}`` dicts;
* roles are ``system`` | ``user`` | ``assistant``; ``system`` only first;
* after the optional system turn, roles alternate starting with ``user``;
* the conversation ends with an ``assistant`` turn;
* no turn is empty or whitespace-only; content is a string.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ROLES = ("system", "user", "assistant")
_ROLE_SET = frozenset(ROLES)
SOURCE_KINDS = ("ticket", "transcript", "doc", "chat-file", "synthetic", "edit")
SPLITS = ("train", "heldout")
STATUSES = ("pending", "approved", "rejected", "edited")


class MessageError(ValueError):
    """A conversation broke one of the message rules; ``rule`` names it."""

    def __init__(self, rule: str, detail: str, turn: int | None = None):
        self.rule = rule
        self.turn = turn
        where = f" (turn {turn})" if turn is not None else ""
        super().__init__(f"{rule}{where}: {detail}")


_WS = re.compile(r"\s+")


_BLANKS = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Trim and collapse runs of blank lines / trailing spaces (content-preserving)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii() and "\ufeff" in text:
        text = text.replace("\ufeff", "")
    if "\n" not in text:  # fast path: one line
        return text.strip()
    out = "\n".join([ln.rstrip() for ln in text.split("\n")]).strip()
    return _BLANKS.sub("\n\n", out) if "\n\n\n" in out else out


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Return a cleaned copy of ``messages`` or raise :class:`MessageError`."""
    if not isinstance(messages, list) or not messages:
        raise MessageError("messages-not-empty-list", "messages must be a non-empty list of turns")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise MessageError("turn-is-object", f"expected an object with role/content, got {type(m).__name__}", i)
        role = m.get("role")
        content = m.get("content")
        if role not in _ROLE_SET:
            raise MessageError("known-role", f"role must be one of {ROLES}, got {role!r}", i)
        if content.__class__ is not str and not isinstance(content, str):
            raise MessageError("content-is-string", f"content must be a string, got {type(content).__name__}", i)
        content = clean_text(content)
        if not content:
            raise MessageError("no-empty-turns", f"{role} turn is empty", i)
        out.append({"role": role, "content": content})
    n = len(out)
    start = 1 if out[0]["role"] == "system" else 0
    want = "user"  # the role the next non-system turn must have
    for idx in range(start, n):
        r = out[idx]["role"]
        if r != want:
            if r == "system":
                raise MessageError("system-only-first", "a system turn may only be the first turn", idx)
            raise MessageError("roles-alternate", f"expected {want} after the previous turn, got {r}", idx)
        want = "assistant" if r == "user" else "user"
    if start == n:
        raise MessageError("has-user-turn", "conversation has no user turn")
    if out[-1]["role"] != "assistant":
        raise MessageError("ends-with-assistant", "the last turn must be an assistant turn", n - 1)
    return out


from json.encoder import encode_basestring as _json_str  # noqa: E402  (C: a JSON string literal, non-ASCII kept)


def content_id(messages: list[dict[str, str]]) -> str:
    """Stable id: sha256 of the canonical JSON of role + whitespace-normalized content."""
    # == json.dumps([[role, _WS.sub(" ", content).strip()], …], ensure_ascii=False, separators=(",", ":"))
    blob = "[" + ",".join([f"[{_json_str(m['role'])},{_json_str(' '.join(m['content'].split()))}]" for m in messages]) + "]"
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def text_hash(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


@dataclass
class Source:
    """Where a record came from."""

    kind: str  # ticket | transcript | doc | chat-file | synthetic | edit
    file: str = ""
    loc: str = ""  # "line 12", "row 7", "cue 3", "item 4" …
    ref: str = ""  # id of the record in the source system (ticket id, convo id)


@dataclass
class Example:
    """One chat training example.

    ``status`` is derived from review events by :func:`curate.status.derive_status`
    and is only carried here as a read-only convenience when loaded from the store.
    """

    messages: list[dict[str, str]]
    source: Source
    group: str = ""
    split: str = ""
    origin: dict[str, Any] = field(default_factory=lambda: {"kind": "human"})
    signals: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    parent_id: str | None = None  # set on edits: the record this one replaces
    id: str = ""
    status: str = "pending"
    created_at: float = 0.0

    def __post_init__(self) -> None:
        self.messages = validate_messages(self.messages)
        if isinstance(self.source, dict):
            self.source = Source(**self.source)
        if self.source.kind not in SOURCE_KINDS:
            raise MessageError("known-source-kind", f"source kind must be one of {SOURCE_KINDS}, got {self.source.kind!r}")
        if self.split and self.split not in SPLITS:
            raise MessageError("known-split", f"split must be one of {SPLITS}, got {self.split!r}")
        if self.origin.get("kind") not in ("human", "synthetic"):
            raise MessageError("known-origin", f"origin kind must be human or synthetic, got {self.origin.get('kind')!r}")
        computed = content_id(self.messages)
        if self.id and self.id != computed:
            raise MessageError("id-is-content-hash", f"id {self.id} does not match content hash {computed}")
        self.id = computed
        if not self.group:
            self.group = "text:" + text_hash(normalize_for_group(self.messages))
        if not self.created_at:
            self.created_at = time.time()

    # -- convenience -------------------------------------------------------
    @property
    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def assistant_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "assistant")

    @property
    def text(self) -> str:
        """All non-system turns joined: what dedup and leakage compare."""
        return "\n".join(m["content"] for m in self.messages if m["role"] != "system")

    def edited(self, messages: list[dict[str, str]], **changes: Any) -> "Example":
        """A new record (new id) replacing this one; nothing is updated in place."""
        return Example(
            messages=messages,
            source=Source(kind="edit", file=self.source.file, loc=self.source.loc, ref=self.id),
            group=self.group,
            split=self.split,
            origin=dict(self.origin),
            signals={k: v for k, v in self.signals.items() if k in ("pii",)},
            label=changes.get("label", self.label),
            parent_id=self.id,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        d = dict(d)
        src = d.pop("source")
        return cls(source=Source(**src) if isinstance(src, dict) else src, **d)


_FAST_FIELDS = ("messages", "source", "group", "split", "origin", "signals", "label", "parent_id", "id", "status",
                "created_at")
assert tuple(f.name for f in fields(Example)) == _FAST_FIELDS, "update new_example() with Example's fields"


def new_example(messages: list[dict[str, str]], source: Source, group: str = "", label: str | None = None,
                signals: dict[str, Any] | None = None) -> Example:
    """``Example(messages=…, source=…, group=…, label=…, signals=…)`` for a new human record, without
    the dataclass machinery (ingestion builds one per input row). Same validation (the same
    :class:`MessageError`), the same content-hash id and default group."""
    if source.kind not in SOURCE_KINDS:
        raise MessageError("known-source-kind", f"source kind must be one of {SOURCE_KINDS}, got {source.kind!r}")
    ex = Example.__new__(Example)
    ex.messages = msgs = validate_messages(messages)
    ex.source = source
    ex.group = group or "text:" + text_hash(normalize_for_group(msgs))
    ex.split = ""
    ex.origin = {"kind": "human"}
    ex.signals = signals if signals is not None else {}
    ex.label = label
    ex.parent_id = None
    ex.id = content_id(msgs)
    ex.status = "pending"
    ex.created_at = time.time()
    return ex


def normalize_for_group(messages: list[dict[str, str]]) -> str:
    """Default grouping key: the first user turn, lowercased and whitespace-collapsed.

    Identical customer queries therefore share a group and can never straddle
    train and held-out.
    """
    for m in messages:
        if m["role"] == "user":
            return _WS.sub(" ", m["content"].lower()).strip()
    return ""
