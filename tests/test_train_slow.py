"""Slow tier: real training steps on the embedded SmolLM2-135M on CPU, kill -9 then --resume, and the
evaluator end to end on a tiny held-out split."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_export_run import make_snapshot

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
ARGS = ["--max_steps", "30", "--save_steps", "5", "--logging_steps", "1", "--batch_size", "8", "--max_length", "96",
        "--lora_layers", "8", "--threads", "2"]


def _train_cmd(ws: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", "--snapshot", "v1", "--workspace", str(ws), "--output_dir", str(out),
            *ARGS, *extra]


def test_kill9_then_resume_ends_with_the_same_steps(tmp_path: Path):
    ws = tmp_path / "ws"
    make_snapshot(ws, limit=60)
    run = tmp_path / "run"
    log = open(tmp_path / "first.log", "w")
    p = subprocess.Popen(_train_cmd(ws, run), cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if (run / "checkpoints" / "checkpoint-10").exists():
            break
        time.sleep(0.2)
    assert p.poll() is None, "training ended before it could be killed: " + (tmp_path / "first.log").read_text()[-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run / "manifest.json").exists() and not (run / "adapter").exists()
    steps_before = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert 10 <= max(steps_before) < 30

    r = subprocess.run([sys.executable, "-m", "train", "--resume", str(run)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed_from = int(r.stderr.split("resuming from ")[1].split("checkpoint-")[1].split()[0])
    assert resumed_from >= 10 and resumed_from % 5 == 0
    man = json.loads((run / "manifest.json").read_text())
    assert man["steps"] == 30 and man["resumed"] and man["config"]["max_steps"] == 30
    assert man["device"] == "cpu" and man["quantization"] == "none"
    assert (run / "adapter" / "adapter_model.safetensors").exists() and (run / "loss.png").exists()
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 30 and set(range(resumed_from + 1, 31)) <= set(steps)


def test_train_then_evaluate_on_a_tiny_heldout(tmp_path: Path):
    """Real generation with and without the adapter; the report's numbers are recomputed from its own
    predictions (the evaluator scores what it printed)."""
    from evaluate.metrics import per_example

    ws = tmp_path / "ws"
    make_snapshot(ws, limit=60)
    run = tmp_path / "run"
    r = subprocess.run(_train_cmd(ws, run, "--learning_rate", "1e-3", "--max_steps", "8"), cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "⟦" in r.stderr and "notice: no CUDA device" in r.stderr  # preflight print + CPU notice
    e = subprocess.run([sys.executable, "-m", "evaluate", "--run", str(run), "--limit", "6", "--json",
                        "--threads", "2"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert e.returncode == 0, e.stderr[-3000:]
    out = json.loads(e.stdout)
    assert out["n"] == 6 and {"label_accuracy", "macro_f1", "exact_match", "rouge_l"} <= set(out["metrics"])
    rep = json.loads((run / "report.json").read_text())
    refs = [x["reference"] for x in rep["examples"]]
    for name in ("label_accuracy", "exact_match", "rouge_l"):
        for side in ("base", "tuned"):
            vals = per_example(name, [x[side] for x in rep["examples"]], refs)
            assert out["metrics"][name][side] == pytest.approx(sum(vals) / len(vals))
        m = out["metrics"][name]
        assert m["delta"] == pytest.approx(m["tuned"] - m["base"]) and m["ci95"][0] <= m["delta"] <= m["ci95"][1]
    for f in ("report.md", "report.json", "report.png"):
        assert (run / f).exists()
    assert "| label_accuracy |" in (run / "report.md").read_text()
