"""``python -m evaluate compare RUN_A RUN_B [--eval FILE]``: did B's data buy anything over A's?

Works from the stored ``predictions.jsonl`` of both runs (no generation): the
tuned predictions of A and B on the items both scored (held-out ids, or the rows
of one ``--eval`` file matched by its sha256), every metric of
:mod:`evaluate.metrics` for both, the difference B − A with a paired bootstrap
95 % interval, and the exact sign test on the per-item scores (ties dropped).

Verdict, on the primary metric (label accuracy on a closed label set, else
ROUGE-L): "B better" when the interval lies above 0 and the sign test gives
p < 0.05, "A better" when it lies below 0 with p < 0.05, else "no detectable
difference".

The snapshot diff: train and held-out rows added (in B's snapshot, not A's) and
removed (in A's, not B's), broken down by origin (human / synthetic), gate
(``blocked in B`` when B's manifest lists the id among the ones its gates held
back, ``was blocked in A`` for the reverse, else ``none``) and reviewer (the last
person who approved the record, from the workspace store when it is there).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .metrics import paired_scores, sign_test
from .report import read_predictions

ALPHA = 0.05


class CompareError(RuntimeError):
    pass


def _items(run: Path, eval_file: str | None) -> tuple[dict[str, dict], str]:
    rows = read_predictions(run)
    if eval_file is None:
        return {r["id"]: r for r in rows if r["set"] == "heldout"}, "heldout"
    from curate.snapshot import sha256_file

    sha = sha256_file(Path(eval_file))
    got = {r["id"]: r for r in rows if r["set"] != "heldout" and r.get("file_sha256") == sha}
    if not got:
        scored = sorted({r["set"] for r in rows if r["set"] != "heldout"})
        raise CompareError(f"run {run} did not score {eval_file} (sha256 {sha[:12]}…; its eval files: {scored or 'none'}): "
                           f"run `python -m evaluate --run {run} --eval {eval_file}` first")
    return got, eval_file


def compare_predictions(a: dict[str, dict], b: dict[str, dict], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics of A's and B's tuned predictions on their shared items (same id and reference)."""
    shared = sorted(set(a) & set(b))
    mismatch = [i for i in shared if a[i]["reference"] != b[i]["reference"]]
    ids = [i for i in shared if a[i]["reference"] == b[i]["reference"]]
    if not ids:
        raise CompareError("the two runs share no scored item (no common id with the same reference): their "
                           "held-out splits differ entirely, so nothing can be compared pairwise; compare them on "
                           "a common --eval file instead (score it in both runs first)")
    refs = [a[i]["reference"] for i in ids]
    closed = all(a[i].get("label") and a[i]["reference"].strip() == a[i]["label"] for i in ids)
    ps = paired_scores([a[i]["predictions"]["tuned"] for i in ids], [b[i]["predictions"]["tuned"] for i in ids],
                       refs, closed, n_boot, seed)
    metrics = {}
    for k, m in ps.items():
        metrics[k] = {"a": m["a"], "b": m["b"], "delta": m["delta"], "ci95": m["ci95"],
                      "sign_test": sign_test(*m["per_example"]) if m["per_example"] else None}
    primary = "label_accuracy" if closed else "rouge_l"
    pm = metrics[primary]
    if pm["ci95"][0] > 0 and pm["sign_test"]["p"] < ALPHA:
        verdict = "B better"
    elif pm["ci95"][1] < 0 and pm["sign_test"]["p"] < ALPHA:
        verdict = "A better"
    else:
        verdict = "no detectable difference"
    return {"n": len(ids), "only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a)),
            "reference_mismatch": len(mismatch), "closed_label_set": closed, "metrics": metrics,
            "primary_metric": primary, "verdict": verdict}


def _snapshot(run: Path) -> tuple[Path, dict]:
    man = json.loads((run / "manifest.json").read_text())
    sdir = Path(man["snapshot"]["path"])
    if not (sdir / "manifest.json").exists():
        raise CompareError(f"run {run}'s snapshot {sdir} is not on this machine (needed for the snapshot diff)")
    return sdir, json.loads((sdir / "manifest.json").read_text())


def _reviewers(sdir: Path, ids: list[str]) -> dict[str, str]:
    """The last approving reviewer per record, from the snapshot's workspace store (``unknown`` without one)."""
    db = sdir.parent.parent / "store.sqlite"
    if not ids or not db.exists():
        return {}
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[str, str] = {}
        for s in range(0, len(ids), 500):
            chunk = ids[s : s + 500]
            q = (f"SELECT record_id, reviewer FROM events WHERE action='approve' AND record_id IN "
                 f"({','.join('?' * len(chunk))}) ORDER BY id")
            out.update({rid: who for rid, who in con.execute(q, chunk)})
        return out
    except sqlite3.Error:
        return {}
    finally:
        con.close()


def snapshot_diff(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Rows added to / removed from B's snapshot relative to A's, per split, by origin, gate and reviewer."""
    from curate.snapshot import FILES, read_rows

    (sa, ma), (sb, mb) = _snapshot(run_a), _snapshot(run_b)
    out: dict[str, Any] = {"a": ma["name"], "b": mb["name"],
                           "same": ma.get("files") == mb.get("files")}
    blocked = {"a": set(ma.get("gates", {}).get("blocked_ids", [])), "b": set(mb.get("gates", {}).get("blocked_ids", []))}
    for f in FILES:
        ra = {r["id"]: r for r in read_rows(sa / f, columns=["id", "origin"])}
        rb = {r["id"]: r for r in read_rows(sb / f, columns=["id", "origin"])}
        added, removed = sorted(set(rb) - set(ra)), sorted(set(ra) - set(rb))
        who = {**_reviewers(sa, removed), **_reviewers(sb, added)}

        def by(ids: list[str], rows: dict, gate_set: set, gate_name: str) -> dict[str, dict[str, int]]:
            return {"origin": dict(Counter(json.loads(rows[i]["origin"] or "{}").get("kind", "human") for i in ids)),
                    "gate": dict(Counter(gate_name if i in gate_set else "none" for i in ids)),
                    "reviewer": dict(Counter(who.get(i, "unknown") for i in ids))}

        out[f.split(".")[0]] = {"added": len(added), "removed": len(removed), "kept": len(set(ra) & set(rb)),
                                "added_by": by(added, rb, blocked["a"], "was blocked in A"),
                                "removed_by": by(removed, ra, blocked["b"], "blocked in B")}
    return out


def compare_runs(run_a: Path, run_b: Path, eval_file: str | None = None) -> dict[str, Any]:
    a, name = _items(run_a, eval_file)
    b, _ = _items(run_b, eval_file)
    res = compare_predictions(a, b)
    return {"a": str(run_a), "b": str(run_b), "set": name, **res, "snapshot_diff": snapshot_diff(run_a, run_b)}


def _fmt_counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "—"


def render(res: dict[str, Any]) -> str:
    L = [f"# {Path(res['b']).name} (B) vs {Path(res['a']).name} (A) on {res['set']}", "",
         f"{res['n']} shared items (only in A: {res['only_a']}, only in B: {res['only_b']}, same id but another "
         f"reference: {res['reference_mismatch']}); tuned predictions of each run.", "",
         "| metric | A | B | B − A | 95% CI | sign test (B wins / A wins / ties) | p |", "|---|---|---|---|---|---|---|"]
    for k, m in res["metrics"].items():
        st = m["sign_test"]
        s = f"{st['b_wins']} / {st['a_wins']} / {st['ties']} | {st['p']:.3g}" if st else "— | —"
        L.append(f"| {k} | {m['a']:.3f} | {m['b']:.3f} | {m['delta']:+.3f} | [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}] | {s} |")
    pm = res["metrics"][res["primary_metric"]]
    L += ["", f"verdict: {res['verdict']} ({res['primary_metric']} {pm['delta']:+.3f}, 95% CI [{pm['ci95'][0]:+.3f}, "
              f"{pm['ci95'][1]:+.3f}], sign test p={pm['sign_test']['p']:.3g}, n={res['n']})", ""]
    d = res["snapshot_diff"]
    L.append(f"## Snapshot diff: {d['a']} → {d['b']}" + (" (identical files)" if d["same"] else ""))
    L += ["", "| split | added | removed | kept | added by origin / gate / reviewer | removed by origin / gate / reviewer |",
          "|---|---|---|---|---|---|"]
    for s in ("train", "heldout"):
        x = d[s]
        L.append(f"| {s} | {x['added']} | {x['removed']} | {x['kept']} | "
                 + " / ".join(_fmt_counts(x["added_by"][k]) for k in ("origin", "gate", "reviewer")) + " | "
                 + " / ".join(_fmt_counts(x["removed_by"][k]) for k in ("origin", "gate", "reviewer")) + " |")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluate compare", description=(
        "Compare two evaluated runs on the items both scored, from their stored predictions.jsonl (no generation): "
        "per metric A, B, B − A with a paired bootstrap 95% CI and an exact sign test, a verdict on the primary "
        "metric (label accuracy, else ROUGE-L): 'B better' / 'no detectable difference' / 'A better', and the diff "
        "of the two runs' snapshots (rows added/removed by origin, gate and reviewer). Guide: docs/evaluate.md"))
    p.add_argument("run_a", metavar="RUN_A", help="the earlier / reference run folder (evaluated)")
    p.add_argument("run_b", metavar="RUN_B", help="the run to judge against A (evaluated)")
    p.add_argument("--eval", metavar="FILE", help="compare on this external eval file (scored in both runs with "
                                                  "`python -m evaluate --run R --eval FILE`, matched by sha256) "
                                                  "instead of the held-out split")
    p.add_argument("--out", metavar="FILE.md", help="also write the markdown report there (and FILE.json beside it)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of markdown")
    a = p.parse_args(argv)
    try:
        res = compare_runs(Path(a.run_a), Path(a.run_b), a.eval)
    except (CompareError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = render(res)
    if a.out:
        Path(a.out).write_text(md, encoding="utf-8")
        Path(a.out).with_suffix(".json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(res, indent=2, ensure_ascii=False) if a.json else md, end="" if not a.json else "\n")
    return 0
