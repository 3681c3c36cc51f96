"""Ingest throughput benchmark: generated ticket CSVs of 100k and 1M rows.

For each size it streams a CSV to disk (constant memory), then runs
``python -m curate ingest FILE --mapping M --workspace FRESH --json`` as a
subprocess and measures wall time and the child's peak RSS
(``ru_maxrss`` of the ingest process, or of its largest pool worker; one child
per size so the numbers do not mix). Prints JSON and writes it to ``bench/results/ingest.json``
(``--out``)::

    python bench/ingest.py                      # 100k and 1M rows
    python bench/ingest.py --rows 100000 --workers 2 --out bench/results/ingest-workers2.json
    python bench/ingest.py --baseline 0a4cf4f   # + the same runs with an older revision's curate

Rows look like real ticket exports: ``ticket_id, subject, body, reply,
category``; about 8% carry PII (emails, phones, order numbers) so the scrubber
does real work. ``records/s`` counts rows read per second of wall time,
including interpreter start-up; ``records_per_cpu_s`` divides by the child's
user+sys CPU time (its reader process / pool workers included) instead, which is what to compare when
other processes compete for the CPU (``machine.loadavg_*`` and ``machine.busy_*`` say how busy it was).
``writer_cpu_s`` / ``children_cpu_s`` split that CPU between the ingest process (SQLite writes) and its
children (the reader process that parses); ``records_per_s_two_idle_cores_bound`` is rows divided by
the larger of the two and of half the total: the best wall clock two idle cores could give.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = (
    "card payment refund account transfer app login password delivery order parcel charge fee balance statement "
    "limit cash withdrawal pending declined blocked frozen replacement address phone email verify identity top up "
    "exchange rate currency travel abroad merchant subscription cancel return item size wrong broken late missing "
    "today yesterday week please help thanks hello still again why when where how can could would the a my your is "
    "was not to for with on in of and it this that have been"
).split()
CATEGORIES = [f"intent_{i:02d}" for i in range(40)]
MAPPING = """system = "You are a support agent. Reply helpfully."
[columns]
user_template = "{subject}\\n\\n{body}"
assistant = "reply"
label = "category"
group = "ticket_id"
"""


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Stream ``rows`` ticket rows to ``path`` (CSV), constant memory."""
    import csv

    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ticket_id", "subject", "body", "reply", "category"])
        for i in range(rows):
            body = sentence(rng, rng.randint(8, 30))
            r = rng.random()
            if r < 0.03:
                body += f" My email is user{i}@example.com."
            elif r < 0.06:
                body += f" Call me on 415-555-{i % 10000:04d}."
            elif r < 0.08:
                body += f" Order number {rng.randint(10**9, 10**10 - 1)}."
            w.writerow([f"T{i}", sentence(rng, rng.randint(3, 8)), body, sentence(rng, rng.randint(10, 40)), rng.choice(CATEGORIES)])


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat (Linux), or None."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f) - idle, sum(f)


def _busy(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float | None:
    """Average number of busy cores between two :func:`_cpu_ticks` (this bench and everyone else)."""
    if not a or not b or b[1] == a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1), 2)


def machine(load0: list[float], stat0: tuple[int, int] | None) -> dict:
    """The machine and how busy it was since ``load0`` / ``stat0`` (:func:`_cpu_ticks`) were taken."""
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "loadavg_at_start": load0, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "busy_cores_avg_during_runs": _busy(stat0, _cpu_ticks())}


def emit(out: dict, path: str) -> None:
    """Print the results and write them to ``path`` ('' = don't)."""
    print(json.dumps(out, indent=2))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


def checkout(rev: str, tmp: Path) -> Path:
    """The ``curate`` package as of git revision ``rev``, extracted under ``tmp`` (for the baseline)."""
    dest = tmp / f"baseline-{rev.replace('/', '_')}"
    dest.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "curate"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return dest


def run_one(rows: int, tmp: Path, batch_size: int | None, workers: int | None = None, root: Path = ROOT,
            gen: bool = True, tag: str = "", extra: tuple[str, ...] = ()) -> dict:
    """Ingest ``rows`` generated rows with the ``curate`` package found in ``root`` (this checkout,
    or a baseline extracted by :func:`checkout`) into a fresh workspace."""
    csv_path = tmp / f"tickets_{rows}.csv"
    map_path = tmp / "bench.mapping.toml"
    map_path.write_text(MAPPING, encoding="utf-8")
    t0 = time.perf_counter()
    if gen or not csv_path.exists():
        generate(csv_path, rows)
    gen_s = time.perf_counter() - t0
    ws = tmp / f"ws_{rows}{tag}"
    code = (
        "import resource, sys, json; from curate.cli import main; rc = main(sys.argv[1:]); "
        "ru = resource.getrusage(resource.RUSAGE_SELF); rc2 = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print('MAXRSS', max(ru.ru_maxrss, rc2.ru_maxrss), ru.ru_utime + ru.ru_stime + rc2.ru_utime + rc2.ru_stime, "
        "ru.ru_utime + ru.ru_stime, file=sys.stderr); sys.exit(rc)"
    )
    cmd = [sys.executable, "-c", code, "ingest", str(csv_path), "--mapping", str(map_path), "--workspace", str(ws),
           "--json", *extra]
    if batch_size is not None:  # else each revision's own default
        cmd += ["--batch-size", str(batch_size)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"ingest failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rep = json.loads(p.stdout)
    _, maxrss_kb, cpu_s, main_cpu_s = next(ln.split() for ln in p.stderr.splitlines() if ln.startswith("MAXRSS"))
    maxrss_kb, cpu_s, main_cpu_s = int(maxrss_kb), float(cpu_s), float(main_cpu_s)
    child_cpu_s = cpu_s - main_cpu_s
    t = rep["totals"]
    out = {
        "rows": rows,
        "workers": workers,
        "csv_mb": round(csv_path.stat().st_size / 1e6, 1),
        "generate_s": round(gen_s, 1),
        "ingest_wall_s": round(wall, 2),
        "records_per_s": round(t["read"] / wall),
        "ingest_cpu_s": round(cpu_s, 2),
        "records_per_cpu_s": round(t["read"] / cpu_s),
        # the ingest process (the SQLite writer) and its children (reader process / pool) apart;
        # on two otherwise idle cores the wall clock cannot beat the busier one, nor half the total
        "writer_cpu_s": round(main_cpu_s, 2),
        "children_cpu_s": round(child_cpu_s, 2),
        "records_per_s_two_idle_cores_bound": round(t["read"] / max(main_cpu_s, child_cpu_s, cpu_s / 2)),
        "read": t["read"], "added": t["added"], "already_present": t["already_present"], "rejected": t["rejected"],
        "peak_rss_mb": round(maxrss_kb / 1024, 1),
        "store_mb": round((ws / "store.sqlite").stat().st_size / 1e6, 1),
    }
    if not gen:
        del out["generate_s"]
    shutil.rmtree(ws, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="sizes to run (default 100k 1M)")
    ap.add_argument("--batch-size", type=int, help="ingest --batch-size (default: the ingest's own default)")
    ap.add_argument("--workers", type=int, help="ingest --workers (default: the ingest's own default)")
    ap.add_argument("--ingest-args", default="", help="more ingest options for this checkout's runs, e.g. '--defer-indexes no'")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest.json"), help="where to write the JSON ('' = don't)")
    ap.add_argument("--tmp", help="scratch folder (default: a temp dir, deleted after)")
    ap.add_argument("--baseline", metavar="REV", help="also run the curate package of git revision REV on the same files "
                    "(e.g. the commit before an optimisation) and report the CPU ratio")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. CPU contention)")
    a = ap.parse_args(argv)
    tmpctx = tempfile.TemporaryDirectory(prefix="bench-ingest-") if not a.tmp else None
    tmp = Path(a.tmp or tmpctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    load0 = [round(x, 2) for x in os.getloadavg()]
    stat0 = _cpu_ticks()
    results, baseline = [], []
    try:
        base_root = checkout(a.baseline, tmp) if a.baseline else None
        for n in a.rows:  # the baseline right after, on the same file, so both see the same machine load
            results.append(run_one(n, tmp, a.batch_size, a.workers, extra=tuple(a.ingest_args.split())))
            if base_root is not None:
                b = run_one(n, tmp, a.batch_size, a.workers, root=base_root, gen=False, tag="-baseline")
                b["cpu_ratio"] = round(b["ingest_cpu_s"] / results[-1]["ingest_cpu_s"], 2)
                baseline.append(b)
    finally:
        if tmpctx is not None:
            tmpctx.cleanup()
    out = {
        "bench": "ingest",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(load0, stat0),
        "target_records_per_s": 20000,
        "batch_size": a.batch_size or "ingest default",
        "workers": a.workers if a.workers is not None else "ingest default",
        "ingest_args": a.ingest_args,
        "results": results,
        "baseline": {"rev": a.baseline, "results": baseline,
                     "note": "same files, same options, the curate package of git revision `rev`; cpu_ratio = "
                             "baseline CPU-seconds / this checkout's CPU-seconds"} if a.baseline else None,
        "note": a.note,
    }
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
