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
