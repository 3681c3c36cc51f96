"""Benchmark: the review app's queue view on a 100k-record workspace.

Builds (or reuses) a workspace of N generated records — with duplicate clusters,
leakage hits, reward scores, synthetic records and some review events — then times

* each data function the Review page calls per render (:mod:`curate.queue`:
  count, position, next record, up-next page, progress, label pick list,
  cluster members, history) for several filter settings, cold (no app cache);
* full renders of the Review page through Streamlit's ``AppTest`` (sign-in, then
  reruns: first record, Skip, a filter change), which includes Streamlit's own work.

Writes ``bench/results/app_queue.json``. Usage::

    python bench/app_queue.py [--records 100000] [--workspace /tmp/wb-bench-app] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curate import queue  # noqa: E402
from curate.example import Example, Source  # noqa: E402
from curate.store import open_store  # noqa: E402

LABELS = [f"intent_{i:02d}" for i in range(77)]
WORDS = ("card payment refund transfer account top up fee exchange rate pin blocked arrived "
         "charged twice cash withdrawal app verify identity limit balance").split()


def build(ws: Path, n: int, seed: int = 7) -> dict:
    """Insert ``n`` generated records in batches of 10k (skipped if the store already holds ``n``)."""
    store = open_store(ws)
    have = store.count()
    if have >= n:
        return {"built": False, "records": have, "seconds": 0.0}
    rng = random.Random(seed)
    t0 = time.perf_counter()
    batch: list[Example] = []
    try:
        from tqdm import tqdm
        bar = tqdm(total=n - have, desc="records", unit="rec")
    except ImportError:  # pragma: no cover
        bar = None
    for i in range(have, n):
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) + f" (case {i})"
        answer = "Sure — " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) + "."
        synthetic = rng.random() < 0.2
        sig: dict = {}
        if synthetic:
            sig["reward"] = {"score": round(rng.uniform(1, 5), 2), "rationale": "judge rubric + heuristics"}
        if rng.random() < 0.01:
            sig["leakage"] = [{"detector": "near", "score": 0.91, "other_id": "h", "other_text": user, "source": "heldout"}]
        ex = Example(
            messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            source=Source(kind="synthetic" if synthetic else "ticket", file="gen.csv", loc=f"row {i + 2}"),
            origin={"kind": "synthetic", "parent_ids": [], "model": "bench", "strategy": "paraphrase", "prompt_hash": "x"}
            if synthetic else {"kind": "human"},
            label=rng.choice(LABELS), signals=sig,
        )
        batch.append(ex)
        if len(batch) == 10_000 or i == n - 1:
            store.add_examples(batch)
            if bar:
                bar.update(len(batch))
            batch = []
    if bar:
        bar.close()
    # duplicate clusters: 2 000 clusters of 3 (keeper = first)
    ids = [r[0] for r in store.conn.execute("SELECT id FROM records ORDER BY seq LIMIT 6000")]
    now = time.time()
    upd = {}
    for k in range(0, len(ids), 3):
        keeper = ids[k]
        upd[keeper] = {"dup_cluster": keeper}
        for m in ids[k + 1 : k + 3]:
            upd[m] = {"duplicate_of": keeper, "dup_cluster": keeper, "dup_score": 0.9, "dedup_at": now, "dup_detector": "near"}
    store.update_signals(upd)
    # 2 000 decisions by two labelers (some overlap for agreement)
    some = [r[0] for r in store.conn.execute("SELECT id FROM records ORDER BY seq LIMIT 1500 OFFSET 20000")]
    for j, rid in enumerate(some):
        store.add_event(rid, "ann", "approve" if j % 7 else "reject", frontend="streamlit", reason=None if j % 7 else "wrong answer")
    for rid in some[:500]:
        store.add_event(rid, "bob", "approve", frontend="streamlit")
    return {"built": True, "records": store.count(), "seconds": round(time.perf_counter() - t0, 1)}


def timed(fn, repeat: int) -> dict:
    xs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        xs.append((time.perf_counter() - t) * 1000)
    return {"median_ms": round(statistics.median(xs), 2), "max_ms": round(max(xs), 2)}


def bench_functions(ws: Path, repeat: int) -> dict:
    store = open_store(ws)
    t = time.perf_counter()
    queue.ensure_indexes(store)
    out: dict = {"ensure_indexes_ms_first_call": round((time.perf_counter() - t) * 1000, 1)}
    mid = store.conn.execute("SELECT MAX(seq) FROM records").fetchone()[0] // 2
    cluster = store.conn.execute("SELECT json_extract(signals,'$.dup_cluster') FROM records WHERE dup_of IS NOT NULL LIMIT 1").fetchone()[0]
    settings = {
        "pending (default)": {"status": "pending"},
        "any status": {},
        "label": {"status": "pending", "label": "intent_42"},
        "has_duplicate": {"status": "pending", "has_duplicate": True},
        "has_leak": {"has_leak": True},
        "low_reward synthetic": {"origin": "synthetic", "low_reward": True},
        "heldout + ticket": {"split": "heldout", "source_kind": "ticket"},
        "approved, not decided by bob": {"status": "approved", "undecided_by": "bob"},
    }
    per = {}
    for name, f in settings.items():
        ex = queue.next_record(store, f, after_seq=mid) or queue.next_record(store, f, 0)
        seq = ex.seq if ex else 0
        row = {
            "count": timed(lambda: queue.count(store, f), repeat),
            "position": timed(lambda: queue.position(store, f, seq), repeat),
            "next_record_from_middle": timed(lambda: queue.next_record(store, f, after_seq=mid), repeat),
            "page_10": timed(lambda: queue.page(store, f, after_seq=seq, limit=10), repeat),
            "matching": queue.count(store, f),
        }
        total = 0.0
        for k in ("count", "position", "next_record_from_middle", "page_10"):
            total += row[k]["median_ms"]
        row["sum_median_ms"] = round(total, 2)
        per[name] = row
    out["per_filter"] = per
    rid = store.conn.execute("SELECT id FROM records ORDER BY seq LIMIT 1 OFFSET 20001").fetchone()[0]
    out["shared"] = {
        "progress (count by status)": timed(lambda: queue.progress(store), repeat),
        "distinct labels (pick list)": timed(lambda: queue.distinct(store, "label"), repeat),
        "distinct source kinds": timed(lambda: queue.distinct(store, "source_kind"), repeat),
        "cluster_members": timed(lambda: queue.cluster_members(store, cluster, limit=3), repeat),
        "cluster_size": timed(lambda: queue.cluster_size(store, cluster), repeat),
        "get + history": timed(lambda: (store.get(rid), queue.history(store, rid)), repeat),
    }
    worst = max(r["sum_median_ms"] for r in per.values())
    shared = sum(v["median_ms"] for v in out["shared"].values())
    out["worst_filter_page_data_ms"] = round(worst + shared, 2)
    return out


def bench_apptest(ws: Path, repeat: int) -> dict:
    from streamlit.testing.v1 import AppTest

    os.environ["WORKBENCH_HOME"] = str(ws)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    t = time.perf_counter()
    at.run()
    first = (time.perf_counter() - t) * 1000
    at.text_input(key="login_name").input("bench")
    next(b for b in at.button if b.label == "Sign in").click()
    t = time.perf_counter()
    at.run()
    login = (time.perf_counter() - t) * 1000
    assert at.button(key="btn_approve"), "review page did not render"
    skips = []
    for _ in range(repeat):
        at.button(key="btn_skip").click()
        t = time.perf_counter()
        at.run()
        skips.append((time.perf_counter() - t) * 1000)
        assert not at.exception
    filt = []
    for lab in ("intent_07", "intent_42", "any"):
        at.sidebar.selectbox(key="f_label").select(lab)
        t = time.perf_counter()
        at.run()
        filt.append((time.perf_counter() - t) * 1000)
    at.sidebar.checkbox(key="f_dup").check()
    t = time.perf_counter()
    at.run()
    dup = (time.perf_counter() - t) * 1000
    # a second labeler signing in on the already-running server (imports done, caches of the first session warm)
    at2 = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at2.run()
    at2.text_input(key="login_name").input("bench2")
    next(b for b in at2.button if b.label == "Sign in").click()
    t = time.perf_counter()
    at2.run()
    login2 = (time.perf_counter() - t) * 1000
    assert at2.button(key="btn_approve"), "review page did not render"
    return {
        "first_run_login_page_ms (fresh process: includes imports)": round(first, 1),
        "sign_in_to_review_page_ms (first session of a fresh process: one-time imports)": round(login, 1),
        "second_labeler_sign_in_to_review_page_ms": round(login2, 1),
        "skip_rerun_median_ms": round(statistics.median(skips), 1),
        "skip_rerun_max_ms": round(max(skips), 1),
        "filter_change_rerun_ms": [round(x, 1) for x in filt],
        "has_duplicate_rerun_ms (cluster panel shown)": round(dup, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000, help="records in the generated workspace (default 100000)")
    ap.add_argument("--workspace", default="/tmp/wb-bench-app", help="where to build/reuse the workspace")
    ap.add_argument("--repeat", type=int, default=5, help="timings per measurement (median reported)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "app_queue.json"))
    a = ap.parse_args(argv)
    ws = Path(a.workspace)
    built = build(ws, a.records)
    print(f"workspace {ws}: {built}", flush=True)
    funcs = bench_functions(ws, a.repeat)
    print(json.dumps(funcs, indent=1), flush=True)
    app = bench_apptest(ws, a.repeat)
    print(json.dumps(app, indent=1), flush=True)
    res = {
        "what": "review app queue view on a generated workspace: curate.queue data functions (cold) and AppTest reruns",
        "records": built["records"],
        "build": built,
        "data_functions": funcs,
        "apptest": app,
        "target": "queue view renders in < 1000 ms",
        "meets_target": (app["skip_rerun_max_ms"] < 1000 and max(app["filter_change_rerun_ms"]) < 1000
                         and app["second_labeler_sign_in_to_review_page_ms"] < 1000
                         and app["sign_in_to_review_page_ms (first session of a fresh process: one-time imports)"] < 1000),
        "note": "the first Review render of a fresh process counts toward the target; the Review page's small tables "
                "are HTML (no st.dataframe), so it no longer imports pandas/pyarrow (was ~0.7 s, 1.4 s first render); "
                "the login page time includes importing app.py's modules in the AppTest process",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "note": "2 CPU cores shared with other jobs; timings are upper bounds"},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {a.out}; meets target: {res['meets_target']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
