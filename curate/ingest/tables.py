"""Datasets → examples: Parquet and Arrow/Feather files, a saved ``datasets`` folder, ``hf://org/name[:split]``.

* ``x.parquet`` — pyarrow, 10000 rows at a time;
* ``x.arrow`` / ``x.feather`` — Arrow IPC, file or stream format (as ``datasets`` writes it), or Feather v1;
* a folder with ``dataset_info.json`` + ``state.json`` (or ``dataset_dict.json``) — ``datasets.load_from_disk``:
  a ``Dataset``, or a ``DatasetDict`` read split by split (``loc`` = ``train row 3``);
* ``hf://org/name[:split]`` — ``datasets.load_dataset("org/name", split=…)`` (every split without one): the
  network, or the HF cache without one.

Rows become records the way the other readers map them, by the table's columns:

* a ``messages`` (OpenAI turns), ``conversations`` (ShareGPT), ``instruction``
  (Alpaca) or ``prompt`` + ``completion`` column: each row is a chat item
  (:mod:`curate.ingest.chatfiles`; ``label`` and ``id`` columns are kept);
* otherwise a row is a ticket row (:mod:`curate.ingest.tickets`): the
  mapping's ``[columns]`` / ``[thread]``, else the guessed columns — BANKING77's
  ``text`` + ``label`` become user + assistant, the label kept as the label.
  A mapping with ``[columns]`` or ``[thread]`` always means ticket rows.

``ClassLabel`` columns (integers with names, as ``datasets`` stores labels; also read
from a Parquet/Arrow file's ``huggingface`` schema metadata) are turned into their names.
``loc`` is ``row N`` (0-based, the dataset's own index). Bad rows are rejects as in
the other readers; a file that cannot be read is one reject; a hub dataset that cannot
be loaded stops the ingest with one error naming the id and the HF cache
(:class:`SourceUnavailable`).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .common import ReadOptions, Reject

HUB_PREFIX = "hf://"
SUFFIXES = (".parquet", ".arrow", ".feather")
BATCH_ROWS = 10_000


class HubRef(str):
    """An ``hf://org/name[:split]`` input (kept as a string: a ``Path`` would fold the ``//``)."""

    @property
    def repo_split(self) -> tuple[str, str | None]:
        ref = self[len(HUB_PREFIX):].strip("/")
        repo, _, split = ref.partition(":")
        return repo, (split or None)


class SourceUnavailable(ValueError):
    """A hub dataset that ``datasets`` could not load (no network and not in the cache, unknown id/split)."""


class TableError(Exception):
    """A local dataset file/folder that cannot be read: becomes one reject."""


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return path.is_dir() and (((path / "dataset_info.json").is_file() and (path / "state.json").is_file())
                              or (path / "dataset_dict.json").is_file())


# -- opening: (columns, ClassLabel names, batches) ------------------------------------
def _hf_names(schema: Any) -> dict[str, list[str]]:
    """ClassLabel names from an Arrow schema's ``huggingface`` metadata (what ``datasets`` writes)."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    try:
        feats = (json.loads(meta).get("info") or {}).get("features") or {}
    except (ValueError, AttributeError):
        return {}
    return {c: list(f["names"]) for c, f in feats.items()
            if isinstance(f, dict) and f.get("_type") == "ClassLabel" and isinstance(f.get("names"), list)}


def _parquet(path: Path) -> tuple[list[str], dict, Iterator]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise TableError(f"cannot read Parquet file: {e}") from None
    schema = pf.schema_arrow
    return schema.names, _hf_names(schema), (("", b) for b in pf.iter_batches(batch_size=BATCH_ROWS))


def _arrow(path: Path) -> tuple[list[str], dict, Iterator]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        src = pa.memory_map(str(path))
    except OSError as e:
        raise TableError(f"cannot read file: {e}") from None
    for opener in (ipc.open_file, ipc.open_stream):
        try:
            reader = opener(src)
        except (pa.ArrowInvalid, OSError):
            src.seek(0)
            continue
        if opener is ipc.open_file:
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        return reader.schema.names, _hf_names(reader.schema), (("", b) for b in batches)
    try:  # Feather v1
        import pyarrow.feather as feather

        table = feather.read_table(str(path))
    except Exception as e:
        raise TableError(f"cannot read Arrow/Feather file: {e}") from None
    return table.schema.names, _hf_names(table.schema), (("", b) for b in table.to_batches(BATCH_ROWS))


def _hf(ds: Any) -> tuple[list[str], dict, Iterator]:
    """A ``datasets`` Dataset or DatasetDict (every split, ``loc`` prefixed with its name)."""
    import datasets

    parts = list(ds.items()) if isinstance(ds, datasets.DatasetDict) else [("", ds)]
    cols: list[str] = []
    names: dict[str, list[str]] = {}
    for _, d in parts:
        cols += [c for c in d.column_names if c not in cols]
        names.update({c: list(f.names) for c, f in d.features.items() if isinstance(f, datasets.ClassLabel)})

    def batches() -> Iterator:
        for split, d in parts:
            for b in d.with_format("arrow").iter(batch_size=BATCH_ROWS):
                yield (f"{split} " if split else ""), b

    return cols, names, batches()


def _saved(path: Path) -> tuple[list[str], dict, Iterator]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise TableError(f"cannot load the saved dataset (datasets.load_from_disk): {e}") from None
    return _hf(ds)


def hub_cache() -> str:
    try:
        import datasets.config
        from huggingface_hub import constants

        return f"{constants.HF_HUB_CACHE} (hub files), {datasets.config.HF_DATASETS_CACHE} (prepared datasets)"
    except ImportError:
        return "~/.cache/huggingface"


@contextmanager
def _hub_access() -> Iterator[str]:
    """How ``datasets`` may reach the Hub, as words for the error message. Offline mode is used as set; without
    it, a host that cannot be reached (one 5 s connect) turns offline mode on for the call: a cached copy loads
    at once and a missing one fails at once, instead of ~25 s of retries."""
    import socket
    from urllib.parse import urlparse

    import datasets.config
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE:
        yield "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): only the cache is read"
        return
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError:
        saved = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
        constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
        try:
            yield f"no network ({url.hostname} cannot be reached): only the cache is read"
        finally:
            constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved
        return
    yield "online"


def _hub(ref: HubRef) -> tuple[list[str], dict, Iterator]:
    repo, split = ref.repo_split
    if not repo or repo.count("/") > 1:
        raise SourceUnavailable(f"{ref}: expected hf://org/name or hf://org/name:split")
    import datasets

    with _hub_access() as access:
        try:
            ds = datasets.load_dataset(repo, split=split)
        except Exception as e:  # network errors, unknown ids/splits, offline without a cached copy: all one message
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SourceUnavailable(
                f"cannot load hf://{repo}{':' + split if split else ''} with datasets.load_dataset; {access} "
                f"({type(e).__name__}: {why[:300]}). It needs the network or a copy in the HF cache: {hub_cache()} "
                "(HF_HOME moves it). Otherwise download it where a network exists (save_to_disk or to_parquet) and "
                "ingest that folder or file.") from None
    return _hf(ds)


def _rows(batches: Iterable, names: dict[str, list[str]], chat: bool) -> Iterator[tuple[str, Any, str | None]]:
    """``(loc, row, error)`` as the other row readers give them; ClassLabel ints become their names. A batch that
    cannot be read (a damaged file) ends the table with one error naming where."""
    counts: dict[str, int] = {}
    batches = iter(batches)
    while True:
        try:
            prefix, batch = next(batches)
        except StopIteration:
            break
        except Exception as e:  # pyarrow: ArrowInvalid / OSError on a damaged page
            yield f"{prefix}row {counts.get(prefix, 0)}", None, f"cannot read the table from this row on: {e}"
            return
        i = counts.get(prefix, 0)
        for row in batch.to_pylist():
            for col, labels in names.items():
                v = row.get(col)
                if v.__class__ is int:
                    row[col] = labels[v] if 0 <= v < len(labels) else None  # -1: no label (datasets' convention)
            if chat and row.get("label") is not None and not isinstance(row["label"], str):
                row["label"] = str(row["label"])
            yield f"{prefix}row {i}", row, None
            i += 1
        counts[prefix] = i
    if not sum(counts.values()):
        yield "file", None, "empty dataset: no rows"


def open_table(path: Any) -> tuple[list[str], dict, Iterator]:
    """``(columns, ClassLabel names, batches)`` of any input this module reads; :class:`TableError` (local) or
    :class:`SourceUnavailable` (hub) when it cannot be read."""
    if isinstance(path, HubRef):
        return _hub(path)
    path = Path(path)
    if path.is_dir():
        if not is_saved_dataset(path):
            raise TableError("not a saved datasets folder (no dataset_info.json + state.json or dataset_dict.json)")
        return _saved(path)
    s = path.suffix.lower()
    if s == ".parquet":
        return _parquet(path)
    if s in (".arrow", ".feather"):
        return _arrow(path)
    raise TableError(f"unsupported dataset format {s!r} (use .parquet, .arrow, .feather, a saved datasets folder "
                     "or hf://org/name[:split])")


def plan(path: Any, opts: ReadOptions, display: str | None = None) -> tuple[str, Iterator]:
    """How to read ``path``: ``("ticket-rows", (loc, row, error) rows)`` for a row-per-example ticket table
    (:func:`curate.ingest.tickets.read_shared` builds them in batches, as for a CSV), else ``("items", …)``:
    the examples and rejects themselves."""
    from . import chatfiles, tickets

    file = display or str(path)
    try:
        cols, names, batches = open_table(path)
    except TableError as e:
        return "items", iter([Reject(file, "file", str(e), "file")])
    mapping = opts.mapping
    chat = not ({"columns", "thread"} & set(mapping)) and chatfiles.is_chat_item(cols)
    rows = _rows(batches, names, chat)
    if chat:
        return "items", chatfiles.read_items(rows, file, opts)
    if "thread" in mapping:
        return "items", tickets.read(path, opts, file, rows=rows)
    return "ticket-rows", rows


def read(path: Any, opts: ReadOptions, display: str | None = None) -> Iterator[Any]:
    from . import tickets

    how, it = plan(path, opts, display)
    if how == "items":
        yield from it
    else:
        file = display or str(path)
        yield from tickets.read(path, opts, file, rows=it)
