"""The model card (``README.md``) of a run folder, written from the run's own files.

Every number comes from ``manifest.json`` (training), the snapshot's ``manifest.json`` (data lineage),
``metrics.jsonl`` (losses) and ``report.json`` (evaluation, once ``python -m evaluate`` has run; the card is
rewritten then). The YAML header is the Hugging Face model-card metadata, so the Hub renders it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last(metrics: Path, key: str) -> tuple[int, float] | None:
    found = None
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if key in rec:
                found = (rec.get("step"), rec[key])
    return found


def _header(man: dict) -> list[str]:
    model = man.get("model") or {}
    base = model.get("id") or man.get("config", {}).get("base_model", "")
    tags = ["workbench", "peft", "qlora" if man.get("quantization") == "nf4" else "lora", "sft"]
    return ["---", f"base_model: {base}", "library_name: peft", "pipeline_tag: text-generation",
            "tags:", *[f"- {t}" for t in tags], "---", ""]


def _lineage(man: dict) -> list[str]:
    s = man.get("snapshot", {})
    snap_man = _read(Path(s.get("path", "")) / "manifest.json")
    counts, review, gates = snap_man.get("counts", {}), snap_man.get("review", {}), snap_man.get("gates", {})
    sha = s.get("files", {}).get("train.parquet", {}).get("sha256", "")
    out = ["## Data", "",
           f"Snapshot `{s.get('name')}` (train.parquet sha256 `{sha}`): {s.get('train_rows')} train rows, "
           f"{s.get('heldout_rows')} held-out rows never trained on.", ""]
    for title, d in (("by origin", counts.get("by_origin")), ("by source kind", counts.get("by_source_kind")),
                     ("review decisions by reviewer", review.get("events_by_reviewer")),
                     ("kept out by the gates", gates.get("blocked_by_reason"))):
        if d:
            out.append(f"- {title}: " + ", ".join(f"{k} {v}" for k, v in sorted(d.items())))
    return out + [""]


def _training(run_dir: Path, man: dict) -> list[str]:
    c, model = man.get("config", {}), man.get("model") or {}
    eng = man.get("engine", {})
    ev = _last(run_dir / "metrics.jsonl", "eval_loss")
    rows = [("base model", f"`{c.get('base_model')}`" + (f" (commit {model['commit']})" if model.get("commit") else "")),
            ("model type", model.get("model_type")), ("quantization", man.get("quantization")),
            ("engine", eng.get("name")), ("steps", man.get("steps")), ("epochs", round(man.get("epochs") or 0, 2)),
            ("learning rate", c.get("learning_rate")),
            ("LoRA", f"r {c.get('lora_r')}, alpha {c.get('lora_alpha')}, dropout {c.get('lora_dropout')}, "
                     f"targets {c.get('lora_targets')}, top layers {c.get('lora_layers') or 'all'}"),
            ("max length", c.get("max_length")), ("tokens seen", man.get("tokens_seen")),
            ("train loss (mean)", _fmt(man.get("train_loss"))),
            ("held-out loss (last)", f"{_fmt(ev[1])} at step {ev[0]}" if ev else "not logged"),
            ("device", man.get("device")), ("wall time (s)", man.get("wall_time_s"))]
    return ["## Training", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else str(x)


def _evaluation(run_dir: Path) -> list[str]:
    rep = _read(run_dir / "report.json")
    if not rep:
        return ["## Evaluation", "", "Not evaluated yet: `python -m evaluate --run " + str(run_dir) + "`.", ""]
    out = ["## Evaluation", "", f"Held-out split, {rep.get('n')} examples, greedy decoding.", "",
           "| metric | base | tuned | delta | 95% CI of delta |", "|---|---|---|---|---|"]
    for k, m in rep.get("metrics", {}).items():
        ci = m.get("ci95") or [float("nan"), float("nan")]
        out.append(f"| {k} | {m['base']:.3f} | {m['tuned']:.3f} | {m['delta']:+.3f} | [{ci[0]:+.3f}, {ci[1]:+.3f}] |")
    base = rep.get("baselines") or {}
    if base:
        out += ["", "What a user would otherwise pick, on the same items (tuned − baseline, 95% CI):", "",
                "| baseline | metric | baseline | tuned − baseline | 95% CI |", "|---|---|---|---|---|"]
        for name, b in base.items():
            for k, m in (b.get("metrics") or {}).items():
                ci = m.get("ci95") or [float("nan"), float("nan")]
                out.append(f"| {name} | {k} | {m['value']:.3f} | {m['delta']:+.3f} | [{ci[0]:+.3f}, {ci[1]:+.3f}] |")
    return out + [""]


def write_card(run_dir: Path) -> Path:
    """Write ``RUN/README.md``; returns its path."""
    run_dir = Path(run_dir)
    man = _read(run_dir / "manifest.json")
    lines = [*_header(man), f"# {run_dir.name}", "",
             f"A LoRA adapter for `{man.get('config', {}).get('base_model')}`, trained by the workbench "
             f"(`python -m train`) on an approved, frozen snapshot. Load it with PEFT on the base model, or "
             f"export it: `python -m train export --run {run_dir}`.", "",
             *_training(run_dir, man), *_lineage(man), *_evaluation(run_dir),
             "## Chat template", "",
             "The base model's own template, unchanged (`chat_template.jinja`): serve the adapter with it. "
             "Loss was on assistant turns and their end-of-turn token only.", "",
             "## Intended use and limits", "",
             "Built for the task and data of its snapshot (the held-out numbers above are on that data's "
             "held-out split): it is not evaluated for other tasks, languages or safety. Synthetic rows, if any, "
             "are counted under *by origin*; check them before relying on the adapter.", ""]
    out = run_dir / "README.md"
    out.write_text("\n".join(lines))
    return out
