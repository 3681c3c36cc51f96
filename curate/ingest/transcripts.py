"""Transcripts (WebVTT, SRT, speaker-labelled text, JSON turn lists incl. ABCD) → multi-turn chats.

One conversation becomes one :class:`~curate.example.Example` whose ``group``
is ``transcript:<file>#<conversation id>`` (so a call never straddles the split).

**Speaker rule** (:func:`speaker_role`). A speaker name is compared
case-insensitively, as a whole and by its first word:

* ``agent, assistant, support, rep, representative, bot, operator, advisor``
  → ``assistant``;
* ``action, system, note, event`` → an *action line* (see below);
* anyone else → ``user``.

A mapping overrides it (``--mapping FILE`` or ``mapping.toml`` beside the file)::

    [speakers]
    assistant = ["Dana", "Rep"]     # these names are the assistant
    user = ["Agent Smith"]          # force a name to the user side
    action = ["Narrator"]           # treat as action lines

Names listed in the mapping win; unlisted names fall back to the default rule.

**Shaping the chat**: consecutive turns of one side are merged (joined by a
newline). Action lines (ABCD ``action`` turns, ``[system] …`` and
``NOTE: …`` lines) are *not* part of the chat: they are dropped from the
messages and kept in ``signals["actions"]`` (``speaker``, ``text``,
``after_turn``), PII-scrubbed like the turns. A chat must start with the user:
leading agent turns (greetings before the customer spoke) are dropped;
trailing customer turns (no reply follows) are dropped. Both counts are kept in
``signals["trimmed"]``. A conversation left without a user→assistant exchange
is a reject.

**Formats**

* ``.vtt`` — parsed with ``webvtt-py``; the speaker is the ``<v Name>`` voice
  span or a ``Name:`` prefix of the cue text. Each cue block is checked first
  (timing line ``HH:MM:SS.mmm --> HH:MM:SS.mmm``, end ≥ start, some text), so
  a bad cue is a reject naming its cue number and line instead of being skipped.
* ``.srt`` — each block parsed with the ``srt`` package (same checks);
  speaker from a ``Name:`` prefix.
* ``.txt`` — ``Speaker: text`` lines, optional ``[00:01:02]`` / ``[01:02]``
  timestamp before the speaker; ``[system] text`` is an action line; lines
  without a label continue the previous turn; a line ``---`` starts a new
  conversation.
* ``.json`` / ``.jsonl`` — conversations with ``original`` (ABCD:
  ``[[speaker, text], …]``), ``turns``, ``dialogue`` or ``utterances`` (lists of
  ``[speaker, text]`` pairs or objects with ``speaker|role|from`` and
  ``text|content|utterance|value``). Conversation id from ``convo_id``,
  ``id``, ``conversation_id``. ABCD's ``scenario`` gives known PII values:
  ``personal.customer_name|username|email|phone|account_id`` and
  ``order.order_id|street_address|full_address|zip_code``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

from ..example import Source
from .common import err_field, ReadOptions, Reject, iter_json_items, make_example, read_text

ASSISTANT_WORDS = frozenset({"agent", "assistant", "support", "rep", "representative", "bot", "operator", "advisor"})
ACTION_WORDS = frozenset({"action", "system", "note", "event"})
CONV_KEYS = ("original", "turns", "dialogue", "utterances")
SPEAKER_KEYS = ("speaker", "role", "from", "author")
TEXT_KEYS = ("text", "content", "utterance", "value")
ID_KEYS = ("convo_id", "conversation_id", "id", "dialogue_id")

VTT_TIME = r"(?:\d{2,}:)?[0-5]\d:[0-5]\d\.\d{3}"
VTT_TIMING = re.compile(rf"^\s*({VTT_TIME})\s+-->\s+({VTT_TIME})(?:\s+.*)?$")
SRT_TIME = r"\d{1,3}:[0-5]\d:[0-5]\d[,.]\d{1,3}"
SRT_TIMING = re.compile(rf"^\s*({SRT_TIME})\s+-->\s+({SRT_TIME})(?:\s+.*)?$")
ANY_TIMING = re.compile(r"-->")
TXT_LINE = re.compile(r"^\s*(?:\[(?P<ts>[^\]]*)\]\s*)?(?P<spk>[A-Za-z][\w .'-]{0,30}?)\s*:\s+(?P<text>\S.*)$")
TXT_BRACKET = re.compile(r"^\s*(?:\[(?P<ts>[\d:.]*)\]\s*)?\[(?P<spk>[A-Za-z][\w .-]{0,30})\]\s*(?P<text>.*)$")
TXT_TS = re.compile(r"^(?:(\d{1,2}):)?([0-5]\d):([0-5]\d)(?:[.,]\d{1,3})?$")
CUE_SPEAKER = re.compile(r"^\s*(?P<spk>[A-Za-z][\w .'-]{0,30}?)\s*:\s+(?P<text>\S.*)$", re.S)


@dataclass
class Turn:
    speaker: str
    text: str
    loc: str  # "cue 3 (line 9)", "line 12", "turn 4"


def speaker_role(speaker: str, mapping: dict[str, Any] | None = None) -> str:
    """``user`` | ``assistant`` | ``action`` for a speaker name (rule in the module docstring)."""
    name = " ".join(str(speaker).split()).lower()
    sp = (mapping or {}).get("speakers") or {}
    for role in ("assistant", "user", "action"):
        listed = sp.get(role) or []
        if isinstance(listed, str):
            listed = [listed]
        if name in {" ".join(str(x).split()).lower() for x in listed}:
            return role
    first = name.split(" ", 1)[0] if name else ""
    if name in ASSISTANT_WORDS or first in ASSISTANT_WORDS:
        return "assistant"
    if name in ACTION_WORDS or first in ACTION_WORDS:
        return "action"
    return "user"


def shape(turns: list[Turn], mapping: dict[str, Any]) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Turns → (messages, signals): map speakers, set actions aside, merge, trim ends."""
    msgs: list[dict[str, str]] = []
    actions: list[dict[str, Any]] = []
    speakers: dict[str, str] = {}
    for t in turns:
        text = t.text.strip()
        if not text:
            continue
        role = speaker_role(t.speaker, mapping)
        speakers.setdefault(t.speaker, role)
        if role == "action":
            actions.append({"speaker": t.speaker, "text": text, "after_turn": len(msgs) - 1, "loc": t.loc})
            continue
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] += "\n" + text
        else:
            msgs.append({"role": role, "content": text})
    lead = 0
    while msgs and msgs[0]["role"] == "assistant":
        msgs.pop(0)
        lead += 1
    trail = 0
    while msgs and msgs[-1]["role"] == "user":
        msgs.pop()
        trail += 1
    if lead:
        for a in actions:
            a["after_turn"] = max(-1, a["after_turn"] - lead)
    signals: dict[str, Any] = {"speakers": speakers}
    if actions:
        signals["actions"] = actions
    if lead or trail:
        signals["trimmed"] = {"leading_assistant_turns": lead, "trailing_user_turns": trail}
    return msgs, signals


def _conversation(turns: list[Turn], file: str, conv_id: str, opts: ReadOptions, known=()) -> Any:
    loc = turns[0].loc if turns else "file"
    if len(turns) > 1:
        loc = f"{turns[0].loc} – {turns[-1].loc}"
    msgs, signals = shape(turns, opts.mapping)
    src = Source("transcript", file, loc, conv_id)
    if not msgs:
        sides = sorted(set(signals["speakers"].values()))
        return Reject(file, loc, f"conversation {conv_id!r} has no customer turn answered by the agent "
                      f"(speaker roles seen: {sides or 'none'}; see the speaker rule / [speakers] mapping)", "speaker")
    return make_example(msgs, src, opts, group=f"transcript:{file}#{conv_id}", known=known, signals=signals)


# -- WebVTT / SRT -------------------------------------------------------------------
def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Blank-line separated blocks with their first line number (1-based)."""
    out: list[tuple[int, list[str]]] = []
    cur: list[str] = []
    start = 0
    for i, ln in enumerate(text.splitlines(), 1):
        if ln.strip():
            if not cur:
                start = i
            cur.append(ln)
        elif cur:
            out.append((start, cur))
            cur = []
    if cur:
        out.append((start, cur))
    return out


def _cue_speaker(text: str, voice: str | None) -> tuple[str, str]:
    if voice:
        return voice.strip(), text
    m = CUE_SPEAKER.match(text)
    if m:
        return m.group("spk").strip(), m.group("text")
    return "", text


def _timed_cues(text: str, file: str, fmt: str) -> Iterator[Turn | Reject]:
    import srt as srt_lib
    import webvtt

    blocks = _blocks(text)
    if fmt == "vtt":
        if not blocks or not blocks[0][1][0].lstrip("\ufeff").startswith("WEBVTT"):
            yield Reject(file, "line 1", "not a WebVTT file: the first line must be 'WEBVTT'", "header")
            return
        blocks = blocks[1:]
    timing_re = VTT_TIMING if fmt == "vtt" else SRT_TIMING
    cue_no = 0
    last_speaker = ""
    for line_no, lines in blocks:
        if fmt == "vtt" and lines[0].startswith(("NOTE", "STYLE", "REGION")):
            continue
        cue_no += 1
        t_idx = next((i for i, ln in enumerate(lines[:3]) if ANY_TIMING.search(ln)), None)
        where = f"cue {cue_no} (line {line_no})"
        if t_idx is None:
            if (line_no, lines) == blocks[-1] and len(lines) == 1 and lines[0].strip().isdigit():
                yield Reject(file, where, "truncated cue: the file ends after the cue number", "timing", "\n".join(lines))
            else:
                yield Reject(file, where, "cue has no timing line ('start --> end')", "timing", "\n".join(lines))
            continue
        m = timing_re.match(lines[t_idx])
        tl = line_no + t_idx
        if not m:
            yield Reject(file, f"cue {cue_no} (line {tl})", f"bad timestamp in {lines[t_idx].strip()!r}", "timing", "\n".join(lines))
            continue
        body = lines[t_idx + 1:]
        if not body:
            yield Reject(file, f"cue {cue_no} (line {tl})", "truncated cue: timing line without text", "text", "\n".join(lines))
            continue
        try:
            if fmt == "vtt":
                cap = list(webvtt.WebVTT.from_string("WEBVTT\n\n" + "\n".join(lines[t_idx:]) + "\n"))[0]
                start, end = cap.start_in_seconds, cap.end_in_seconds
                cue_text, voice = cap.text, cap.voice
            else:
                sub = list(srt_lib.parse("1\n" + "\n".join(lines[t_idx:]) + "\n"))[0]
                start, end = sub.start / timedelta(seconds=1), sub.end / timedelta(seconds=1)
                cue_text, voice = sub.content, None
        except Exception as e:  # the libraries raise their own error types for malformed cues
            yield Reject(file, f"cue {cue_no} (line {tl})", f"malformed cue: {e}", "timing", "\n".join(lines))
            continue
        if end < start:
            yield Reject(file, f"cue {cue_no} (line {tl})", f"bad timestamp: end {m.group(2)} is before start {m.group(1)}", "timing", "\n".join(lines))
            continue
        speaker, said = _cue_speaker(cue_text, voice)
        if not speaker:
            speaker = last_speaker  # a cue without a label continues the previous speaker
        if not speaker:
            yield Reject(file, f"cue {cue_no} (line {tl})", "cue has no speaker (no <v Name> voice span or 'Name:' prefix) and no earlier speaker", "speaker", cue_text)
            continue
        last_speaker = speaker
        yield Turn(speaker, said, f"cue {cue_no}")


def _read_timed(path: Path, file: str, opts: ReadOptions, fmt: str) -> Iterator[Any]:
    text, rej = read_text(path, file)
    if rej:
        yield rej
        return
    turns: list[Turn] = []
    for it in _timed_cues(text, file, fmt):
        if isinstance(it, Reject):
            yield it
        else:
            turns.append(it)
    if turns:
        yield _conversation(turns, file, path.stem, opts)
    else:
        yield Reject(file, "file", "no usable cues in the file", "file")


# -- speaker-labelled text ------------------------------------------------------------
def _read_txt(path: Path, file: str, opts: ReadOptions) -> Iterator[Any]:
    text, rej = read_text(path, file)
    if rej:
        yield rej
        return
    turns: list[Turn] = []
    conv = 0

    def flush():
        nonlocal turns, conv
        if turns:
            conv += 1
            cid = path.stem if conv == 1 else f"{path.stem}-{conv}"
            out = _conversation(turns, file, cid, opts)
            turns = []
            return out
        return None

    for i, ln in enumerate(text.splitlines(), 1):
        s = ln.strip()
        if not s:
            continue
        if s == "---":
            out = flush()
            if out is not None:
                yield out
            continue
        m = TXT_BRACKET.match(ln) or TXT_LINE.match(ln)
        if m:
            ts = m.group("ts")
            if ts is not None and ts.strip() and not TXT_TS.match(ts.strip()):
                yield Reject(file, f"line {i}", f"bad timestamp [{ts}] (expected [HH:MM:SS] or [MM:SS])", "timestamp", ln)
                continue
            turns.append(Turn(m.group("spk").strip(), m.group("text"), f"line {i}"))
        elif turns:
            turns[-1].text += "\n" + s  # continuation of the previous turn
        else:
            yield Reject(file, f"line {i}", "text before the first 'Speaker: …' line", "speaker", ln)
    out = flush()
    if out is not None:
        yield out
    elif conv == 0:
        yield Reject(file, "file", "no 'Speaker: text' lines found", "speaker")


# -- JSON turn lists ----------------------------------------------------------------
def _abcd_known(scenario: Any) -> list[tuple[str, str]]:
    if not isinstance(scenario, dict):
        return []
    p = scenario.get("personal") or {}
    o = scenario.get("order") or {}
    pairs = [("NAME", p.get("customer_name")), ("USERNAME", p.get("username")), ("EMAIL", p.get("email")),
             ("PHONE", p.get("phone")), ("ACCOUNT", p.get("account_id")), ("ORDER_ID", o.get("order_id")),
             ("ADDRESS", o.get("full_address")), ("ADDRESS", o.get("street_address")), ("ZIP", o.get("zip_code"))]
    return [(t, str(v)) for t, v in pairs if v not in (None, "")]


def _json_turns(obj: dict[str, Any], loc: str) -> tuple[list[Turn] | None, str | None, str | None]:
    key = next((k for k in CONV_KEYS if k in obj), None)
    if key is None:
        return None, None, f"no turn list: expected one of {list(CONV_KEYS)}"
    items = obj[key]
    if not isinstance(items, list):
        return None, key, f"{key} must be a list of turns, got {type(items).__name__}"
    turns: list[Turn] = []
    for j, t in enumerate(items):
        if isinstance(t, (list, tuple)) and len(t) >= 2 and isinstance(t[0], str) and isinstance(t[1], str):
            turns.append(Turn(t[0], t[1], f"{loc} turn {j}"))
        elif isinstance(t, dict):
            spk = next((t[k] for k in SPEAKER_KEYS if isinstance(t.get(k), str)), None)
            txt = next((t[k] for k in TEXT_KEYS if isinstance(t.get(k), str)), None)
            if spk is None or txt is None:
                return None, f"{key}[{j}]", f"turn {j} needs a speaker ({'/'.join(SPEAKER_KEYS)}) and a text ({'/'.join(TEXT_KEYS)})"
            turns.append(Turn(spk, txt, f"{loc} turn {j}"))
        else:
            return None, f"{key}[{j}]", f"turn {j} must be [speaker, text] or an object, got {str(t)[:60]!r}"
    if not turns:
        return None, key, f"{key} is empty"
    return turns, key, None


def _read_json(path: Path, file: str, opts: ReadOptions) -> Iterator[Any]:
    for loc, obj, err in iter_json_items(path, CONV_KEYS):
        if err:
            yield Reject(file, loc, err, err_field(err))
            continue
        turns, fld, why = _json_turns(obj, loc)
        if why:
            yield Reject(file, loc, why, fld)
            continue
        cid = next((str(obj[k]) for k in ID_KEYS if obj.get(k) not in (None, "")), loc.replace(" ", ""))
        out = _conversation(turns, file, cid, opts, known=_abcd_known(obj.get("scenario")))
        if isinstance(out, Reject):
            out.loc = loc
        else:
            out.source.loc = loc
            flow = (obj.get("scenario") or {}).get("subflow") if isinstance(obj.get("scenario"), dict) else None
            if flow:
                out.signals["scenario"] = {"flow": obj["scenario"].get("flow"), "subflow": flow}
        yield out


def read(path: Path, opts: ReadOptions, display: str | None = None) -> Iterator[Any]:
    file = display or str(path)
    s = path.suffix.lower()
    if s == ".vtt":
        yield from _read_timed(path, file, opts, "vtt")
    elif s == ".srt":
        yield from _read_timed(path, file, opts, "srt")
    elif s in (".json", ".jsonl", ".ndjson"):
        yield from _read_json(path, file, opts)
    elif s in (".txt", ".text", ".log"):
        yield from _read_txt(path, file, opts)
    else:
        yield Reject(file, "file", f"unsupported transcript format {s!r} (use .vtt, .srt, .txt, .json or .jsonl)")
