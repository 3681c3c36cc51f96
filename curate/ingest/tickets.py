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
import hashlib
import json
import time
from json.encoder import encode_basestring as _json_str  # C: a JSON string literal, non-ASCII kept
from pathlib import Path
from typing import Any, Iterator

from ..example import _WS, Source, clean_text, text_hash
from ..pii import needs_scrub, scrub
from .common import err_field, iter_json_items, load_json, ReadOptions, Reject, make_example

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
        if None in row.values():
            row = {k: ("" if v is None else v) for k, v in row.items()}
        return template.format_map(row)
    except KeyError as e:
        raise MappingError(f"template names column {e.args[0]!r} which the row does not have") from None


def _row_example(row: dict[str, Any], m: dict[str, Any], mapping: dict[str, Any], src: Source, opts: ReadOptions):
    for k in ("user", "assistant"):
        col = m.get(k)
        if col is not None:
            v = row.get(col)
            if v is None or (v.strip() == "" if v.__class__ is str else str(v).strip() == ""):
                return Reject(src.file, src.loc, f"missing value for {k} turn", col, json.dumps(row, ensure_ascii=False)[:500])
    try:
        user = _render(m["user_template"], row) if "user_template" in m else str(row[m["user"]])
        asst = _render(m["assistant_template"], row) if "assistant_template" in m else str(row[m["assistant"]])
    except MappingError as e:
        return Reject(src.file, src.loc, str(e), None, json.dumps(row, ensure_ascii=False)[:500])
    system = mapping.get("system")
    if system:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user},
                {"role": "assistant", "content": asst}]
    else:
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": asst}]
    col = m.get("label")
    label = str(row[col]).strip() if col and row.get(col) not in (None, "") else None
    col = m.get("group")
    group = f"ticket:{row[col]}" if col and row.get(col) not in (None, "") else ""
    names = [str(row[c]) for c in m["names"] if row.get(c)] if "names" in m else ()
    src.ref = str(row[col]) if group else ""
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
    first = 1 if msgs and msgs[0]["role"] == "system" else 0
    lead = trail = 0
    while len(msgs) > first and msgs[first]["role"] == "assistant":
        msgs.pop(first)  # agent greeting before the customer spoke: not trainable context
        lead += 1
    while msgs and msgs[-1]["role"] == "user":
        msgs.pop()  # unanswered customer turn at the end
        trail += 1
    tid = str(rows[0][1].get(th["id"]))
    loc = f"{rows[0][0]}-{rows[-1][0].split()[-1]}"
    names = [str(rows[0][1][c]) for c in mapping.get("columns", {}).get("names", []) if rows[0][1].get(c)]
    signals = {"trimmed": {"leading_assistant_turns": lead, "trailing_user_turns": trail}} if lead or trail else None
    return make_example(msgs, Source("ticket", file, loc, tid), opts, group=f"ticket:{tid}", known_names=names,
                        signals=signals)


def _decoded_lines(f, bad: dict[int, str]) -> Iterator[str]:
    """UTF-8 lines of a binary file (BOM stripped); undecodable lines are replaced and noted in ``bad``."""
    for i, raw in enumerate(f, 1):
        if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad[i] = f"not valid UTF-8 (line {i}, byte {e.start} of the line: {raw[e.start:e.start + 1]!r}); re-save the file as UTF-8"
            yield raw.decode("utf-8", errors="replace")


def _iter_csv(path: Path, delimiter: str) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """CSV rows streamed line by line; a row with undecodable bytes, a wrong field count
    or a truncated quoted field is a reject naming its row and line; reading goes on."""
    bad: dict[int, str] = {}
    with open(path, "rb") as f:
        reader = csv.reader(_decoded_lines(f, bad), delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as e:
            yield "line 1", None, f"malformed CSV header: {e}"
            return
        if header is None:
            yield "file", None, "empty file: no header row"
            return
        if 1 in bad:
            yield "line 1", None, bad[1]
            return
        header = [h.strip() for h in header]
        nh = len(header)
        n = 0
        prev = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                yield f"line {reader.line_num}", None, f"malformed CSV: {e}"
                return
            n += 1
            ln = reader.line_num
            loc = f"row {n} (line {ln})"
            if bad:
                hit = next((bad.pop(i) for i in range(prev + 1, ln + 1) if i in bad), None)
                if hit:
                    prev = ln
                    yield loc, None, hit
                    continue
            prev = ln
            if len(row) != nh:
                if not row:
                    continue  # blank line
                if len(row) > nh:
                    yield loc, None, f"row has {len(row)} fields, header has {nh}"
                else:
                    yield loc, None, f"row is truncated: missing fields {header[len(row):]}"
                continue
            yield loc, dict(zip(header, row)), None
        if n == 0:
            yield "file", None, "no data rows after the header"


def iter_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """Yield (loc, row, error) from a CSV/TSV/JSONL/JSON file, streaming where the format allows."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        yield from _iter_csv(path, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson"):
        yield from iter_json_items(path)
    elif suffix == ".json":
        data, loc, err = load_json(path)
        if err:
            yield loc, None, err
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


def read(path: Path, opts: ReadOptions, display: str | None = None, rows: Iterator[tuple] | None = None
         ) -> Iterator[Any]:
    """Examples and rejects of a ticket file; ``rows`` (``(loc, row, error)``, as :func:`iter_rows` yields
    them) instead of the file's own rows: a table another reader opened (:mod:`curate.ingest.tables`)."""
    file = display or str(path)
    mapping = opts.mapping
    m: dict[str, Any] | None = None
    thread_buf: list[tuple[str, dict]] = []
    for loc, row, err in (iter_rows(path) if rows is None else rows):
        if err:
            yield Reject(file, loc, err, err_field(err))
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


# -- parallel reading (``ingest --workers N``) -----------------------------------------
def _worker_init() -> None:
    """Pool workers die with their parent (Linux): a SIGKILLed ingest leaves no orphans."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _process_chunk(args: tuple) -> list[Any]:
    """Worker side: one chunk of (loc, row, error) → items, with the columns already resolved."""
    rows, file, mapping, opts, m = args
    out: list[Any] = []
    for loc, row, err in rows:
        if err:
            out.append(Reject(file, loc, err, err_field(err)))
        else:
            out.append(_row_example(row, m, mapping, Source("ticket", file, loc), opts))
    return out


def _scrub_turn(text: str, turn: int, findings: list) -> str:
    """:func:`~curate.pii.scrub` one turn's text; its findings, tagged with the turn, go onto ``findings``."""
    text, found = scrub(text)
    for x in found:
        x["turn"] = turn
    findings.extend(found)
    return text


# long: the ticket fast path's hot loop kept in one frame (bench/results/ingest-quiet.json)
def build_batch(chunk: tuple) -> tuple[Any, list[Reject], list, int]:
    """``_split(_process_chunk(chunk))`` — the :func:`~curate.store.prepare_row` rows (as a
    :class:`~curate.store.TicketRows` batch on the fast path) and the rejects of one chunk of
    (loc, row, error), in order — without the per-row objects: for a row-per-example
    mapping, each row's store row is built straight from its strings (the template, the PII scrub
    only where :func:`~curate.pii.needs_scrub` says it can change something, the message cleaning,
    the content hash and the messages JSON exactly as :func:`~curate.ingest.common.make_example`,
    :func:`~curate.example.new_example` and :func:`~curate.store.prepare_row` do them). A row that
    is anything but plain (a missing or non-string value, an empty turn, a template error) goes
    through that generic path instead, so the result is the same byte for byte."""
    from ..store import _HUMAN, TicketRows, _dumps, prepare_row

    rows, file, mapping, opts, m = chunk
    out: list[list] = []
    rejects: list[Reject] = []
    system = mapping.get("system")
    fast = (m is not None and opts.scrub_pii and not opts.known_names and "names" not in m
            and (not system or (system.__class__ is str and clean_text(system) != "")))
    if not fast:
        for it in _process_chunk(chunk):
            (rejects if isinstance(it, Reject) else out).append(it if isinstance(it, Reject) else prepare_row(it))
        return out, rejects, [], len(rows)
    compact = TicketRows.compact
    ut, at = m.get("user_template"), m.get("assistant_template")
    ucol, acol = m.get("user"), m.get("assistant")
    lcol, gcol = m.get("label"), m.get("group")
    if system:
        s_clean = clean_text(system)
        id_head = '[["system",' + _json_str(" ".join(s_clean.split())) + '],["user",'
        js_head = '[{"role": "system", "content": ' + _json_str(s_clean) + '}, {"role": "user", "content": '
        uturn, aturn = 1, 2
    else:
        id_head, js_head = '[["user",', '[{"role": "user", "content": '
        uturn, aturn = 0, 1
    clock, sha = time.time, hashlib.sha256

    def generic(row: dict, loc: str) -> None:
        it = _row_example(row, m, mapping, Source("ticket", file, loc), opts)
        if isinstance(it, Reject):
            rejects.append(it)
        else:
            r = prepare_row(it)
            if r[2:4] != ["ticket", file] or r[8:10] != ["human", _HUMAN] or r[12:] != [None, r[13], None, 0, None]:
                raise AssertionError(f"not a plain ticket row: {r[:1] + r[2:]}")  # TicketRows could not hold it
            out.append(compact(r))

    for loc, row, err in rows:
        if err:
            rejects.append(Reject(file, loc, err, err_field(err)))
            continue
        if ucol is not None:
            v = row.get(ucol)
            if v.__class__ is not str or not v.strip():
                generic(row, loc)
                continue
        if acol is not None:
            v = row.get(acol)
            if v.__class__ is not str or not v.strip():
                generic(row, loc)
                continue
        try:
            user = _render(ut, row) if ut is not None else row[ucol]
            asst = _render(at, row) if at is not None else row[acol]
        except MappingError:
            generic(row, loc)
            continue
        if user.__class__ is not str or asst.__class__ is not str:
            generic(row, loc)
            continue
        findings: list = []
        if needs_scrub(user):
            user = _scrub_turn(user, uturn, findings)
        if needs_scrub(asst):
            asst = _scrub_turn(asst, aturn, findings)
        user, asst = clean_text(user), clean_text(asst)
        if not user or not asst:
            generic(row, loc)
            continue
        cid = sha((id_head + _json_str(" ".join(user.split())) + '],["assistant",'
                   + _json_str(" ".join(asst.split())) + "]]").encode("utf-8")).hexdigest()[:24]
        js = (js_head + _json_str(user) + '}, {"role": "assistant", "content": ' + _json_str(asst) + "}]")
        label = str(row[lcol]).strip() if lcol and row.get(lcol) not in (None, "") else None
        if gcol and row.get(gcol) not in (None, ""):
            ref = str(row[gcol])
            group = f"ticket:{row[gcol]}"
        else:
            ref = ""
            group = "text:" + text_hash(_WS.sub(" ", user.lower()).strip())
        out.append([cid, js, loc, ref, group, "", _dumps({"pii": findings}) if findings else "{}", label, clock()])
    return TicketRows(file, out), rejects, [], len(rows)


def can_read_parallel(path: Path, opts: ReadOptions) -> bool:
    """Row-per-example files (not ``[thread]`` mappings, whose rows depend on each other)."""
    return "thread" not in opts.mapping and path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson")


def read_parallel(path: Path, opts: ReadOptions, pool: Any, chunk: int = 2000, display: str | None = None,
                  in_flight: int = 4) -> Iterator[Any]:
    """Same items, in the same order, as :func:`read`; rows are turned into examples
    (render, PII scrub, validation, hashing) by ``pool`` workers, ``chunk`` rows per task.
    The file is still read by this process, streaming: at most ``in_flight`` chunks
    are pending, so memory stays flat."""
    from collections import deque

    file = display or str(path)
    mapping = opts.mapping
    rows = iter_rows(path)
    m: dict[str, Any] | None = None
    # up to the first good row: serially, exactly as read() (rejects, then the column check)
    for loc, row, err in rows:
        if err:
            yield Reject(file, loc, err, err_field(err))
            continue
        try:
            m = _resolve_columns(list(row.keys()), mapping, file)
        except MappingError as e:
            yield Reject(file, "file", str(e), "columns")
            return
        yield _row_example(row, m, mapping, Source("ticket", file, loc), opts)
        break
    if m is None:
        return
    pending: deque = deque()
    buf: list[tuple] = []

    def submit() -> None:
        pending.append(pool.apply_async(_process_chunk, ((list(buf), file, mapping, opts, m),)))
        buf.clear()

    for t in rows:
        buf.append(t)
        if len(buf) >= chunk:
            submit()
            while len(pending) >= in_flight:
                yield from pending.popleft().get()
    if buf:
        submit()
    while pending:
        yield from pending.popleft().get()


def read_shared(path: Path, opts: ReadOptions, batch: int, writer_builds: Any, display: str | None = None,
                rows: Iterator[tuple] | None = None) -> Iterator[tuple[str, Any]]:
    """:func:`read` in batches of ``batch`` rows, for row-per-example files (see :func:`can_read_parallel`):
    yields ``("built", (rows, rejects, chunks, n))`` (:func:`build_batch`, built here) or, when an ingest
    reader process may hand a batch to the writer process and ``writer_builds()`` says so, ``("raw", chunk)``
    where ``build_batch(chunk)`` builds the same (in the writer). Same items and order as :func:`read`
    (one item per CSV/JSONL row). ``rows``: as in :func:`read`."""
    file = display or str(path)
    mapping = opts.mapping
    m: dict[str, Any] | None = None
    buf: list[tuple] = []
    for t in (iter_rows(path) if rows is None else rows):
        loc, row, err = t
        if m is None and not err:
            try:
                m = _resolve_columns(list(row.keys()), mapping, file)
            except MappingError as e:  # as read(): the rejects before it, this one, nothing after
                rows, rejects, chunks, n = build_batch((buf, file, mapping, opts, None))
                yield "built", (rows, rejects + [Reject(file, "file", str(e), "columns")], chunks, n + 1)
                return
        buf.append(t)
        if len(buf) >= batch:
            chunk = (buf, file, mapping, opts, m)
            yield ("raw", chunk) if m is not None and writer_builds() else ("built", build_batch(chunk))
            buf = []
    if buf:
        yield "built", build_batch((buf, file, mapping, opts, m))
