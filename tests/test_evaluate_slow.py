"""Slow tier: ``python -m evaluate`` with baselines and a leakage-cleared ``--eval`` file on two tiny real runs
of the embedded SmolLM2 (CPU), then ``python -m evaluate compare`` on their stored predictions."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_export_run import make_snapshot

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ENV_KEYS = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ARGS = ["--save_steps", "50", "--logging_steps", "1", "--batch_size", "8", "--max_length", "96", "--lora_layers", "4",
        "--threads", "2", "--learning_rate", "1e-3"]


def _py(*args: str, rc: int = 0, timeout: int = 900) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **ENV_KEYS}, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == rc, f"python {' '.join(args)}\n{r.stderr[-3000:]}"
    return r


def test_evaluate_with_baselines_and_eval_file_then_compare(tmp_path: Path):
    from curate import review, snapshot
    from curate.store import open_store
    from evaluate.metrics import per_example

    ws = tmp_path / "ws"
    sdir = make_snapshot(ws, limit=60)
    labels = {r["label"] for r in snapshot.load(sdir, split="train")}
    ev = tmp_path / "b77_test.csv"
    with (ROOT / "data" / "banking77" / "test.csv").open(newline="") as f, ev.open("w", newline="") as g:
        rows = [r for r in csv.DictReader(f) if r["category"] in labels][:4]
        w = csv.DictWriter(g, ["text", "category"])
        w.writeheader()
        w.writerows(rows)
    wsa = ["--workspace", str(ws)]
    # not cleared yet: refused, naming the report to produce
    run_a = tmp_path / "runA"
    _py("-m", "train", "--snapshot", "v1", *wsa, "--output_dir", str(run_a), *ARGS, "--max_steps", "2")
    r = _py("-m", "evaluate", "--run", str(run_a), "--eval", str(ev), rc=1, timeout=300)
    assert f"--against {ev}" in r.stderr and str(ws / "reports" / "leakage-") in r.stderr
    _py("-m", "curate", "leakage", "--exact", "--near", "--against", str(ev), *wsa)

    # B: 20 more approved train records (same held-out split), more steps
    store = open_store(ws)
    try:
        review.decide(store, review.select_ids(store, (), {"status": "pending", "split": "train"}, 20), "approve", "bob")
        snapshot.create(store, "v2")
        diff_want = snapshot.diff(store, "v1", "v2")["summary"]
    finally:
        store.close()
    run_b = tmp_path / "runB"
    _py("-m", "train", "--snapshot", "v2", *wsa, "--output_dir", str(run_b), *ARGS, "--max_steps", "8")

    for run in (run_a, run_b):
        out = json.loads(_py("-m", "evaluate", "--run", str(run), "--eval", str(ev), "--limit", "6", "--json",
                             "--threads", "2").stdout)
        assert out["n"] == 6 and out["report"] == str(run / "report.json")
        assert {"majority_class", "embedding_classifier"} == set(out["baselines"])
        assert out["eval_files"][0]["path"] == str(ev) and out["eval_files"][0]["n"] == 4
        assert set(out["eval_files"][0]["baselines"]) == {"majority_class", "embedding_classifier"}
        rep = json.loads((run / "report.json").read_text())
        preds = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
        held = [p for p in preds if p["set"] == "heldout"]
        assert len(held) == 6 and len(preds) == 10
        refs = [p["reference"] for p in held]
        for side in ("base", "tuned", "majority_class", "embedding_classifier"):  # the report scores what it stored
            vals = per_example("label_accuracy", [p["predictions"][side] for p in held], refs)
            want = (rep["metrics"]["label_accuracy"][side] if side in ("base", "tuned")
                    else rep["baselines"][side]["metrics"]["label_accuracy"]["value"])
            assert want == pytest.approx(sum(vals) / len(vals))
        assert held[0]["predictions"]["majority_class"] == rep["baselines"]["majority_class"]["label"]
        for f in ("report.md", "report.png"):
            assert (run / f).exists()

    res = json.loads(_py("-m", "evaluate", "compare", str(run_a), str(run_b), "--json").stdout)
    assert res["n"] == 6 and res["verdict"] in ("B better", "A better", "no detectable difference")
    a = {p["id"]: p for p in map(json.loads, (run_a / "predictions.jsonl").read_text().splitlines()) if p["set"] == "heldout"}
    b = {p["id"]: p for p in map(json.loads, (run_b / "predictions.jsonl").read_text().splitlines()) if p["set"] == "heldout"}
    ids = sorted(a)
    va = per_example("rouge_l", [a[i]["predictions"]["tuned"] for i in ids], [a[i]["reference"] for i in ids])
    vb = per_example("rouge_l", [b[i]["predictions"]["tuned"] for i in ids], [a[i]["reference"] for i in ids])
    m = res["metrics"]["rouge_l"]
    assert m["delta"] == pytest.approx((sum(vb) - sum(va)) / 6)
    assert m["sign_test"]["b_wins"] == sum(y > x for x, y in zip(va, vb))
    d = res["snapshot_diff"]
    assert (d["a"], d["b"]) == ("v1", "v2") and d["train"]["added"] > 0
    for split in ("train", "heldout"):
        assert {k: d[split][k] for k in ("added", "removed", "kept")} == diff_want[split]
    assert d["train"]["added_by"]["reviewer"] == {"bob": d["train"]["added"]}
    assert d["train"]["added_by"]["origin"] == {"human": d["train"]["added"]}
    md = _py("-m", "evaluate", "compare", str(run_a), str(run_b), "--eval", str(ev)).stdout
    assert "verdict: " in md and f"on {ev}" in md
