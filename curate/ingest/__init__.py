"""Ingestion: raw files → records (pending), rejects-with-reason, document chunks.

:func:`ingest_paths` walks the given files/folders, picks a reader per file
(``--kind`` or auto-detection, below), scrubs PII, assigns splits and writes
in batches of ``batch_size`` — each batch one transaction, so a crash loses at
most the batch in flight and a rerun (idempotent: ids are content hashes)
completes the job.

Auto-detection by extension and a peek at the content:

=====================  ===============================================
``.csv .tsv``           tickets
``.jsonl .ndjson``      chat files if the first object has ``messages``,
                        ``conversations`` or ``instruction``; transcripts
                        if it has ``original``/``turns``/``dialogue``/
                        ``utterances``; else tickets
``.json``               docs if the file is a *knowledge object*: a JSON
                        object whose top-level values are all objects or
                        lists of scalars — no list of records, no top-level
                        text field (ABCD ``guidelines.json``, ``kb.json``);
                        else transcripts if items have ``original``/``turns``
                        /``dialogue``/``utterances``; chat files if
                        ``messages``/``conversations``/``instruction``;
                        else tickets
``.vtt .srt``           transcripts
``.txt``                transcripts if ≥ 2 lines look like ``Speaker: …``, else docs
``.md .markdown .html`` docs
``.parquet .arrow``     dataset (:mod:`curate.ingest.tables`): rows with
``.feather``            ``messages`` / ``conversations`` /
                        ``instruction`` / ``prompt``+``completion`` are
                        chat items, others ticket rows (``text`` +
                        ``label`` …)
a saved ``datasets``    dataset (``dataset_info.json`` + ``state.json``,
folder                  or ``dataset_dict.json``): ``load_from_disk``
``hf://org/name[:split]`` dataset: ``datasets.load_dataset`` (network or
                        the HF cache)
=====================  ===============================================

Skipped when walking a folder: ``README*``, ``LICENSE*``, ``*.toml``, hidden
files, and the workspace folder itself; a saved ``datasets`` folder inside it is
read as one dataset (not file by file). A ``mapping.toml`` (or
``<stem>.mapping.toml``) beside a file is used as its mapping unless
``--mapping`` is given.
"""
from __future__ import annotations

import gc
import json
import os
import re
import time
import tomllib
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..example import Example
from ..store import Store, prepare_row
from .common import Chunk, ReadOptions, Reject
from .tables import HUB_PREFIX, SUFFIXES as TABLE_SUFFIXES, HubRef, is_saved_dataset

KINDS = ("tickets", "transcripts", "docs", "chat", "dataset")  # the readers (--kind); see _reader
SKIP_PREFIXES = ("readme", "license", "licence", "notice")
SPEAKER_LINE = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?[A-Za-z][\w .'-]{0,30}:\s+\S")


@dataclass
class FileReport:
    file: str
    kind: str
    read: int = 0
    added: int = 0
    already_present: int = 0
    rejected: int = 0
    chunks_added: int = 0
    chunks_present: int = 0


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)
    rejects_file: str | None = None

    def totals(self) -> dict[str, int]:
        keys = ("read", "added", "already_present", "rejected", "chunks_added", "chunks_present")
        return {k: sum(getattr(f, k) for f in self.files) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return {"totals": self.totals(), "files": [f.__dict__ for f in self.files], "rejects_file": self.rejects_file}


def load_mapping(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"mapping file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"mapping file {path}: invalid TOML: {e}") from None


def _peek_json_keys(path: Path) -> set[str]:
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            with open(path, "r", encoding="utf-8-sig", errors="replace") as f:
                for line in f:
                    if line.strip():
                        obj = json.loads(line)
                        return set(obj) if isinstance(obj, dict) else set()
            return set()
        with open(path, "r", encoding="utf-8-sig", errors="replace") as f:
            head = f.read(200_000)
        # cheap: key names appearing in the head
        return set(re.findall(r'"([A-Za-z_]+)"\s*:', head[:20000]))
    except (OSError, ValueError):
        return set()


def _is_knowledge_json(path: Path, max_bytes: int = 50_000_000) -> bool:
    """The docs-JSON rule (see the table above); files over ``max_bytes`` are not parsed."""
    from .docs import is_knowledge_json

    try:
        if path.stat().st_size > max_bytes:
            return False
        return is_knowledge_json(json.loads(path.read_bytes().decode("utf-8-sig")))
    except (OSError, ValueError):
        return False


def detect_kind(path: Path) -> str | None:
    if isinstance(path, HubRef):
        return "dataset"
    s = path.suffix.lower()
    if s in TABLE_SUFFIXES or is_saved_dataset(path):
        return "dataset"
    if s in (".csv", ".tsv"):
        return "tickets"
    if s in (".vtt", ".srt"):
        return "transcripts"
    if s in (".md", ".markdown", ".html", ".htm"):
        return "docs"
    if s in (".jsonl", ".ndjson", ".json"):
        if s == ".json" and _is_knowledge_json(path):
            return "docs"
        keys = _peek_json_keys(path)
        if keys & {"messages", "conversations", "instruction"}:
            return "chat"
        if keys & {"original", "turns", "dialogue", "utterances"}:
            return "transcripts"
        return "tickets"
    if s == ".txt":
        try:
            with open(path, "r", encoding="utf-8-sig", errors="replace") as f:
                lines = [next(f, "") for _ in range(40)]
        except OSError:
            return "docs"
        return "transcripts" if sum(bool(SPEAKER_LINE.match(ln)) for ln in lines) >= 2 else "docs"
    return None


def _reader(kind: str):
    from . import chatfiles, docs, tables, tickets, transcripts

    return {"tickets": tickets.read, "transcripts": transcripts.read, "docs": docs.read, "chat": chatfiles.read,
            "dataset": tables.read}[kind]


def walk(paths: Iterable[str | Path], workspace: Path | None = None) -> Iterator[Path]:
    """The files to read (and saved ``datasets`` folders, read whole; ``hf://…`` inputs as :class:`HubRef`)."""
    ws = workspace.resolve() if workspace else None
    for p in paths:
        if isinstance(p, str) and p.startswith(HUB_PREFIX):
            yield HubRef(p)
            continue
        p = Path(p)
        if p.is_dir() and not is_saved_dataset(p):
            datasets: list[Path] = []
            for q in sorted(p.rglob("*")):
                if datasets and any(d in q.parents for d in datasets):
                    continue  # inside a saved dataset folder: read as a whole
                rel = q.relative_to(p)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if ws and (ws == q.resolve() or ws in q.resolve().parents):
                    continue
                if q.is_dir():
                    if is_saved_dataset(q):
                        datasets.append(q)
                        yield q
                    continue
                if not q.is_file():
                    continue
                if q.name.lower().startswith(SKIP_PREFIXES) or q.suffix.lower() == ".toml":
                    continue
                yield q
        else:
            yield p


def _mapping_for(path: Path, explicit: dict[str, Any] | None) -> dict[str, Any]:
    if explicit or isinstance(path, HubRef):
        return explicit or {}
    for cand in (path.with_name(path.stem + ".mapping.toml"), path.with_name("mapping.toml")):
        if cand.exists():
            return load_mapping(cand)
    return {}


GC_EVERY_BATCHES = 10


class _GcPaused:
    """The cyclic garbage collector off while a bulk ingest runs, one full collection by hand every
    ``GC_EVERY_BATCHES`` batches (:meth:`tick`). A batch is ~10^5 live container objects (rows, their
    lists and dicts) that the automatic collector would traverse again and again as they age through
    its generations: ~1.5 us/row in the reader and ~3.5 us/row in the writer, measured. Rows form no
    reference cycles, so memory stays as flat as before; the manual collection bounds anything else."""

    def __init__(self) -> None:
        self.n = 0

    def __enter__(self) -> "_GcPaused":
        self.was = gc.isenabled()
        gc.disable()
        return self

    def tick(self) -> None:
        self.n += 1
        if self.n % GC_EVERY_BATCHES == 0:
            gc.collect()

    def __exit__(self, *exc: Any) -> None:
        if self.was:
            gc.enable()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _split(items: Iterable[Any]) -> tuple[list[list], list[Reject], list[Chunk], int]:
    rows: list[list] = []
    rejects: list[Reject] = []
    chunks: list[Chunk] = []
    n = 0
    for it in items:
        n += 1
        if isinstance(it, Example):
            rows.append(prepare_row(it))
        elif isinstance(it, Chunk):
            chunks.append(it)
        else:
            rejects.append(it)
    return rows, rejects, chunks, n


def _never() -> bool:
    return False


def _events(files: list[Path], kind: str | None, mapping: dict[str, Any] | None, opts: ReadOptions | None,
            batch_size: int, workers: int, pool_box: list, writer_builds: Any = None) -> Iterator[tuple]:
    """What the readers make of ``files``, in file order: ``("file", i, kind)`` when file ``i`` starts,
    then ``("batch", i, rows, rejects, chunks, n_items)`` of at most ``batch_size`` items each; examples
    are already :func:`~curate.store.prepare_row` rows. The same in one process or in a reader process.
    In a reader process (``writer_builds`` given), a batch of a row-per-example ticket file may come as
    ``("raw", i, chunk)`` instead: the writer builds it (:func:`~curate.ingest.tickets.read_shared`)."""
    from . import tables, tickets

    for i, path in enumerate(files):
        k = kind or detect_kind(path)
        yield ("file", i, k or "unknown")
        if k is None:
            what = "folder" if path.is_dir() else f"{path.suffix!r} files"
            items: Iterable[Any] = [Reject(str(path), "file", f"cannot detect the kind of {what}; pass --kind")]
        elif k != "dataset" and (isinstance(path, HubRef) or path.is_dir()):
            items = [Reject(str(path), "file", f"a dataset is read by the dataset reader, not {k!r}: leave --kind out "
                                               "or pass --kind dataset")]
        else:
            o = ReadOptions(**{**(opts.__dict__ if opts else {}), "mapping": _mapping_for(path, mapping)})
            if k == "dataset":  # row-per-example ticket tables: in batches, as CSV rows (fast path, work sharing)
                how, it = tables.plan(path, o)
                if how == "ticket-rows":
                    for what, x in tickets.read_shared(path, o, batch_size, writer_builds or _never, str(path), rows=it):
                        yield ("raw", i, x) if what == "raw" else ("batch", i, *x)
                    continue
            if (writer_builds is not None or workers <= 1) and k == "tickets" and tickets.can_read_parallel(path, o):
                for what, x in tickets.read_shared(path, o, batch_size, writer_builds or _never):
                    yield ("raw", i, x) if what == "raw" else ("batch", i, *x)
                continue
            if k == "dataset":
                items = it
            elif workers > 1 and k == "tickets" and tickets.can_read_parallel(path, o):
                if not pool_box:
                    import multiprocessing as mp

                    pool_box.append(mp.get_context("fork").Pool(workers, initializer=tickets._worker_init))
                items = tickets.read_parallel(path, o, pool_box[0], chunk=batch_size, in_flight=2 * workers)
            else:
                items = _reader(k)(path, o)
        buf: list[Any] = []
        for it in items:
            buf.append(it)
            if len(buf) >= batch_size:
                yield ("batch", i, *_split(buf))
                buf = []
        if buf:
            yield ("batch", i, *_split(buf))


class _Balance:
    """Reader-process side of the work sharing: a batch goes to the writer (raw rows, which it
    turns into examples itself) when, so far, the writer has waited for batches longer than the
    reader has waited for the writer. ``writer_wait`` is shared memory the writer adds its waits to.
    The very first batch always goes raw: the writer starts building it after the CSV parse of one
    batch instead of idling until the reader has built it (~0.15 s of a 100k-row ingest)."""

    def __init__(self, writer_wait: Any):
        self.writer_wait = writer_wait
        self.reader_wait = 0.0
        self.first = True

    def __call__(self) -> bool:
        if self.first:
            self.first = False
            return True
        return self.writer_wait.value > self.reader_wait


PIPE_DEPTH = 2  # batches the reader process may have sent that the writer has not taken yet
_MEMFD = hasattr(os, "memfd_create")


class _Sender:
    """Reader side of the reader → writer channel (a socket pair). Each pickled event travels in a
    memfd (an anonymous in-memory file; its descriptor is passed with SCM_RIGHTS) and the writer acks
    each one it takes, so up to ``PIPE_DEPTH`` batches wait for the writer: the reader runs that far
    ahead instead of stalling on a pipe buffer that holds a fraction of one batch, which smooths out
    the two sides' uneven batch times. The kernel frees a memfd once neither process holds it (also
    after a kill -9). Without ``os.memfd_create``: the bytes go through the socket, one at a time."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.inflight = 0

    def send(self, data: bytes) -> float:
        """Send one event; returns the seconds spent waiting for the writer to take an earlier one."""
        if not _MEMFD:
            t = time.perf_counter()
            self.conn.send_bytes(data)
            return time.perf_counter() - t
        from multiprocessing.reduction import send_handle

        waited = 0.0
        if self.inflight >= PIPE_DEPTH:
            t = time.perf_counter()
            self.conn.recv_bytes()  # one ack: the writer took the oldest event in flight
            waited = time.perf_counter() - t
            self.inflight -= 1
        fd = os.memfd_create("curate-ingest-batch", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            send_handle(self.conn, fd, 0)
        finally:
            os.close(fd)
        self.inflight += 1
        return waited


def _receive(conn: Any) -> bytes:
    """Writer side of :class:`_Sender`: the next event's bytes (``EOFError`` when the reader is gone)."""
    if not _MEMFD:
        return conn.recv_bytes()
    from multiprocessing.reduction import recv_handle

    try:
        fd = recv_handle(conn)
    except (OSError, RuntimeError):  # the socket closed: no more messages
        raise EOFError from None
    try:
        size = os.fstat(fd).st_size
        parts, off = [], 0
        while off < size:
            b = os.pread(fd, size - off, off)
            if not b:
                break
            parts.append(b)
            off += len(b)
    finally:
        os.close(fd)
    try:
        conn.send_bytes(b"a")
    except OSError:
        pass  # the reader is gone after its last message
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _reader_main(conn: Any, args: tuple) -> None:
    """The reader process: runs :func:`_events` and sends each event, pickled, to the writer."""
    import pickle
    import traceback

    from .tickets import _worker_init

    _worker_init()  # dies with the writer (a SIGKILLed ingest leaves no reader behind)
    args, writer_wait = args[:-1], args[-1]
    balance = _Balance(writer_wait)
    chan = _Sender(conn)
    try:
        with _GcPaused() as gcp:
            for ev in _events(*args, writer_builds=balance):
                data = pickle.dumps(ev, protocol=pickle.HIGHEST_PROTOCOL)
                del ev
                balance.reader_wait += chan.send(data)
                del data
                gcp.tick()
        chan.send(pickle.dumps(("done",)))
    except BrokenPipeError:
        pass  # the writer is gone
    except BaseException as e:  # hand the error to the writer, which raises it as the serial path would
        try:
            msg = pickle.dumps(("raise", e))
        except Exception:
            msg = pickle.dumps(("error", traceback.format_exc()))
        try:
            chan.send(msg)
        except OSError:
            pass
    finally:
        conn.close()


def _piped_events(args: tuple) -> Iterator[tuple]:
    """:func:`_events` run by a reader process (fork) while this process writes: parsing, PII
    scrubbing, validation and hashing of the next batches overlap the SQLite work of this one. At
    most ``PIPE_DEPTH`` batches wait for this process (:class:`_Sender`), so memory stays flat."""
    import multiprocessing as mp
    import pickle

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=True)  # a socket pair: descriptors can travel over it (_Sender)
    writer_wait = ctx.Value("d", 0.0, lock=False)  # seconds this process waited for batches (see _Balance)
    proc = ctx.Process(target=_reader_main, args=(send, (*args, writer_wait)), name="curate-ingest-reader",
                       daemon=True)
    proc.start()
    send.close()
    clock = time.perf_counter
    started = False  # the wait for the first batch says nothing about the balance: not counted
    try:
        while True:
            try:
                t = clock()
                data = _receive(recv)
                if started:
                    writer_wait.value += clock() - t
                ev = pickle.loads(data)
                started = started or ev[0] != "file"
            except EOFError:
                proc.join(5)
                raise RuntimeError(f"the ingest reader process died (exit code {proc.exitcode}); "
                                   "rerun the ingest (it is idempotent) or pass --workers 0") from None
            if ev[0] == "done":
                return
            if ev[0] == "raise":
                raise ev[1]
            if ev[0] == "error":
                raise RuntimeError(f"the ingest reader process failed:\n{ev[1]}")
            yield ev
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
        proc.join()


# deferring the secondary indexes pays when the load at least doubles the store (docs/curate.md)
DEFER_INDEXES_MIN_BYTES = 16_000_000


def _input_bytes(path: Path) -> int:
    """Bytes of an input: a file, a saved dataset folder (its files), a hub dataset (0: unknown before loading)."""
    if isinstance(path, HubRef):
        return 0
    if path.is_dir():
        return sum(q.stat().st_size for q in path.rglob("*") if q.is_file())
    return path.stat().st_size


# long: the ingest driver (walk, detect, read in workers, write, rejects, resume); to be split into steps
def ingest_paths(
    store: Store,
    paths: Iterable[str | Path],
    kind: str | None = None,
    mapping: dict[str, Any] | None = None,
    batch_size: int = 10000,
    progress: bool = False,
    opts: ReadOptions | None = None,
    workers: int = 1,
    defer_indexes: bool | None = None,
) -> IngestReport:
    """Ingest files/folders into ``store``; returns per-file counts.

    Nothing is silently dropped: every item a reader yields is added, counted as
    already present, or recorded as a reject (store table + rejects JSONL).

    ``workers``: ``0`` reads, parses and writes in this process; ``1`` (default, on a
    machine with 2+ cores) has one reader process parse the files while this process
    writes the batches; ``N > 1``: row-per-example ticket files (CSV/TSV/JSONL without a
    ``[thread]`` mapping) are turned into examples by a pool of N processes. In every
    case this process writes every batch in file order, one transaction each, so the
    records, splits and crash behaviour are the same.

    ``defer_indexes``: drop the secondary indexes of ``records`` during the load and build
    them at the end (:meth:`Store.deferred_indexes`); default: when the input files are
    at least ``DEFER_INDEXES_MIN_BYTES`` and at least as big as the store file.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 (one process), 1 (a reader process) or more (a pool), got {workers}")
    report = IngestReport()
    rejects_path = store.workspace / "rejects" / f"ingest-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    rej_f = None
    files = list(walk(paths, store.workspace))
    missing = [str(p) for p in files if not isinstance(p, HubRef) and not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    if defer_indexes is None:
        size = sum(_input_bytes(p) for p in files)
        try:
            store_size = store.path.stat().st_size
        except OSError:
            store_size = 0
        defer_indexes = size >= DEFER_INDEXES_MIN_BYTES and size >= store_size
    pool_box: list = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit=" rows", desc="ingest", dynamic_ncols=True)
    args = (files, kind, mapping, opts, batch_size, workers, pool_box)
    piped = workers == 1 and _cores() >= 2 and bool(files)
    events = _piped_events(args) if piped else _events(*args)
    deferred = store.deferred_indexes() if defer_indexes else nullcontext()
    try:
        with deferred, _GcPaused() as gcp:
            fr = None
            for ev in events:
                gcp.tick()
                if ev[0] == "file":
                    fr = FileReport(file=str(files[ev[1]]), kind=ev[2])
                    report.files.append(fr)
                    continue
                if ev[0] == "raw":  # a batch the reader process left to this one (work sharing)
                    from .tickets import build_batch

                    rows, rj_buf, ch_buf, n = build_batch(ev[2])
                else:
                    _, _, rows, rj_buf, ch_buf, n = ev
                # one transaction per batch: records, chunks and rejects land together or not at all
                with store.tx():
                    if rows:
                        added, present = store.add_rows(rows)
                    if ch_buf:
                        a, p = store.add_chunks([c.to_dict() for c in ch_buf])
                    if rj_buf:
                        store.add_rejects([r.to_dict() for r in rj_buf])
                fr.read += n
                fr.rejected += len(rj_buf)
                if rows:
                    fr.added += len(added)
                    fr.already_present += len(present)
                if ch_buf:
                    fr.chunks_added += a
                    fr.chunks_present += p
                if rj_buf:
                    if rej_f is None:
                        rejects_path.parent.mkdir(parents=True, exist_ok=True)
                        rej_f = open(rejects_path, "a", encoding="utf-8")
                        report.rejects_file = str(rejects_path)
                    for r in rj_buf:
                        rej_f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
                    rej_f.flush()
                if bar is not None:
                    bar.update(n)
    finally:
        if piped:
            events.close()
        if pool_box:
            pool_box[0].terminate()
            pool_box[0].join()
        if rej_f is not None:
            rej_f.close()
        if bar is not None:
            bar.close()
    return report
