"""Experiment tracking and the model card: TensorBoard event files and an MLflow file store hold the logged
scalars (read back with each tool's own reader), the eval loss is the held-out loss recomputed by hand, and the
run's README.md (model card) carries numbers read from the run's own files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from families import approved_snapshot, build_tiny_model, hf_target_loss

from curate import snapshot as snap
from train.config import load
from train.data import tokenize_rows

pytestmark = pytest.mark.integration


def test_tensorboard_mlflow_eval_loss_and_model_card(store, workspace, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.recipe import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    approved_snapshot(store, 20, [f"label_{k}" for k in range(3)])
    model = build_tiny_model("qwen2", tmp_path / "m")
    cfg = load(None, {"base_model": str(model), "output_dir": str(tmp_path / "run"), "max_length": 64,
                      "batch_size": 4, "max_steps": 4, "logging_steps": 1, "eval_steps": 2, "eval_examples": 3,
                      "report_to": "tensorboard,mlflow"})
    run = train("v1", cfg, str(workspace))
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "eval_loss" in r] == [2, 4]

    # the logged eval loss at the end = the held-out loss of the trained adapter, recomputed here
    from peft import PeftModel

    tok = AutoTokenizer.from_pretrained(run)
    held = sorted(snap.load(Path(json.loads((run / "manifest.json").read_text())["snapshot"]["path"]),
                            split="heldout"), key=lambda r: r["id"])[:3]
    ex = tokenize_rows(tok, held, tok.chat_template, 64).examples
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), run / "adapter").eval()
    assert recs[-1]["eval_loss"] == pytest.approx(hf_target_loss(m, ex), rel=1e-4)

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tb_loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert tb_loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in recs]
    assert [e.step for e in acc.Scalars("eval/loss")] == [2, 4]

    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((run / "mlruns").resolve().as_uri())
    client = mlflow.tracking.MlflowClient()
    run_id = (run / "mlflow_run_id").read_text().strip()
    hist = client.get_metric_history(run_id, "loss")
    assert sorted((h.step, h.value) for h in hist) == [(r["step"], pytest.approx(r["loss"])) for r in recs]
    assert client.get_run(run_id).data.params["learning_rate"] == str(cfg.learning_rate)

    card = (run / "README.md").read_text()
    man = json.loads((run / "manifest.json").read_text())
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card
    assert f"| tokens seen | {man['tokens_seen']} |" in card
    assert f"{recs[-1]['eval_loss']:.4f} at step 4" in card
    assert "- by origin: human 20" in card or "by origin: human" in card
