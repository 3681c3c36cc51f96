"""Ticket exports (CSV / TSV / JSONL / JSON) → chat examples, driven by a mapping.

Mapping (TOML, ``--mapping FILE`` or a ``mapping.toml`` / ``<stem>.mapping.toml``
next to the file)::

    system = "You classify banking customer queries ..."   # optional system turn
    [columns]
    user = "text"              # column holding the customer's message
    assistant = "category"     # column holding the reply (or the label)
    label = "category"         # optional: a closed-set label (stratified split, accuracy metrics)
    group = "ticket_id"        # optional: rows sharing it never straddle the split
    names = ["customer_name"]  # optional: columns whose values are scrubbed as [NAME]
    user_template = "{subject}\n\n{body}"     # optional, instead of `user`
    assistant_template = "{category}"          # optional, instead of `assistant`

    [thread]                   # optional: one row per message, a ticket = consecutive rows
    id = "ticket_id"           # rows with the same id (contiguous) form one conversation
    role = "author"            # column naming the speaker
    text = "body"              # column with the message
    user_values = ["customer", "user", "client"]   # speaker values that are the user

Without a mapping, columns are guessed when unambiguous: user from one of
``text, query, question, prompt, body, message``; assistant from one of
``response, answer, reply, label, category, intent``; a ``label``/``category``/
``intent`` column is also taken as the label.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from ..example import Source
from .common import ReadOptions, Reject, make_example

USER_GUESS = ("text", "query", "question", "prompt", "body", "message", "utterance")
ASSISTANT_GUESS = ("response", "answer", "reply", "label", "category", "intent")
LABEL_GUESS = ("label", "category", "intent")


class MappingError(ValueError):
    pass


def _resolve_columns(cols: list[str], mapping: dict[str, Any], file: str) -> dict[str, Any]:
    m = dict(mapping.get("columns", {}))
    lower = {c.lower(): c for c in cols}
    if "thread" in mapping:
        th = mapping["thread"]
        for k in ("id", "role", "text"):
            if th.get(k) not in cols:
                raise MappingError(f"{file}: thread.{k} column {th.get(k)!r} not in the file's columns {cols}")
        return m
    if "user" not in m and "user_template" not in m:
        hit = [lower[c] for c in USER_GUESS if c in lower]
        if not hit:
            raise MappingError(
                f"{file}: cannot tell which column is the user's message (columns: {cols}); "
                "pass --mapping FILE with [columns] user = \"…\""
            )
        m["user"] = hit[0]
    if "assistant" not in m and "assistant_template" not in m:
        hit = [lower[c] for c in ASSISTANT_GUESS if c in lower and lower[c] != m.get("user")]
        if not hit:
            raise MappingError(
                f"{file}: cannot tell which column is the assistant's reply (columns: {cols}); "
                "pass --mapping FILE with [columns] assistant = \"…\""
            )
        m["assistant"] = hit[0]
        if "label" not in m and hit[0].lower() in LABEL_GUESS:
            m["label"] = hit[0]
    for k in ("user", "assistant", "label", "group"):
        if k in m and m[k] not in cols:
            raise MappingError(f"{file}: mapping column {k} = {m[k]!r} is not in the file's columns {cols}")
    return m


def _render(template: str, row: dict[str, Any]) -> str:
    try:
        return template.format(**{k: ("" if v is None else v) for k, v in row.items()})
    except KeyError as e:
        raise MappingError(f"template names column {e.args[0]!r} which the row does not have") from None


def _row_example(row: dict[str, Any], m: dict[str, Any], mapping: dict[str, Any], src: Source, opts: ReadOptions):
    for k in ("user", "assistant"):
        col = m.get(k)
        if col is not None and (row.get(col) is None or str(row.get(col)).strip() == ""):
            return Reject(src.file, src.loc, f"missing value for {k} turn", col, json.dumps(row, ensure_ascii=False)[:500])
    try:
        user = _render(m["user_template"], row) if "user_template" in m else str(row[m["user"]])
        asst = _render(m["assistant_template"], row) if "assistant_template" in m else str(row[m["assistant"]])
    except MappingError as e:
        return Reject(src.file, src.loc, str(e), None, json.dumps(row, ensure_ascii=False)[:500])
    msgs = []
    if mapping.get("system"):
        msgs.append({"role": "system", "content": mapping["system"]})
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": asst}]
    label = str(row[m["label"]]).strip() if m.get("label") and row.get(m["label"]) not in (None, "") else None
    group = f"ticket:{row[m['group']]}" if m.get("group") and row.get(m["group"]) not in (None, "") else ""
    names = [str(row[c]) for c in m.get("names", []) if row.get(c)]
    src.ref = str(row[m["group"]]) if group else ""
    return make_example(msgs, src, opts, group=group, label=label, known_names=names, field_name=m.get("user"))


def _thread_example(rows: list[tuple[str, dict]], mapping: dict[str, Any], file: str, opts: ReadOptions):
    th = mapping["thread"]
    users = {v.lower() for v in th.get("user_values", ["customer", "user", "client"])}
    msgs: list[dict[str, str]] = []
    if mapping.get("system"):
        msgs.append({"role": "system", "content": mapping["system"]})
    for _, r in rows:
        text = str(r.get(th["text"]) or "").strip()
        if not text:
            continue
        role = "user" if str(r.get(th["role"]) or "").strip().lower() in users else "assistant"
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] += "\n" + text  # consecutive turns of one speaker merged
        else:
            msgs.append({"role": role, "content": text})
    if msgs and msgs[0]["role"] == "system" and len(msgs) > 1 and msgs[1]["role"] == "assistant":
        msgs.pop(1)  # agent greeting before the customer spoke: not trainable context
    elif msgs and msgs[0]["role"] == "assistant":
        msgs.pop(0)
    while msgs and msgs[-1]["role"] == "user":
        msgs.pop()  # unanswered customer turn at the end
    tid = str(rows[0][1].get(th["id"]))
    loc = f"{rows[0][0]}-{rows[-1][0].split()[-1]}"
    names = [str(rows[0][1][c]) for c in mapping.get("columns", {}).get("names", []) if rows[0][1].get(c)]
    return make_example(msgs, Source("ticket", file, loc, tid), opts, group=f"ticket:{tid}", known_names=names)


def iter_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """Yield (loc, row, error) from a CSV/TSV/JSONL/JSON file, streaming where the format allows."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        f = open(path, "r", encoding="utf-8-sig", newline="")
        try:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            try:
                header = reader.fieldnames
            except UnicodeDecodeError as e:
                yield "line 1", None, f"not valid UTF-8 ({e.reason}); re-save the file as UTF-8"
                return
            except csv.Error as e:
                yield "line 1", None, f"malformed CSV header: {e}"
                return
            if not header:
                yield "file", None, "empty file: no header row"
                return
            n = 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except UnicodeDecodeError as e:
                    yield f"line {reader.line_num + 1}", None, f"not valid UTF-8 ({e.reason}); re-save the file as UTF-8"
                    return
                except csv.Error as e:
                    yield f"line {reader.line_num}", None, f"malformed CSV: {e}"
                    return
                n += 1
                if None in row:
                    yield f"row {n} (line {reader.line_num})", None, f"row has {len(header) + len(row[None])} fields, header has {len(header)}"
                    continue
                if any(v is None for v in row.values()):
                    missing = [k for k, v in row.items() if v is None]
                    yield f"row {n} (line {reader.line_num})", None, f"row is truncated: missing fields {missing}"
                    continue
                yield f"row {n} (line {reader.line_num})", row, None
            if n == 0:
                yield "file", None, "no data rows after the header"
        finally:
            f.close()
    elif suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as f:
            first = True
            for i, raw in enumerate(f, 1):
                if first and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                first = False
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    yield f"line {i}", None, f"not valid UTF-8 at byte {e.start} of the line"
                    continue
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"line {i}", None, f"invalid JSON: {e.msg} at column {e.colno}"
                    continue
                if not isinstance(obj, dict):
                    yield f"line {i}", None, f"expected a JSON object, got {type(obj).__name__}"
                    continue
                yield f"line {i}", obj, None
    elif suffix == ".json":
        from .common import open_text

        text, err = open_text(path)
        if err:
            yield "file", None, err
            return
        if not text.strip():
            yield "file", None, "empty file"
            return
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            yield f"line {e.lineno}", None, f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            return
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), [data])
        if not isinstance(data, list):
            yield "file", None, "expected a JSON array of objects"
            return
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                yield f"item {i}", None, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield f"item {i}", obj, None
    else:
        yield "file", None, f"unsupported ticket format {suffix!r} (use .csv, .tsv, .jsonl or .json)"


def read(path: Path, opts: ReadOptions, display: str | None = None) -> Iterator[Any]:
    file = display or str(path)
    mapping = opts.mapping
    m: dict[str, Any] | None = None
    thread_buf: list[tuple[str, dict]] = []
    for loc, row, err in iter_rows(path):
        if err:
            yield Reject(file, loc, err)
            continue
        if m is None:
            try:
                m = _resolve_columns(list(row.keys()), mapping, file)
            except MappingError as e:
                yield Reject(file, "file", str(e), "columns")
                return
        if "thread" in mapping:
            tid = row.get(mapping["thread"]["id"])
            if thread_buf and thread_buf[-1][1].get(mapping["thread"]["id"]) != tid:
                yield _thread_example(thread_buf, mapping, file, opts)
                thread_buf = []
            thread_buf.append((loc, row))
            continue
        yield _row_example(row, m, mapping, Source("ticket", file, loc), opts)
    if thread_buf:
        yield _thread_example(thread_buf, mapping, file, opts)
