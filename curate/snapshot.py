"""Immutable snapshots: ``<workspace>/snapshots/<name>/{train,heldout}.parquet + manifest.json``.

A snapshot holds the approved records that pass the gates (:mod:`curate.gates`).
Creating an existing name fails; files are written read-only; the manifest
records the sha256 and row count of each Parquet file and the store keeps the
sha256 of the manifest itself, so :func:`verify` fails on any changed byte.
Both Parquet files load with ``polars.read_parquet`` and
``datasets.load_dataset("parquet", data_files=…)``; ``messages`` is a list of
``{role, content}`` structs, ``origin``/``signals``/``source`` are JSON strings.
:func:`export` writes a snapshot as OpenAI JSONL, ShareGPT JSONL or a ``datasets`` folder (and pushes it
to the Hugging Face Hub).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .example import Example
from .gates import blocked
from .store import Store

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FILES = ("train.parquet", "heldout.parquet")


class SnapshotError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    try:
        here = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("workbench")
    except PackageNotFoundError:
        return "unknown"


def snapshots_dir(store: Store) -> Path:
    d = store.workspace / "snapshots"
    d.mkdir(exist_ok=True)
    return d


def _rows(examples: list[Example]) -> list[dict[str, Any]]:
    return [
        {
            "id": e.id,
            "messages": e.messages,
            "label": e.label,
            "group": e.group,
            "split": e.split,
            "source_kind": e.source.kind,
            "source": json.dumps(e.source.__dict__, ensure_ascii=False),
            "origin": json.dumps(e.origin, ensure_ascii=False),
            "signals": json.dumps(e.signals, ensure_ascii=False),
            "parent_id": e.parent_id,
            "status": e.status,
        }
        for e in examples
    ]


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import polars as pl

    schema = {
        "id": pl.Utf8, "messages": pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8})), "label": pl.Utf8,
        "group": pl.Utf8, "split": pl.Utf8, "source_kind": pl.Utf8, "source": pl.Utf8, "origin": pl.Utf8,
        "signals": pl.Utf8, "parent_id": pl.Utf8, "status": pl.Utf8,
    }
    pl.DataFrame(rows, schema=schema).write_parquet(path, compression="zstd", statistics=False)


def create(store: Store, name: str, *, parent: str | None = None, note: str = "") -> dict[str, Any]:
    if not NAME_RE.match(name):
        raise SnapshotError(f"invalid snapshot name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    root = snapshots_dir(store)
    d = root / name
    if d.exists():
        raise SnapshotError(f"snapshot {name!r} already exists at {d}; snapshots are immutable — pick a new name")
    approved = list(store.iter_records({"status": "approved"}))
    if not approved:
        raise SnapshotError("no approved records: review some first (python -m curate review approve …)")
    gate = blocked(store, approved)
    keep = [e for e in approved if e.id not in gate]
    train = [e for e in keep if e.split == "train"]
    held = [e for e in keep if e.split == "heldout"]
    if not train:
        raise SnapshotError("no approved train-split records pass the gates; nothing to snapshot")
    if parent is None:
        existing = list_snapshots(store)
        parent = existing[-1]["name"] if existing else None
    tmp = root / f".{name}.tmp-{os.getpid()}"
    tmp.mkdir()
    _write_parquet(_rows(train), tmp / "train.parquet")
    _write_parquet(_rows(held), tmp / "heldout.parquet")
    ev_counts: Counter = Counter()
    reviewers: Counter = Counter()
    frontends: Counter = Counter()
    for e in keep:
        for ev in store.events(e.id):
            ev_counts[ev["action"]] += 1
            reviewers[ev["reviewer"]] += 1
            frontends[ev["frontend"]] += 1
    gate_reasons = Counter(r.split(" ")[0] for r in gate.values())
    reports = {k: v for k, v in (("dedup", store.meta_get("dedup_report_path")), ("leakage", store.meta_get("leakage_report_path"))) if v}
    manifest = {
        "name": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {f: {"sha256": sha256_file(tmp / f), "rows": n} for f, n in (("train.parquet", len(train)), ("heldout.parquet", len(held)))},
        "counts": {
            "records": len(keep),
            "by_split": dict(Counter(e.split for e in keep)),
            "by_source_kind": dict(Counter(e.source.kind for e in keep)),
            "by_origin": dict(Counter(e.origin.get("kind", "human") for e in keep)),
            "by_label": dict(sorted(Counter(e.label or "none" for e in keep).items())),
        },
        "review": {"events_by_action": dict(ev_counts), "events_by_reviewer": dict(reviewers), "events_by_frontend": dict(frontends)},
        "gates": {"blocked": len(gate), "blocked_by_reason": dict(gate_reasons), "reports": reports,
                  "blocked_ids": sorted(gate)[:1000]},
        "config": store.config.__dict__ | {"labelers": sorted(store.config.labelers)} | {"argilla": {}},
        "code_version": code_version(),
        "parent": parent,
        "note": note,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for f in (*FILES, "manifest.json"):
        os.chmod(tmp / f, 0o444)
    os.rename(tmp, d)
    store.meta_put(f"snapshot:{name}", {"manifest_sha256": sha256_file(d / "manifest.json"), "created_at": manifest["created_at"]})
    return manifest


def list_snapshots(store: Store) -> list[dict[str, Any]]:
    out = []
    for d in snapshots_dir(store).iterdir():
        m = d / "manifest.json"
        if d.is_dir() and not d.name.startswith(".") and m.exists():
            man = json.loads(m.read_text(encoding="utf-8"))
            out.append({"name": d.name, "created_at": man.get("created_at"), "train": man["files"]["train.parquet"]["rows"],
                        "heldout": man["files"]["heldout.parquet"]["rows"], "parent": man.get("parent")})
    return sorted(out, key=lambda x: (x["created_at"] or "", x["name"]))


def show(store: Store, name: str) -> dict[str, Any]:
    m = snapshots_dir(store) / name / "manifest.json"
    if not m.exists():
        raise SnapshotError(f"no snapshot named {name!r} in {snapshots_dir(store)} (have: {[s['name'] for s in list_snapshots(store)]})")
    return json.loads(m.read_text(encoding="utf-8"))


def verify_dir(d: Path, expected_manifest_sha: str | None = None) -> list[str]:
    """Problems found in a snapshot folder (empty list = intact)."""
    problems: list[str] = []
    m = d / "manifest.json"
    if not m.exists():
        return [f"{m} is missing"]
    if expected_manifest_sha and sha256_file(m) != expected_manifest_sha:
        problems.append("manifest.json changed since the snapshot was created")
    try:
        man = json.loads(m.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return [f"manifest.json is not valid JSON: {e}"]
    for f in FILES:
        p = d / f
        if not p.exists():
            problems.append(f"{f} is missing")
            continue
        want = man.get("files", {}).get(f, {}).get("sha256")
        got = sha256_file(p)
        if got != want:
            problems.append(f"{f} sha256 {got[:12]}… does not match the manifest's {str(want)[:12]}…")
    if not problems:
        for f in FILES:
            bad = sum(r["status"] != "approved" for r in read_rows(d / f, columns=["status"]))
            if bad:
                problems.append(f"{f} holds {bad} record(s) that are not approved")
    return problems


def verify(store: Store, name: str) -> list[str]:
    d = snapshots_dir(store) / name
    if not d.exists():
        raise SnapshotError(f"no snapshot named {name!r} in {snapshots_dir(store)}")
    reg = store.meta_get(f"snapshot:{name}") or {}
    return verify_dir(d, reg.get("manifest_sha256"))


def read_rows(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a snapshot parquet file as dicts: polars when installed, else pyarrow (training machines,
    e.g. a GPU image, often have pyarrow but not polars)."""
    try:
        import polars as pl
    except ImportError:
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=columns).to_pylist()
    return pl.read_parquet(path, columns=columns).to_dicts()


def load(store_or_dir: Store | Path, name: str | None = None, split: str = "train") -> list[dict[str, Any]]:
    """Verified rows of one split (``messages`` as a list of dicts)."""
    if isinstance(store_or_dir, Store):
        problems = verify(store_or_dir, name)
        d = snapshots_dir(store_or_dir) / name
    else:
        d = Path(store_or_dir)
        problems = verify_dir(d)
    if problems:
        raise SnapshotError(f"snapshot {d.name} failed verification: " + "; ".join(problems))
    return read_rows(d / f"{split}.parquet")


def diff(store: Store, a: str, b: str) -> dict[str, Any]:
    import polars as pl

    out: dict[str, Any] = {"a": a, "b": b}
    for f in FILES:
        ids = []
        for n in (a, b):
            p = snapshots_dir(store) / n / f
            if not p.exists():
                raise SnapshotError(f"no snapshot named {n!r}")
            ids.append(set(pl.read_parquet(p, columns=["id"])["id"].to_list()))
        split = f.split(".")[0]
        out[split] = {"added": sorted(ids[1] - ids[0]), "removed": sorted(ids[0] - ids[1]), "kept": len(ids[0] & ids[1])}
    out["summary"] = {s: {"added": len(out[s]["added"]), "removed": len(out[s]["removed"]), "kept": out[s]["kept"]} for s in ("train", "heldout")}
    return out


# -- export ---------------------------------------------------------------------------------------------
EXPORT_FORMATS = ("openai-jsonl", "sharegpt", "hf-dataset")
EXPORT_SPLITS = ("train", "heldout", "all")
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def _export_line(row: dict[str, Any], fmt: str, split: str, messages_only: bool) -> dict[str, Any]:
    """One JSONL object: OpenAI ``messages`` or ShareGPT ``conversations`` (+ id, label, split unless
    ``messages_only``) — what :mod:`curate.ingest.chatfiles` reads back (same content, so the same ids)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    if fmt == "sharegpt":
        obj: dict[str, Any] = {"conversations": [{"from": SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in msgs]}
    else:
        obj = {"messages": msgs}
    if not messages_only:
        obj["id"] = row["id"]
        if row.get("label") is not None:
            obj["label"] = row["label"]
        obj["split"] = split
    return obj


def _hub_token() -> str | None:
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return get_token()


def _hf_dataset(tables: dict[str, Any]) -> Any:
    import datasets

    built = {s: datasets.Dataset(t, split=s) for s, t in tables.items()}
    return datasets.DatasetDict(built) if len(built) > 1 else next(iter(built.values()))


def export(store: Store, name: str, fmt: str, out: Path | str | None, *, split: str = "all",
           push_to_hub: str | None = None, private: bool = True, messages_only: bool = False) -> dict[str, Any]:
    """Write snapshot ``name`` (verified first) in another format; returns what was written.

    * ``openai-jsonl`` / ``sharegpt``: JSONL. ``out`` ending in ``.jsonl`` is one file (the chosen
      split(s), each line names its ``split``); otherwise a folder of ``<split>.jsonl``.
    * ``hf-dataset``: ``datasets`` ``save_to_disk`` folder (a ``DatasetDict`` of train + heldout for
      ``split="all"``, else one ``Dataset``); the snapshot's columns as they are.

    ``push_to_hub="org/name"`` also pushes the same ``datasets`` object with ``push_to_hub`` (private unless
    ``private=False``): needs a token (``HF_TOKEN`` or a saved ``hf auth login``) and the network.
    """
    if fmt not in EXPORT_FORMATS:
        raise SnapshotError(f"unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}")
    if split not in EXPORT_SPLITS:
        raise SnapshotError(f"unknown split {split!r}; expected one of {EXPORT_SPLITS}")
    if out is None and not push_to_hub:
        raise SnapshotError("nothing to do: give --out PATH and/or --push-to-hub org/name")
    token = None
    if push_to_hub:
        if not HUB_REPO_RE.match(push_to_hub):
            raise SnapshotError(f"--push-to-hub wants org/name, got {push_to_hub!r}")
        token = _hub_token()
        if not token:
            raise SnapshotError(f"pushing to {push_to_hub} needs a Hugging Face token with write access: set HF_TOKEN "
                                "(https://huggingface.co/settings/tokens) or run `hf auth login`; nothing was written")
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise SnapshotError(f"pushing to {push_to_hub} needs the network, but HF_HUB_OFFLINE is set; nothing was written")
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SnapshotError(f"{out} already exists; exports do not overwrite — pick a new --out")
    d = snapshots_dir(store) / name
    if not d.exists():
        raise SnapshotError(f"no snapshot named {name!r} in {snapshots_dir(store)} (have: {[s['name'] for s in list_snapshots(store)]})")
    problems = verify(store, name)
    if problems:
        raise SnapshotError(f"snapshot {name} failed verification: " + "; ".join(problems))
    splits = ("train", "heldout") if split == "all" else (split,)
    import pyarrow.parquet as pq

    tables = {s: pq.read_table(d / f"{s}.parquet") for s in splits}
    result: dict[str, Any] = {"name": name, "format": fmt, "split": split,
                              "rows": {s: t.num_rows for s, t in tables.items()}, "files": [], "pushed": None}
    ds = None
    if out is not None:
        if fmt == "hf-dataset":
            ds = _hf_dataset(tables)
            ds.save_to_disk(str(out))
            result["files"] = [str(out)]
        else:
            targets = [(out, splits)] if out.suffix.lower() == ".jsonl" else [(out / f"{s}.jsonl", (s,)) for s in splits]
            for path, ss in targets:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                with open(tmp, "w", encoding="utf-8") as f:
                    for s in ss:
                        for row in tables[s].to_pylist():
                            f.write(json.dumps(_export_line(row, fmt, s, messages_only), ensure_ascii=False) + "\n")
                os.replace(tmp, path)
                result["files"].append(str(path))
    if push_to_hub:
        ds = ds if ds is not None else _hf_dataset(tables)
        try:
            ds.push_to_hub(push_to_hub, token=token, private=private,
                           commit_message=f"workbench snapshot {name} ({split})")
        except Exception as e:  # network, permissions, a missing org: one message, no traceback
            why = (str(e).strip().splitlines() or [""])[0][:300]
            raise SnapshotError(f"push to {push_to_hub} failed: {type(e).__name__}: {why}") from None
        result["pushed"] = f"https://huggingface.co/datasets/{push_to_hub}"
    return result
