"""External eval files (``python -m evaluate --run R --eval FILE``): reading them, and the leakage clearance.

Reading: the files ``curate leakage --against`` reads, through its own reader
(:func:`curate.leakage.read_eval_file`, so the prompts scored are the texts the
leakage check compared), plus each row's reference:

* chat JSONL / Parquet ``messages``: the prompt is every turn before the last
  assistant turn, the reference is that turn;
* a text column (``--text-column``, default ``text``): the prompt is one user
  turn, the reference is ``--reference-column`` (default: the first of
  :data:`REFERENCE_COLUMNS` the row has).

An item is a label item when the row has a ``label`` equal to its reference, or
its reference is one of the snapshot's train labels; the file is a closed label
task when every item is.  Item ids are the row's place in the file (line number,
``row N`` for Parquet), so two runs scoring the same file share ids.

Clearance: a file may be scored only when a ``curate leakage`` report in the
workspace's ``reports/`` folder read it and found none of the snapshot's train
records leaking into it.  The report must be the one that gated the snapshot
(``manifest.json`` → ``gates.reports.leakage``) or one made after the snapshot
(a later ``curate leakage --against FILE`` checks the store's train split, which
still holds every record of the snapshot).  The file must be the one that was
read: same sha256 when the report records it, else not modified after the report.
"""
from __future__ import annotations

import calendar
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REFERENCE_COLUMNS = ("label", "reference", "answer", "output", "completion", "category", "intent")


@dataclass
class Item:
    id: str
    prompt: list[dict[str, str]]
    reference: str
    label: str | None = None


@dataclass
class EvalSet:
    """One scored set: the snapshot's held-out split, or one external file."""
    name: str  # "heldout", or the file path as given
    items: list[Item]
    path: str | None = None
    sha256: str | None = None
    leakage_report: str | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return bool(self.items) and all(i.label and i.reference.strip() == i.label for i in self.items)


def _raw_rows(p: Path) -> dict[str, dict[str, Any]]:
    """Rows by the location ``curate leakage`` gives them (JSONL line, CSV line, ``row N``)."""
    suf = p.suffix.lower()
    out: dict[str, dict[str, Any]] = {}
    if suf in (".jsonl", ".ndjson"):
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    obj = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    obj = None
                if isinstance(obj, dict):
                    out[str(n)] = obj
    elif suf in (".csv", ".tsv"):
        with p.open(encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f, delimiter="\t" if suf == ".tsv" else ","), 2):
                out[str(n)] = row
    elif suf == ".parquet":
        from curate.snapshot import read_rows

        out = {f"row {n}": r for n, r in enumerate(read_rows(p), 1)}
    return out


def load_eval_set(path: str, text_column: str | None = None, reference_column: str | None = None,
                  train_labels: set[str] | frozenset = frozenset()) -> EvalSet:
    """Items of one eval file; rows without a prompt or a reference are listed in ``skipped``."""
    from curate.leakage import read_eval_file
    from curate.snapshot import sha256_file

    p = Path(path)
    ef = read_eval_file(p, text_column, "user")  # raises on a missing, empty or unsupported file
    raw = _raw_rows(p)
    es = EvalSet(path, [], path=path, sha256=sha256_file(p), skipped=list(ef.problems))
    for t in ef.texts:
        loc = t.source[len(str(p)) + 1:]
        row = raw.get(loc, {})
        msgs = row.get("messages") if text_column is None else None
        ref: Any = None
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            prompt = [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]]
            ref = msgs[-1].get("content")
        else:
            prompt = ([{"role": m["role"], "content": m["content"]} for m in msgs] if isinstance(msgs, list)
                      else [{"role": "user", "content": t.text}])
            col = reference_column or next((c for c in REFERENCE_COLUMNS if row.get(c) not in (None, "")), None)
            ref = row.get(col) if col else None
        if not isinstance(ref, str) or not ref.strip():
            want = reference_column or f"an assistant turn or one of {list(REFERENCE_COLUMNS)}"
            es.skipped.append({"source": t.source, "reason": f"no reference ({want})"})
            continue
        label = row.get("label") if isinstance(row.get("label"), str) and row.get("label") else None
        if label is None and ref.strip() in train_labels:
            label = ref.strip()
        es.items.append(Item(loc, prompt, ref, label))
    if not es.items:
        raise ValueError(f"{p}: no row has both a prompt and a reference ({len(es.skipped)} skipped, first: "
                         f"{es.skipped[0] if es.skipped else 'none'}); name the reference with --reference-column")
    return es


# ---------------------------------------------------------------- leakage clearance
class NotCleared(RuntimeError):
    pass


def _utc(stamp: str, fmt: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, fmt)))


def _report_counters(md: Path) -> dict[str, Any]:
    """The counters of a leakage report: its JSON sidecar when there is one, else the ``Read:`` line of the .md."""
    side = md.with_suffix(".json")
    if side.exists():
        try:
            return json.loads(side.read_text(encoding="utf-8"))
        except ValueError:
            pass
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("Read: `"):
            try:
                return {"read": json.loads(line[len("Read: `"):].rstrip().rstrip("`"))}
            except ValueError:
                break
    return {}


def _recorded_sha256(counters: dict[str, Any], key: str) -> str | None:
    """The sha256 a report recorded for an eval file, under ``eval_files`` or ``files`` (map or list)."""
    for name in ("eval_files", "files"):
        v = counters.get(name)
        if isinstance(v, dict) and isinstance(v.get(key), dict):
            return v[key].get("sha256")
        if isinstance(v, list):
            for e in v:
                if isinstance(e, dict) and e.get("path") == key:
                    return e.get("sha256")
    return None


def _same_file(key: str, target: Path, workspace: Path) -> bool:
    k = Path(key)
    cands = [k] if k.is_absolute() else [k, workspace.parent / k]
    return any(c.exists() and c.resolve() == target.resolve() for c in cands)


def _leaking_ids(md: Path, key: str) -> set[str]:
    jl = md.with_suffix(".jsonl")
    out: set[str] = set()
    if jl.exists():
        with jl.open(encoding="utf-8") as f:
            for line in f:
                h = json.loads(line)
                if "train_id" in h and str(h.get("source", "")).rsplit(":", 1)[0] == key:
                    out.add(h["train_id"])
    return out


def produce_hint(path: str, sdir: Path) -> str:
    ws = sdir.parent.parent
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return (f"produce the leakage report with\n  python -m curate leakage --workspace {ws} --against {path}\n"
            f"(it writes {ws / 'reports' / f'leakage-{stamp}.md'}; a train record of snapshot {sdir.name} that leaks "
            f"into the file means a new snapshot and run)")


def clearance(path: str, sdir: Path) -> str:
    """Path of the leakage report that clears ``path`` for the snapshot in ``sdir``; :class:`NotCleared` otherwise."""
    from curate.snapshot import read_rows, sha256_file

    target = Path(path)
    ws = sdir.parent.parent
    man = json.loads((sdir / "manifest.json").read_text(encoding="utf-8"))
    created = _utc(man["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    gating = Path(str((man.get("gates") or {}).get("reports", {}).get("leakage") or "")).name
    sha = sha256_file(target)
    reports = sorted((ws / "reports").glob("leakage-*.md"), reverse=True)  # newest first (UTC stamps)
    notes: list[str] = []
    train_ids: set[str] | None = None
    for md in reports:
        counters = _report_counters(md)
        key = next((k for k in counters.get("read", {}) if k not in ("train", "heldout")
                    and (_recorded_sha256(counters, k) == sha or _same_file(k, target, ws))), None)
        if key is None:
            continue
        try:
            at = _utc(md.stem[len("leakage-"):], "%Y%m%d-%H%M%S")
        except ValueError:  # not a stamped name: the file's own time
            at = md.stat().st_mtime
        if md.name != gating and (at < created or (gating and md.name < gating)):
            notes.append(f"{md} read it before snapshot {sdir.name} was made, and a later leakage run replaced its "
                         "verdicts before the snapshot's gates applied")
            continue
        rec = _recorded_sha256(counters, key)
        if rec is not None and rec != sha:
            notes.append(f"{md} read another version of it (sha256 {rec[:12]}…, now {sha[:12]}…)")
            continue
        if rec is None and target.stat().st_mtime > at + 1:
            notes.append(f"{md} read it, but the file was modified after that report")
            continue
        if train_ids is None:
            train_ids = {r["id"] for r in read_rows(sdir / "train.parquet", columns=["id"])}
        leaks = _leaking_ids(md, key) & train_ids
        if leaks:
            raise NotCleared(f"{md} found {len(leaks)} train record(s) of snapshot {sdir.name} leaking into {path} "
                             f"(e.g. {sorted(leaks)[0]}): scores on it would be inflated; make a new snapshot after "
                             f"`curate leakage --against {path}` and train again")
        return str(md)
    why = "; ".join(notes) if notes else f"no leakage report in {ws / 'reports'} read it"
    raise NotCleared(f"--eval file {path} is not cleared by `curate leakage` against snapshot {sdir.name}: {why}.\n"
                     + produce_hint(path, sdir))
