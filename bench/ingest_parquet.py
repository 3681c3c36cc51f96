"""Parquet ingest against CSV ingest, per record, on the same generated ticket rows.

The rows of ``bench/ingest.py`` (``ticket_id, subject, body, reply, category``; ~8% with PII) are written as a
CSV and as a Parquet file (all columns strings, zstd); each is ingested by
``python -m curate ingest FILE --mapping M --workspace FRESH --json`` in a subprocess, the two formats
interleaved for ``--rounds`` rounds so both see the same machine load. Reports µs per record of wall time and of
CPU (the ingest process + its reader process), the medians over the rounds, their ratio, and whether both
stores hold the same records (ids, labels, groups, splits)::

    python bench/ingest_parquet.py                       # 20k rows, 3 rounds → bench/results/ingest_parquet.json
    python bench/ingest_parquet.py --rows 100000 --rounds 5
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import MAPPING, ROOT, _cpu_ticks, emit, generate, machine  # noqa: E402  (bench/ingest.py)

CODE = ("import resource, sys; from curate.cli import main; rc = main(sys.argv[1:]); "
        "ru = resource.getrusage(resource.RUSAGE_SELF); ch = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print('CPU', ru.ru_utime + ru.ru_stime + ch.ru_utime + ch.ru_stime, max(ru.ru_maxrss, ch.ru_maxrss), "
        "file=sys.stderr); sys.exit(rc)")


def to_parquet(csv_path: Path, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    cols = ["ticket_id", "subject", "body", "reply", "category"]
    t = pcsv.read_csv(csv_path, convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in cols}))
    pq.write_table(t, out, compression="zstd")


def store_digest(ws: Path) -> tuple[int, str]:
    con = sqlite3.connect(ws / "store.sqlite")
    rows = con.execute("SELECT id, label, grp, split FROM records ORDER BY id").fetchall()
    con.close()
    return len(rows), hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def ingest(path: Path, mapping: Path, ws: Path) -> dict:
    cmd = [sys.executable, "-c", CODE, "ingest", str(path), "--mapping", str(mapping), "--workspace", str(ws), "--json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"ingest of {path} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    t = json.loads(p.stdout)["totals"]
    _, cpu, rss = next(ln.split() for ln in p.stderr.splitlines() if ln.startswith("CPU"))
    n, digest = store_digest(ws)
    return {"wall_s": round(wall, 3), "cpu_s": round(float(cpu), 3), "read": t["read"], "added": t["added"],
            "rejected": t["rejected"], "records": n, "digest": digest, "peak_rss_mb": round(int(rss) / 1024, 1),
            "us_per_record_wall": round(wall / t["read"] * 1e6, 1), "us_per_record_cpu": round(float(cpu) / t["read"] * 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest_parquet.json"), help="'' = don't write")
    ap.add_argument("--note", default="")
    a = ap.parse_args(argv)
    load0, stat0 = [round(x, 2) for x in os.getloadavg()], _cpu_ticks()
    runs: dict[str, list[dict]] = {"csv": [], "parquet": []}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-parquet-") as tmp:
        tmp = Path(tmp)
        csv_path, pq_path, mapping = tmp / "tickets.csv", tmp / "tickets.parquet", tmp / "bench.mapping.toml"
        mapping.write_text(MAPPING, encoding="utf-8")
        generate(csv_path, a.rows)
        to_parquet(csv_path, pq_path)
        sizes = {"csv": csv_path.stat().st_size, "parquet": pq_path.stat().st_size}
        for r in range(a.rounds):
            for fmt, path in (("csv", csv_path), ("parquet", pq_path))[:: 1 if r % 2 == 0 else -1]:
                ws = tmp / f"ws-{fmt}-{r}"
                runs[fmt].append(ingest(path, mapping, ws))
    med = {f: {k: statistics.median(x[k] for x in rs) for k in ("us_per_record_wall", "us_per_record_cpu", "wall_s", "cpu_s")}
           for f, rs in runs.items()}
    out = {
        "bench": "ingest_parquet",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(load0, stat0),
        "rows": a.rows, "rounds": a.rounds, "file_mb": {f: round(s / 1e6, 2) for f, s in sizes.items()},
        "median": med,
        "parquet_vs_csv": {"wall": round(med["parquet"]["us_per_record_wall"] / med["csv"]["us_per_record_wall"], 3),
                           "cpu": round(med["parquet"]["us_per_record_cpu"] / med["csv"]["us_per_record_cpu"], 3)},
        "same_records": len({x["digest"] for rs in runs.values() for x in rs}) == 1,
        "runs": runs,
        "note": a.note or "wall includes interpreter start-up (~0.2 s) and the reader process; ratio < 1: Parquet cheaper",
    }
    emit(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
