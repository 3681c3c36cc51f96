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


def _header(man: dict, library: str = "peft", tags: list[str] | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    model = man.get("model") or {}
    base = model.get("id") or man.get("config", {}).get("base_model", "")
    tags = tags or ["workbench", "peft", "qlora" if man.get("quantization") == "nf4" else "lora", "sft"]
    return ["---", f"base_model: {base}", f"library_name: {library}", "pipeline_tag: text-generation",
            "tags:", *[f"- {t}" for t in tags], *extra, "---", ""]


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


def _num(x) -> str:
    """Three significant digits: the export's differences run from 1e-6 to 10."""
    return f"{x:.3g}" if isinstance(x, (int, float)) else str(x)


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
    return _write(run_dir / "README.md", _header(man), run_dir.name,
                  f"A LoRA adapter for `{man.get('config', {}).get('base_model')}`, trained by the workbench "
                  f"(`python -m train`) on an approved, frozen snapshot. Load it with PEFT on the base model, or "
                  f"export it: `python -m train export --run {run_dir}`.",
                  [*_training(run_dir, man), *_lineage(man), *_evaluation(run_dir),
                   "## Chat template", "",
                   "The base model's own template, unchanged (`chat_template.jinja`): serve the adapter with it. "
                   "Loss was on assistant turns and their end-of-turn token only.", ""],
                  "Built for the task and data of its snapshot (the held-out numbers above are on that data's "
                  "held-out split): it is not evaluated for other tasks, languages or safety. Synthetic rows, if any, "
                  "are counted under *by origin*; check them before relying on the adapter.")


def _write(path: Path, header: list[str], title: str, intro: str, sections: list[str], limits: str) -> Path:
    path.write_text("\n".join([*header, f"# {title}", "", intro, "", *sections, "## Intended use and limits", "",
                               limits, ""]))
    return path


# ------------------------------------------------------------------ export folders

EXPORT_LIBRARY = {"merged": "transformers", "gguf": "gguf", "ollama": "gguf"}


def export_files(out_dir: Path) -> list[tuple[str, int]]:
    """Every file of an export folder but its card, with its size in bytes."""
    return [(p.name, p.stat().st_size) for p in sorted(Path(out_dir).iterdir())
            if p.is_file() and p.name != "README.md"]


def _export_header(man: dict, rep: dict) -> list[str]:
    fmt = rep.get("format", "merged")
    dtype = (rep.get("gguf") or {}).get("dtype")
    tags = ["workbench", "lora-merged", "sft"] + {"gguf": ["gguf", "llama.cpp"],
                                                  "ollama": ["gguf", "llama.cpp", "ollama"]}.get(fmt, ["safetensors"])
    tags += [dtype] if dtype else []
    return _header(man, EXPORT_LIBRARY.get(fmt, "transformers"), tags,
                   (f"quantization: {dtype or 'none (float32 safetensors)'}",))


def _llamacpp_rows(g: dict) -> list[tuple[str, str]]:
    lc = g.get("llama_cpp") or {}
    if not lc.get("checked"):
        return [("llama.cpp", f"not checked ({lc.get('reason')})")]
    n = lc.get("prompts")
    div = "; ".join(f"prompt {r['prompt']} at token {r.get('diverges_at')} (reference margin {_num(r.get('merged_margin'))})"
                    for r in lc.get("per_prompt", []) if not r.get("identical"))
    rows = [(f"llama.cpp {lc.get('version')}: greedy tokens = the {g.get('reference')}'s",
             f"{lc.get('identical_greedy_outputs')}/{n}" + (f" (near-tie divergences: {div})" if div else ""))]
    if g.get("reference") != "merged model":
        rows.append(("llama.cpp: greedy tokens = the merged model's", f"{lc.get('identical_to_merged')}/{n}"))
    return rows + [("llama.cpp: chat template / tokenizer identical to training",
             f"{lc.get('template_conversations_checked', 0) - len(lc.get('template_mismatches') or [])}/"
             f"{lc.get('template_conversations_checked')} conversations, "
             f"{lc.get('tokenizer_probes_checked', 0) - len(lc.get('tokenizer_mismatches') or [])}/"
             f"{lc.get('tokenizer_probes_checked')} strings")]


def _parity_rows(rep: dict) -> list[tuple[str, str]]:
    rows = [("merged vs base+adapter (PEFT) max \\|Δlogit\\|", _num(rep.get("merge_max_abs_logit_diff")))]
    if rep.get("format") == "merged":
        return rows + [("adapter effect vs base max \\|Δlogit\\|", _num(rep.get("adapter_effect_max_abs_logit"))),
                       ("saved folder reloaded vs merged max \\|Δlogit\\|", _num(rep.get("reload_max_abs_logit_diff")))]
    g = rep.get("gguf") or {}
    rows += [("GGUF weights read back into the merged model, max \\|Δlogit\\|",
              _num(g.get("weights_readback_max_abs_logit_diff"))), *_llamacpp_rows(g)]
    if g.get("transformers_checked"):
        rows.append(("transformers' GGUF loader (second opinion): identical greedy, max \\|Δlogit\\|, top-1",
                     f"{g.get('identical_greedy_outputs')}/{g.get('prompts')}, {_num(g.get('max_abs_logit_diff'))}, "
                     f"{_num(g.get('top1_agreement'))}"))
    m = rep.get("modelfile")
    if m:
        rows.append((f"Modelfile TEMPLATE ({m.get('family')}) = training prompt",
                     f"{m.get('conversations_checked')}/{m.get('conversations_checked')} conversations"))
    return rows + [("check prompts", str(rep.get("prompts_source"))), ("export seconds", str(rep.get("seconds")))]


def _export_section(out_dir: Path, rep: dict) -> list[str]:
    fmt, g = rep.get("format", "merged"), rep.get("gguf") or {}
    gguf = next((n for n, _ in export_files(out_dir) if n.endswith(".gguf")), "model.gguf")
    use = {"merged": f"`AutoModelForCausalLM.from_pretrained(\"{out_dir.name.removesuffix('.partial')}\")` (transformers), or vLLM / TGI on the folder",
           "gguf": f"`llama-server -m {gguf} --jinja` (llama.cpp; the GGUF carries the training chat template)",
           "ollama": "`ollama create NAME -f Modelfile && ollama run NAME`"}[fmt]
    out = ["## Export", "", f"Format `{fmt}`, weights `{g.get('dtype') or 'float32'}`"
           + (f" ({rep['quantizer']})" if rep.get("quantizer") else "") + f". Serve: {use}.", "",
           "| file | bytes | MB |", "|---|---|---|",
           *[f"| {n} | {b} | {b / 1e6:.1f} |" for n, b in export_files(out_dir)], "",
           "Checked at export (`export_report.json` has every number):", "", "| check | result |", "|---|---|",
           *[f"| {k} | {v} |" for k, v in _parity_rows(rep)], ""]
    return out


def write_export_card(out_dir: Path, run_dir: Path) -> Path:
    """Write ``OUT/README.md`` for an export folder: HF metadata for the format, the export's own facts (from its
    ``export_report.json`` and files) and the run's card sections (from the run's files); returns its path."""
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    man, rep = _read(run_dir / "manifest.json"), _read(out_dir / "export_report.json")
    base = man.get("config", {}).get("base_model")
    return _write(out_dir / "README.md", _export_header(man, rep), f"{run_dir.name} ({rep.get('format')})",
                  f"`{base}` with the workbench's LoRA adapter from run `{run_dir}` folded into its weights, exported "
                  f"by `python -m train export`. Training and evaluation below are the run's (the adapter, before "
                  f"export); the export section says how closely this export reproduces it.",
                  [*_export_section(out_dir, rep), *_training(run_dir, man), *_lineage(man), *_evaluation(run_dir)],
                  "Built for the task and data of its snapshot: it is not evaluated for other tasks, languages or "
                  "safety. Quantised weights (q8_0, K-quants) can change outputs at near-ties; judge a quantised file "
                  "on held-out data before serving it.")
