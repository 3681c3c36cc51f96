"""``python -m evaluate --run RUN_DIR`` — tuned adapter vs base model on the snapshot's held-out split.

Greedy, batched generation with the chat template the adapter was trained
with; scores per task type (see :mod:`evaluate.metrics`); writes
``report.md``, ``report.json`` and ``report.png`` into the run folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def generate(model, tok, prompts: list[list[dict]], max_new_tokens: int, batch_size: int, desc: str) -> list[str]:
    import torch
    from tqdm import tqdm

    from train.template import conform_messages, render, stop_token_ids

    tok.padding_side = "left"
    tpl = tok.chat_template
    texts = [render(tok, conform_messages(tok, p, tpl), tpl, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
    out: list[str] = [""] * len(texts)
    end_ids = stop_token_ids(tok, tpl)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", file=sys.stderr):
        idx = order[s : s + batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end_ids,
                                 pad_token_id=tok.pad_token_id)
        for j, i in enumerate(idx):
            out[i] = tok.decode(gen[j, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return out


def _chart(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics)
    base = [metrics[n]["base"] for n in names]
    tuned = [metrics[n]["tuned"] for n in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], base, 0.4, label="base")
    ax.bar([i + 0.2 for i in x], tuned, 0.4, label="tuned")
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"held-out: base vs tuned ({path.parent.name})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(metrics: dict) -> str:
    lines = ["| metric | base | tuned | delta | 95% CI of delta |", "|---|---|---|---|---|"]
    for k, m in metrics.items():
        lines.append(f"| {k} | {m['base']:.3f} | {m['tuned']:.3f} | {m['delta']:+.3f} | [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}] |")
    return "\n".join(lines)


def base_model_path(man: dict) -> Path:
    """The run's base model folder: the one training resolved, else the configured name resolved again."""
    from curate.models import ModelNotFound, resolve_model

    recorded = (man.get("model") or {}).get("path") or man["config"].get("base_model_path")
    if recorded and (Path(recorded) / "config.json").exists():
        return Path(recorded)
    try:
        return resolve_model(man["config"]["base_model"]).path
    except ModelNotFound as e:
        raise SystemExit(f"error: {e}") from None


def evaluate_run(run_dir: Path, limit: int | None = None, batch_size: int = 16, max_new_tokens: int | None = None,
                 threads: int = 0) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate import snapshot as snap
    from train.recipe import attention_implementation

    from .metrics import score

    if threads:
        torch.set_num_threads(threads)
    man_p = run_dir / "manifest.json"
    if not man_p.exists():
        raise SystemExit(f"error: {run_dir} has no manifest.json — is it a finished `python -m train` run?")
    man = json.loads(man_p.read_text())
    sdir = Path(man["snapshot"]["path"])
    problems = snap.verify_dir(sdir)
    if problems:
        raise SystemExit(f"error: snapshot {sdir} failed verification: {'; '.join(problems)}")
    rows = snap.load(sdir, split="heldout")
    rows.sort(key=lambda r: r["id"])
    if limit:
        rows = rows[:limit]
    if not rows:
        raise SystemExit("error: the snapshot's held-out split is empty; nothing to evaluate")
    prompts = [list(r["messages"])[:-1] for r in rows]
    refs = [list(r["messages"])[-1]["content"] for r in rows]
    closed = all(r.get("label") for r in rows) and all(ref.strip() == r["label"] for ref, r in zip(refs, rows))
    tok = AutoTokenizer.from_pretrained(run_dir)
    tok.chat_template = (run_dir / man.get("chat_template", "chat_template.jinja")).read_text()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if max_new_tokens is None:
        longest = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in refs)
        max_new_tokens = min(256, longest + 4)
    cuda = torch.cuda.is_available()
    base_path = base_model_path(man)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16 if cuda else torch.float32,
                                                attn_implementation=attention_implementation(base_path))
    if cuda:
        base = base.cuda()
    model = PeftModel.from_pretrained(base, run_dir / man.get("adapter", "adapter"))
    model.eval()
    t0 = time.time()
    with model.disable_adapter():
        base_preds = generate(model, tok, prompts, max_new_tokens, batch_size, "base")
    tuned_preds = generate(model, tok, prompts, max_new_tokens, batch_size, "tuned")
    metrics = score(base_preds, tuned_preds, refs, closed)
    report = {"n": len(rows), "run": str(run_dir), "snapshot": man["snapshot"]["name"], "closed_label_set": closed,
              "max_new_tokens": max_new_tokens, "generation_s": round(time.time() - t0, 1), "metrics": metrics,
              "examples": [{"id": r["id"], "prompt": p[-1]["content"], "reference": ref, "base": b, "tuned": t}
                           for r, p, ref, b, t in zip(rows, prompts, refs, base_preds, tuned_preds)][:50]}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    md = [f"# Evaluation of {run_dir.name}", "",
          f"Held-out split of snapshot `{man['snapshot']['name']}`: {len(rows)} examples, greedy decoding "
          f"(max {max_new_tokens} new tokens). Base = `{man['config']['base_model']}` without the adapter.", "",
          table(metrics), "", "## Examples", "", "| reference | base | tuned |", "|---|---|---|"]
    for e in report["examples"][:15]:
        md.append(f"| {e['reference'][:60]} | {e['base'][:60]} | {e['tuned'][:60]} |".replace("\n", " "))
    (run_dir / "report.md").write_text("\n".join(md) + "\n")
    _chart(metrics, run_dir / "report.png")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluate", description=(
        "Compare the tuned adapter of a run with its base model on the held-out split of the run's snapshot "
        "(verified again first). Greedy, batched generation with the run's chat template for both; scores by task "
        "type: label accuracy and macro-F1 for closed label sets, exact match, ROUGE-L, JSON validity for JSON "
        "answers, each with base, tuned, delta and a 95% paired bootstrap interval. Writes report.md, report.json "
        "and report.png into the run folder. Guide: docs/train.md"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished `python -m train` run folder")
    p.add_argument("--limit", type=int, help="evaluate only the first N held-out examples (by id)")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size (default 16)")
    p.add_argument("--max-new-tokens", type=int, help="default: longest reference + 4 tokens (max 256)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    p.add_argument("--json", action="store_true", help='print {"n", "metrics": {name: {base, tuned, delta, ci95}}}')
    a = p.parse_args(argv)
    run = Path(a.run)
    if not run.is_dir():
        print(f"error: run folder {run} does not exist", file=sys.stderr)
        return 2
    rep = evaluate_run(run, a.limit, a.batch_size, a.max_new_tokens, a.threads)
    if a.json:
        print(json.dumps({"n": rep["n"], "metrics": rep["metrics"]}, indent=2))
    else:
        print(f"held-out n={rep['n']}  ({run / 'report.md'})")
        print(table(rep["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
