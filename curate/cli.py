"""``python -m curate`` — ingest, dedup, leakage, review, snapshot, stats.

Every verb takes ``--workspace DIR`` (default: ``$WORKBENCH_HOME`` or
``data/workspace``) and ``--json`` for machine-readable output.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from .example import SOURCE_KINDS
from .store import open_store

EPILOG = """examples:
  python -m curate ingest data/                     # all sample data, kinds auto-detected
  python -m curate ingest tickets.csv --mapping m.toml
  python -m curate stats --json
  python -m curate review approve --origin human --split train --reviewer alice
  python -m curate snapshot create v1 && python -m curate snapshot verify v1
  python -m curate ingest data/export.parquet hf://PolyAI/banking77:train   # datasets in
  python -m curate snapshot export v1 --format openai-jsonl --out v1.jsonl   # and out

Flags take either spelling: --batch-size or --batch_size.
"""


def _out(args: argparse.Namespace, obj: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
    else:
        print(text)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in ("status", "split", "origin", "source_kind", "label")}


def add_filter_args(p: argparse.ArgumentParser, default_status: str | None = None) -> None:
    g = p.add_argument_group("selection filters (combined with AND)")
    g.add_argument("--status", default=default_status, choices=["pending", "approved", "rejected", "edited"],
                   help=f"record status (default: {default_status or 'any'})")
    g.add_argument("--split", choices=["train", "heldout"])
    g.add_argument("--origin", choices=["human", "synthetic"])
    g.add_argument("--source-kind", dest="source_kind", choices=SOURCE_KINDS)
    g.add_argument("--label", help="records with this label")
    g.add_argument("--limit", type=int, help="at most this many records (oldest first)")


# ---------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from .ingest import ingest_paths, load_mapping

    store = open_store(args.workspace)
    mapping = load_mapping(Path(args.mapping)) if args.mapping else None
    rep = ingest_paths(store, args.paths, kind=args.kind, mapping=mapping, batch_size=args.batch_size,
                       progress=not args.json and sys.stderr.isatty(), workers=args.workers,
                       defer_indexes={"auto": None, "yes": True, "no": False}[args.defer_indexes])
    t = rep.totals()
    lines = [f"{'file':60s} {'kind':12s} {'read':>7s} {'added':>7s} {'present':>7s} {'rejected':>8s} {'chunks':>6s}"]
    for f in rep.files:
        lines.append(f"{f.file[-60:]:60s} {f.kind:12s} {f.read:7d} {f.added:7d} {f.already_present:7d} {f.rejected:8d} {f.chunks_added:6d}")
    lines.append(f"{'TOTAL':60s} {'':12s} {t['read']:7d} {t['added']:7d} {t['already_present']:7d} {t['rejected']:8d} {t['chunks_added']:6d}")
    if rep.rejects_file:
        lines.append(f"rejects (file, line/row, field, reason): {rep.rejects_file}")
    _out(args, rep.to_dict(), "\n".join(lines))
    usable = t["added"] + t["already_present"] + t["chunks_added"] + t["chunks_present"]
    if usable == 0:
        print("error: nothing usable was read (see the rejects above)", file=sys.stderr)
        return 1
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .stats import stats

    s = stats(open_store(args.workspace))
    text = "\n".join(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in s.items())
    _out(args, s, text)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from . import review

    store = open_store(args.workspace)
    if args.review_cmd == "status":
        s = review.status_summary(store)
        text = "by status: " + json.dumps(s["by_status"]) + "\n" + "\n".join(
            f"  {e['reviewer']:20s} {e['frontend']:10s} {e['action']:20s} {e['n']}" for e in s["events"]) + "\nrule: " + s["rule"]
        _out(args, s, text)
        return 0
    if args.review_cmd == "undo":
        ev = review.undo_last(store, args.reviewer)
        _out(args, {"undone": ev}, f"undid event {ev['id']} ({ev['action']} on {ev['record_id']})" if ev else "nothing to undo")
        return 0
    if args.review_cmd in ("push", "pull"):
        mod = importlib.import_module(".argilla_queue", __package__)
        return mod.main(args, store)
    filters = _filters(args)
    if not args.ids and not any(v for v in filters.values()):
        print("error: name record ids or at least one filter (--status/--split/--origin/--source-kind/--label)", file=sys.stderr)
        return 2
    ids = review.select_ids(store, args.ids, filters, args.limit)
    action = args.review_cmd
    res = review.decide(store, ids, action, args.reviewer, reason=args.reason, frontend="rule" if args.rule else "cli")
    text = f"{action}: {res['applied']} record(s) by {args.reviewer}" + (
        f"; {len(res['conflicts'])} conflict(s)" if res["conflicts"] else "") + (
        f"; {len(res['missing'])} unknown id(s): {res['missing'][:5]}" if res["missing"] else "")
    _out(args, res, text)
    return 1 if res["missing"] else 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from . import snapshot as snap

    store = open_store(args.workspace)
    try:
        if args.snap_cmd == "create":
            m = snap.create(store, args.name, parent=args.parent, note=args.note or "")
            g = m["gates"]
            text = (f"snapshot {args.name}: train {m['files']['train.parquet']['rows']} rows, heldout "
                    f"{m['files']['heldout.parquet']['rows']} rows → {snap.snapshots_dir(store) / args.name}")
            if g["blocked"]:
                text += f"\nblocked by gates: {g['blocked']} record(s) {g['blocked_by_reason']}"
                if g["reports"]:
                    text += f"; reports: {g['reports']}"
            _out(args, m, text)
        elif args.snap_cmd == "list":
            ls = snap.list_snapshots(store)
            _out(args, ls, "\n".join(f"{s['name']:12s} {s['created_at']}  train={s['train']} heldout={s['heldout']} parent={s['parent']}" for s in ls) or "no snapshots")
        elif args.snap_cmd == "show":
            m = snap.show(store, args.name)
            _out(args, m, json.dumps(m, indent=2, ensure_ascii=False))
        elif args.snap_cmd == "diff":
            d = snap.diff(store, args.a, args.b)
            _out(args, d, "\n".join(f"{s}: +{v['added']} -{v['removed']} ={v['kept']}" for s, v in d["summary"].items()))
        elif args.snap_cmd == "export":
            r = snap.export(store, args.name, args.format, args.out, split=args.split, push_to_hub=args.push_to_hub,
                            private=not args.public, messages_only=args.messages_only)
            text = (f"snapshot {args.name} as {args.format}: " + ", ".join(f"{s} {n} rows" for s, n in r["rows"].items())
                    + "".join(f"\n  → {f}" for f in r["files"]) + (f"\n  pushed: {r['pushed']}" if r["pushed"] else ""))
            _out(args, r, text)
        elif args.snap_cmd == "verify":
            problems = snap.verify(store, args.name)
            _out(args, {"name": args.name, "ok": not problems, "problems": problems},
                 f"snapshot {args.name}: OK" if not problems else f"snapshot {args.name}: FAILED\n  " + "\n  ".join(problems))
            return 0 if not problems else 1
    except snap.SnapshotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _plugin(name: str, args: argparse.Namespace) -> int:
    mod = importlib.import_module(f".{name}", __package__)
    return mod.main(args, open_store(args.workspace))


# ---------------------------------------------------------------------------
# verbs that need none of the plugin modules (Argilla client, dedup/leakage with numpy): their parser
# skips importing those (~0.3 s of start-up a bulk ingest would otherwise pay)
CORE_VERBS = ("ingest", "stats", "snapshot")


# long: one declarative argparse table for every verb; split, the CLI's shape would be scattered
def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with ``verb`` in :data:`CORE_VERBS` only what that verb needs is imported
    (the other verbs are then missing from it: ``main`` passes the verb it is about to run)."""
    core = verb in CORE_VERBS
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", metavar="DIR", help="workspace folder (default: $WORKBENCH_HOME or data/workspace)")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p = argparse.ArgumentParser(prog="python -m curate", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="VERB")

    ingest = importlib.import_module(".ingest", __package__)
    pi = sub.add_parser("ingest", parents=[common], help="raw files and datasets → pending records (+ rejects, doc chunks)",
                        description=ingest.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pi.add_argument("paths", nargs="+", metavar="PATH",
                    help="files or folders (folders are walked recursively), saved datasets folders, hf://org/name[:split]")
    pi.add_argument("--kind", choices=ingest.KINDS, help="force the reader (default: auto-detect)")
    pi.add_argument("--mapping", metavar="FILE",
                    help="TOML mapping for every file given: ticket [columns]/[thread], transcript [speakers] "
                         "(default: <stem>.mapping.toml or mapping.toml beside each file; see docs/curate.md)")
    pi.add_argument("--batch-size", type=int, default=10000,
                    help="records per transaction: a kill loses at most the batch in flight (default 10000)")
    pi.add_argument("--workers", type=int, default=1,
                    help="0: read, parse and write in this process; 1 (default): one reader process parses "
                         "the files while this one writes (2 cores); N>1: a pool of N processes turns ticket "
                         "rows into examples (CSV/TSV/JSONL without [thread]). Same records and order in every case")
    pi.add_argument("--defer-indexes", choices=["auto", "yes", "no"], default="auto",
                    help="build the records' secondary indexes once after the load instead of row by row "
                         "(auto, the default: when the input is at least as big as the store and >= 16 MB)")
    pi.set_defaults(func=cmd_ingest)

    ps = sub.add_parser("stats", parents=[common], help="counts by status/split/origin/source, signals, gate counters")
    ps.set_defaults(func=cmd_stats)

    pr = sub.add_parser("review", help="record review decisions (append-only events)")
    rsub = pr.add_subparsers(dest="review_cmd", required=True, metavar="ACTION")
    for action in ("approve", "reject"):
        pa = rsub.add_parser(action, parents=[common], help=f"{action} records by id or by filters")
        pa.add_argument("ids", nargs="*", metavar="ID")
        pa.add_argument("--reviewer", required=True, help="who decides (written on every event)")
        pa.add_argument("--reason", help="why (recommended for rejects)")
        pa.add_argument("--rule", action="store_true", help="mark the events as coming from an automatic rule (front-end 'rule')")
        add_filter_args(pa, default_status=None)
        pa.set_defaults(func=cmd_review)
    pu = rsub.add_parser("undo", parents=[common], help="undo the reviewer's last decision (as a new event)")
    pu.add_argument("--reviewer", required=True)
    pu.set_defaults(func=cmd_review)
    pst = rsub.add_parser("status", parents=[common], help="status counts and events per reviewer/front-end")
    pst.set_defaults(func=cmd_review)
    try:
        if not core:
            aq = importlib.import_module(".argilla_queue", __package__)
            aq.add_cli(rsub, common, add_filter_args, cmd_review)
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.argilla_queue":
            raise

    pn = sub.add_parser("snapshot", help="freeze approved records: create | list | show | diff | verify | export")
    nsub = pn.add_subparsers(dest="snap_cmd", required=True, metavar="ACTION")
    pc = nsub.add_parser("create", parents=[common], help="freeze the approved records that pass the gates")
    pc.add_argument("name")
    pc.add_argument("--parent", help="parent snapshot (default: the latest)")
    pc.add_argument("--note", help="free text stored in the manifest")
    nsub.add_parser("list", parents=[common], help="list snapshots")
    for n in ("show", "verify"):
        x = nsub.add_parser(n, parents=[common], help=f"{n} a snapshot")
        x.add_argument("name")
    pd = nsub.add_parser("diff", parents=[common], help="records added/removed between two snapshots")
    pd.add_argument("a")
    pd.add_argument("b")
    from .snapshot import EXPORT_FORMATS, EXPORT_SPLITS

    pe = nsub.add_parser("export", parents=[common], help="write a snapshot as OpenAI JSONL, ShareGPT or a datasets folder "
                         "(and push it to the Hugging Face Hub)",
                         description="Write a verified snapshot for other tools. openai-jsonl / sharegpt: --out FILE.jsonl "
                         "(one file, each line names its split) or --out DIR (DIR/<split>.jsonl); lines carry id, label "
                         "and split besides the turns (--messages-only: the turns alone). hf-dataset: a "
                         "datasets.save_to_disk folder (DatasetDict train + heldout for --split all). Re-ingesting an "
                         "export gives the same record ids. --push-to-hub pushes the same datasets object (private "
                         "unless --public); it needs HF_TOKEN (or `hf auth login`) and the network.")
    pe.add_argument("name")
    pe.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    pe.add_argument("--out", metavar="PATH", help="file or folder to write (required unless --push-to-hub); never overwritten")
    pe.add_argument("--split", choices=EXPORT_SPLITS, default="all", help="which split(s) (default: all)")
    pe.add_argument("--push-to-hub", metavar="ORG/NAME", help="also push to this Hugging Face dataset repo")
    pe.add_argument("--public", action="store_true", help="create the hub repo public (default: private)")
    pe.add_argument("--messages-only", action="store_true", help="JSONL lines with the turns only (no id/label/split)")
    pn.set_defaults(func=cmd_snapshot)

    for name in () if core else ("dedup", "leakage"):
        try:
            mod = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
            continue
        px = sub.add_parser(name, parents=[common], help=mod.HELP, description=mod.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(px)
        px.set_defaults(func=lambda a, n=name: _plugin(n, a))
    return p


def main(argv: list[str] | None = None) -> int:
    from .entry import flag_spellings

    argv = sys.argv[1:] if argv is None else list(argv)
    with flag_spellings():
        args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
