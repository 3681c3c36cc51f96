"""Fast smoke tests of the CPU-runnable benchmarks: they run, and their JSON carries what docs/gpu.md reads."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_overhead_runs_both_variants_with_the_same_loss(tmp_path, monkeypatch):
    out = tmp_path / "so.json"
    monkeypatch.setattr(sys, "argv", ["step_overhead.py", "--rounds", "1", "--steps", "1", "--layers", "2",
                                      "--out", str(out)])
    try:
        runpy.run_path(str(ROOT / "bench" / "step_overhead.py"), run_name="__main__")
    except SystemExit as e:
        assert e.code == 0
    res = json.loads(out.read_text())
    assert res["lora_layers_fused"] == 2 * 7 and set(res["ms_per_step"]) == {"peft", "fused_lora"}
    assert res["loss"]["peft"] == res["loss"]["fused_lora"] and res["fused_lora_vs_peft"] > 0


def test_train_speed_cpu_dry_run_reports_the_engine_decisions(tmp_path):
    """bench/train_speed.py on the tiny shape on CPU (TRL needs CUDA): the engine row carries tokens/s, the loss,
    and the compile decision (``auto`` leaves a 3-step run eager)."""
    import subprocess

    out = tmp_path / "ts.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "train_speed.py"), "--device", "cpu", "--shapes", "tiny",
                        "--steps", "3", "--warmup", "1", "--plan", "ours:cli_b8", "--ablations", "", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    run = json.loads(out.read_text())["shapes"]["tiny"]["runs"]["ours:cli_b8"]
    assert "error" not in run, run.get("error")
    assert run["tokens_per_s_real"] > 0 and len(run["losses"]) == 3
    assert run["compiled"] is False and run["engine"]["compiled"] is False and run["warmup_s"] > 0
