"""Bring your own model, slow tier: every supported family trains 3 steps on both engines and
``python -m evaluate`` scores the run (tiny random-init models with real templates, tests/families.py).
Export per family (GGUF loaded by llama.cpp, greedy tokens, serving template) is in tests/test_export_families.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from families import FAMILIES, approved_snapshot, build_tiny_model

pytestmark = pytest.mark.slow
NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: build_tiny_model(f, root / f) for f in NAMES}


@pytest.mark.parametrize("engine", ["fast", "trl"])
@pytest.mark.parametrize("family", NAMES)
def test_family_trains_and_evaluates(models, family, engine, store, workspace, tmp_path):
    from evaluate.__main__ import evaluate_run
    from train.config import load
    from train.recipe import train

    approved_snapshot(store, 24, ["card_arrival", "exchange_rate", "top_up_failed", "lost_card"],
                      query="hello, question number {i} about my card and my account",
                      system="Reply with the intent label only.")
    cfg = load(None, {"base_model": str(models[family]), "output_dir": str(tmp_path / "run"), "max_length": 96,
                      "batch_size": 4, "max_steps": 3, "logging_steps": 1, "engine": engine})
    run = train("v1", cfg, str(workspace))
    man = json.loads((run / "manifest.json").read_text())
    assert man["steps"] == 3 and man["engine"]["name"] == engine
    assert man["model"]["model_type"] == FAMILIES[family].model_type and man["model"]["kind"] == "folder"
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses and all(loss == loss and loss > 0 for loss in losses)  # finite, positive
    report = evaluate_run(run, limit=4, max_new_tokens=4)
    assert report["n"] >= 1 and report["metrics"]
    assert (run / "report.json").exists() and (run / "report.md").exists()
