"""``python -m evaluate --run RUN_DIR`` — tuned adapter vs base model on the snapshot's held-out split.

Greedy, batched generation with the chat template the adapter was trained
with; scores per task type (see :mod:`evaluate.metrics`) beside reference
baselines (:mod:`evaluate.baselines`), on the held-out split and on every
leakage-cleared ``--eval`` file (:mod:`evaluate.external`); writes
``report.md``, ``report.json``, ``report.png`` and ``predictions.jsonl`` into
the run folder (:mod:`evaluate.report`).  ``python -m evaluate compare A B``
compares two runs from their stored predictions (:mod:`evaluate.compare`);
``python -m evaluate ablate --snapshot S`` trains and scores variants of a
snapshot (:mod:`evaluate.ablate`).
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from curate.models import DEFAULT_EMBED as DEFAULT_EMBEDDER

from .baselines import EMBEDDING, MAJORITY, REFERENCE, EmbeddingClassifier, Embedder, majority_label, user_text
from .external import EvalSet, Item, NotCleared, clearance, load_eval_set
from .report import PREDICTIONS, score_set, table, write_files, write_predictions


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


def base_model_path(man: dict) -> Path:
    """The run's base model folder: the one training resolved, else the configured name resolved again."""
    from curate.models import ModelNotFound, run_base_model

    try:
        return run_base_model(man, man["config"]["base_model"])
    except ModelNotFound as e:
        raise SystemExit(f"error: {e}") from None


def read_manifest(run_dir: Path) -> dict[str, Any]:
    man_p = run_dir / "manifest.json"
    if not man_p.exists():
        raise SystemExit(f"error: {run_dir} has no manifest.json — is it a finished `python -m train` run?")
    return json.loads(man_p.read_text())


def prepare(run_dir: Path, limit: int | None = None, eval_files: Sequence[str] = (), text_column: str | None = None,
            reference_column: str | None = None) -> tuple[dict, Path, list[EvalSet], list[dict]]:
    """Everything checked before a model is loaded: the manifest, the snapshot (verified), the held-out set,
    the eval files (each cleared by a leakage report, else :class:`SystemExit` naming the report to produce)."""
    from curate import snapshot as snap

    man = read_manifest(run_dir)
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
    held = EvalSet("heldout", [Item(r["id"], list(r["messages"])[:-1], list(r["messages"])[-1]["content"], r.get("label"))
                               for r in rows])
    train = snap.read_rows(sdir / "train.parquet", columns=["id", "messages", "label"])
    labels = {r["label"] for r in train if r.get("label")}
    sets = [held]
    for f in dict.fromkeys(eval_files):  # a file named twice is scored once
        try:
            report = clearance(f, sdir)
            es = load_eval_set(f, text_column, reference_column, labels)
        except (NotCleared, ValueError, FileNotFoundError) as e:
            raise SystemExit(f"error: {e}") from None
        es.leakage_report = report
        if limit:
            es.items = es.items[:limit]
        sets.append(es)
    return man, sdir, sets, train


def load_base(run_dir: Path, man: dict):
    """The run's tokenizer (with the chat template it was trained with) and its base model, on CUDA when there."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.recipe import attention_implementation

    tok = AutoTokenizer.from_pretrained(run_dir)
    tok.chat_template = (run_dir / man.get("chat_template", "chat_template.jinja")).read_text()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cuda = torch.cuda.is_available()
    base_path = base_model_path(man)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16 if cuda else torch.float32,
                                                attn_implementation=attention_implementation(base_path))
    return tok, base.cuda() if cuda else base


def model_predictions(run_dir: Path, man: dict, sets: list[EvalSet], max_new_tokens: int | None, batch_size: int
                      ) -> tuple[dict[str, dict[str, list[str]]], dict[str, int]]:
    """Base (adapter disabled) and tuned greedy replies per set, and the max new tokens each set used."""
    from peft import PeftModel

    tok, base = load_base(run_dir, man)
    model = PeftModel.from_pretrained(base, run_dir / man.get("adapter", "adapter"))
    model.eval()
    preds: dict[str, dict[str, list[str]]] = {}
    mnt: dict[str, int] = {}
    for es in sets:
        prompts = [it.prompt for it in es.items]
        mnt[es.name] = max_new_tokens or min(256, max(len(tok(it.reference, add_special_tokens=False)["input_ids"])
                                                      for it in es.items) + 4)
        tag = "" if es.name == "heldout" else f" {Path(es.name).name}"
        with model.disable_adapter():
            b = generate(model, tok, prompts, mnt[es.name], batch_size, "base" + tag)
        preds[es.name] = {"base": b, "tuned": generate(model, tok, prompts, mnt[es.name], batch_size, "tuned" + tag)}
    return preds, mnt


def baseline_predictions(sets: list[EvalSet], train: list[dict], embedder: str | None = DEFAULT_EMBEDDER,
                         embed_fn: Embedder | None = None, reference: dict[str, Any] | None = None,
                         max_tokens: dict[str, int] | None = None
                         ) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict], dict[str, dict[str, str]]]:
    """Baseline predictions per set (label baselines only on closed label sets), what each baseline was
    (``info``), and why a baseline was not computed for a set (``skipped``)."""
    preds: dict[str, dict[str, list[str]]] = {es.name: {} for es in sets}
    info: dict[str, dict] = {}
    skipped: dict[str, dict[str, str]] = {es.name: {} for es in sets}
    labelled = [r for r in train if r.get("label")]
    closed = [es for es in sets if es.closed]
    for es in sets:
        if not es.closed:
            why = "open-ended replies: not every reference is a label"
            skipped[es.name].update({MAJORITY: why, EMBEDDING: why})
    if closed and not labelled:
        for es in closed:
            skipped[es.name].update({MAJORITY: "no labelled train rows", EMBEDDING: "no labelled train rows"})
    elif closed:
        lab = majority_label([r["label"] for r in labelled])
        info[MAJORITY] = {"label": lab, "train_rows": len(labelled)}
        for es in closed:
            preds[es.name][MAJORITY] = [lab] * len(es.items)
        if embed_fn is None and embedder in (None, "", "none"):
            for es in closed:
                skipped[es.name][EMBEDDING] = "disabled (--embedder none)"
        else:
            label = "injected embedder" if embed_fn is not None else (embedder or DEFAULT_EMBEDDER)
            try:
                if embed_fn is None:
                    from .baselines import sentence_embedder

                    embed_fn = sentence_embedder(embedder or DEFAULT_EMBEDDER)
                clf = EmbeddingClassifier(embed_fn).fit([user_text(r["messages"]) for r in labelled],
                                                        [r["label"] for r in labelled])
                info[EMBEDDING] = {"embedder": label,
                                   "classifier": "LogisticRegression(C=1.0)", "train_rows": len(labelled)}
                for es in closed:
                    preds[es.name][EMBEDDING] = clf.predict([user_text(it.prompt) for it in es.items])
            except Exception as e:  # noqa: BLE001 — a missing embedder must not cost the whole evaluation
                for es in closed:
                    skipped[es.name][EMBEDDING] = f"{type(e).__name__}: {e}"
    if reference and reference.get("model"):
        from .baselines import reference_replies

        info[REFERENCE] = {"model": reference["model"], "base_url": reference.get("base_url"), "errors": 0}
        for es in sets:
            try:
                out, errors = reference_replies(
                    [it.prompt for it in es.items], reference["model"], reference.get("base_url"),
                    reference.get("api_key_env") or "OPENAI_API_KEY", (max_tokens or {}).get(es.name, 64),
                    reference.get("concurrency", 4), reference.get("timeout_s", 60.0))
            except Exception as e:  # noqa: BLE001
                out, errors = None, [f"{type(e).__name__}: {e}"]
            info[REFERENCE]["errors"] += len(errors)
            if out is None or len(errors) == len(es.items):
                skipped[es.name][REFERENCE] = f"every request failed, first: {errors[0]}"
            else:
                preds[es.name][REFERENCE] = out
    return preds, info, skipped


def build_report(run_dir: Path, man: dict, sets: list[EvalSet], preds: dict[str, dict[str, list[str]]],
                 info: dict[str, dict], skipped: dict[str, dict[str, str]], max_new_tokens: dict[str, int],
                 generation_s: float = 0.0) -> dict[str, Any]:
    """Score every set, write predictions.jsonl, report.json, report.md and report.png; return the report."""
    held, files = sets[0], sets[1:]
    hb = score_set(held, preds["heldout"], info, skipped["heldout"])
    report = {"n": hb["n"], "run": str(run_dir), "snapshot": man["snapshot"]["name"],
              "closed_label_set": hb["closed_label_set"], "max_new_tokens": max_new_tokens["heldout"],
              "generation_s": round(generation_s, 1), "metrics": hb["metrics"], "baselines": hb["baselines"],
              "baselines_skipped": hb["baselines_skipped"], "examples": hb["examples"], "predictions": PREDICTIONS,
              "eval_files": []}
    for es in files:
        b = score_set(es, preds[es.name], info, skipped[es.name])
        report["eval_files"].append({"path": es.path, "sha256": es.sha256, "leakage_report": es.leakage_report,
                                     "max_new_tokens": max_new_tokens[es.name], "skipped_rows": es.skipped, **b})
    write_predictions(run_dir / PREDICTIONS, sets, preds)
    write_files(run_dir, report, man["config"]["base_model"])
    return report


def evaluate_run(run_dir: Path, limit: int | None = None, batch_size: int = 16, max_new_tokens: int | None = None,
                 threads: int = 0, *, eval_files: Sequence[str] = (), text_column: str | None = None,
                 reference_column: str | None = None, embedder: str | None = DEFAULT_EMBEDDER,
                 reference: dict[str, Any] | None = None, embed_fn: Callable | None = None) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    man, _, sets, train = prepare(run_dir, limit, eval_files, text_column, reference_column)
    t0 = time.time()
    preds, mnt = model_predictions(run_dir, man, sets, max_new_tokens, batch_size)
    gen_s = time.time() - t0
    extra, info, skipped = baseline_predictions(sets, train, embedder, embed_fn, reference, mnt)
    for name, p in extra.items():
        preds[name].update(p)
    report = build_report(run_dir, man, sets, preds, info, skipped, mnt, gen_s)
    from train.card import write_card

    write_card(run_dir)  # the model card gains the evaluation table
    return report


def _summary(rep: dict[str, Any], run: Path) -> dict[str, Any]:
    def slim(b: dict) -> dict:
        return {"n": b["n"], "metrics": b["metrics"], "baselines": {k: v["metrics"] for k, v in b["baselines"].items()}}

    return {**slim(rep), "eval_files": [{"path": ef["path"], **slim(ef)} for ef in rep["eval_files"]],
            "report": str(run / "report.json")}


def _print_set(title: str, b: dict) -> None:
    print(title)
    print(table(b["metrics"]))
    for name, bl in b["baselines"].items():
        print("  " + name + ": " + ", ".join(f"{k} {m['value']:.3f} (tuned {m['delta']:+.3f} "
                                               f"[{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}])"
                                               for k, m in bl["metrics"].items()))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate", description=textwrap.fill(
        "Compare the tuned adapter of a run with its base model on the held-out split of the run's snapshot "
        "(verified again first), and on every --eval file. Greedy, batched generation with the run's chat template "
        "for both; scores by task type: label accuracy and macro-F1 for closed label sets, exact match, ROUGE-L, JSON "
        "validity for JSON answers, each with base, tuned, delta and a 95% paired bootstrap interval. Reference "
        "baselines beside them, each against the tuned model with the same paired bootstrap: for label tasks the "
        "train split's majority class and an embedding classifier (logistic regression on sentence embeddings, fitted "
        "on the train split only); for any task a reference model's replies when --reference-model is given. Writes "
        "report.md, report.json, report.png and predictions.jsonl (every item's prediction by every model) into the "
        "run folder.", 100),
        epilog=("Compare two runs from their stored predictions (no generation):\n"
                "  python -m evaluate compare RUN_A RUN_B [--eval FILE] [--json]   (see: python -m evaluate compare --help)\n"
                "What the curation bought (variants of a snapshot trained and scored alike):\n"
                "  python -m evaluate ablate --snapshot S [--variants ...] [--steps N] [--seeds K]   (see: ... ablate --help)\n"
                "Guide: docs/evaluate.md"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished `python -m train` run folder")
    p.add_argument("--eval", nargs="+", metavar="FILE", default=[],
                   help="external eval files, each scored and reported on its own: chat JSONL ({\"messages\": [...]}, the "
                        "last assistant turn is the reference), or JSONL/CSV/TSV/Parquet with a text column and a "
                        "reference column — the formats `curate leakage --against` reads. Refused (exit 1, naming the "
                        "leakage report to produce) unless a `python -m curate leakage --against FILE` report in the "
                        "workspace's reports/ folder cleared this file (same content) against the run's snapshot")
    p.add_argument("--text-column", metavar="COL",
                   help="--eval files: column/key holding the prompt text (default: 'messages' in JSONL, else 'text'); "
                        "give the same one as to `curate leakage`")
    p.add_argument("--reference-column", metavar="COL",
                   help="--eval files without chat messages: column/key holding the expected reply (default: the first "
                        "of label, reference, answer, output, completion, category, intent that the row has)")
    p.add_argument("--limit", type=int, help="evaluate only the first N held-out examples (by id), and the first N "
                                             "rows of each --eval file")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size (default 16)")
    p.add_argument("--max-new-tokens", type=int, help="default: longest reference of the set + 4 tokens (max 256)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all)")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER, metavar="MODEL",
                   help="sentence-transformers model of the embedding-classifier baseline on label tasks: the embedded "
                        "all-MiniLM-L6-v2 (default) or a local folder; 'none' skips that baseline")
    p.add_argument("--reference-model", metavar="NAME",
                   help="also score this model's replies as a baseline (greedy, same prompts, same max new tokens), "
                        "through an OpenAI-compatible chat completions API")
    p.add_argument("--reference-base-url", metavar="URL",
                   help="that API's base URL, e.g. http://localhost:8000/v1 (vLLM, Ollama, llama.cpp, "
                        "`python -m synth serve`); default: the openai package's (OPENAI_BASE_URL, else OpenAI)")
    p.add_argument("--reference-api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default OPENAI_API_KEY; not needed with a base URL)")
    p.add_argument("--reference-concurrency", type=int, default=4, help="parallel requests to the reference model (default 4)")
    p.add_argument("--reference-timeout", type=float, default=60.0, help="seconds per reference request (default 60)")
    p.add_argument("--json", action="store_true",
                   help='print {"n", "metrics": {name: {base, tuned, delta, ci95}}, "baselines": {baseline: {name: '
                        '{value, tuned, delta, ci95}}}, "eval_files": [{path, n, metrics, baselines}], "report": PATH}')
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from .compare import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["ablate"]:
        from .ablate import main as ablate_main

        return ablate_main(argv[1:])
    a = parser().parse_args(argv)
    run = Path(a.run)
    if not run.is_dir():
        print(f"error: run folder {run} does not exist", file=sys.stderr)
        return 2
    reference = ({"model": a.reference_model, "base_url": a.reference_base_url, "api_key_env": a.reference_api_key_env,
                  "concurrency": a.reference_concurrency, "timeout_s": a.reference_timeout} if a.reference_model else None)
    rep = evaluate_run(run, a.limit, a.batch_size, a.max_new_tokens, a.threads, eval_files=a.eval,
                       text_column=a.text_column, reference_column=a.reference_column, embedder=a.embedder,
                       reference=reference)
    if a.json:
        print(json.dumps(_summary(rep, run), indent=2))
    else:
        _print_set(f"held-out n={rep['n']}  ({run / 'report.md'})", rep)
        for ef in rep["eval_files"]:
            _print_set(f"\n{ef['path']} n={ef['n']}", ef)
    return 0


if __name__ == "__main__":
    sys.exit(main())
