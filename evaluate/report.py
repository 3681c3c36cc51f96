"""What an evaluation writes into the run folder: ``report.json``, ``report.md``, ``report.png``, for label
tasks ``confusion.png`` (the tuned model's confusion matrix on the held-out split, :func:`confusion_counts`), and
``predictions.jsonl`` (every item's prompt, reference and the prediction of every model and baseline, so
``python -m evaluate compare`` recomputes everything without generating again)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .baselines import DESCRIPTIONS, EMBEDDING, MAJORITY, REFERENCE
from .external import EvalSet
from .metrics import first_line, paired_scores, score

BASELINES = (MAJORITY, EMBEDDING, REFERENCE)
PREDICTIONS = "predictions.jsonl"
N_EXAMPLES = 50
CONFUSION_TOP = 20  # labels with their own row and column; the rest are pooled
OTHER_LABELS = "(other labels)"
INVALID = "(invalid)"


def table(metrics: dict) -> str:
    lines = ["| metric | base | tuned | delta | 95% CI of delta |", "|---|---|---|---|---|"]
    for k, m in metrics.items():
        lines.append(f"| {k} | {m['base']:.3f} | {m['tuned']:.3f} | {m['delta']:+.3f} | [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}] |")
    return "\n".join(lines)


def baseline_table(baselines: dict) -> str:
    """One row per metric: each baseline's score and the tuned model's lead over it with its 95 % CI."""
    names = list(baselines)
    metrics = list(dict.fromkeys(k for b in baselines.values() for k in b["metrics"]))
    lines = ["| metric | " + " | ".join(f"{n} | tuned − {n} [95% CI]" for n in names) + " |",
             "|---|" + "---|---|" * len(names)]
    for k in metrics:
        cells = []
        for n in names:
            m = baselines[n]["metrics"].get(k)
            cells += ([f"{m['value']:.3f}", f"{m['delta']:+.3f} [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]"] if m
                      else ["—", "—"])
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def score_set(es: EvalSet, preds: dict[str, list[str]], info: dict[str, dict] | None = None,
              skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """One set's block of the report: metrics (base vs tuned), baselines (each vs tuned), examples."""
    refs = [i.reference for i in es.items]
    closed = es.closed
    out: dict[str, Any] = {"n": len(es.items), "closed_label_set": closed,
                           "metrics": score(preds["base"], preds["tuned"], refs, closed), "baselines": {},
                           "baselines_skipped": dict(skipped or {})}
    for name in BASELINES:
        if name not in preds:
            continue
        ps = paired_scores(preds[name], preds["tuned"], refs, closed)
        out["baselines"][name] = {
            "description": DESCRIPTIONS[name], **(info or {}).get(name, {}),
            "metrics": {k: {"value": m["a"], "tuned": m["b"], "delta": m["delta"], "ci95": m["ci95"]} for k, m in ps.items()}}
    out["examples"] = [{"id": it.id, "prompt": it.prompt[-1]["content"] if it.prompt else "", "reference": it.reference,
                        "base": preds["base"][j], "tuned": preds["tuned"][j],
                        "baselines": {n: preds[n][j] for n in BASELINES if n in preds}}
                       for j, it in enumerate(es.items[:N_EXAMPLES])]
    return out


def write_predictions(path: Path, sets: list[EvalSet], preds: dict[str, dict[str, list[str]]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for es in sets:
            for j, it in enumerate(es.items):
                f.write(json.dumps({"set": es.name, "file_sha256": es.sha256, "id": it.id, "prompt": it.prompt,
                                    "reference": it.reference, "label": it.label,
                                    "predictions": {n: p[j] for n, p in preds[es.name].items()}},
                                   ensure_ascii=False) + "\n")


def read_predictions(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / PREDICTIONS
    if not p.exists():
        raise FileNotFoundError(f"{run_dir} has no {PREDICTIONS} (evaluated before predictions were stored, or not "
                                f"evaluated): run `python -m evaluate --run {run_dir}` first")
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


def _chart(blocks: list[tuple[str, dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [1.6 * len(b["metrics"]) + 1 for _, b in blocks]
    fig, axes = plt.subplots(1, len(blocks), figsize=(sum(widths) + 1, 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (name, b) in zip(axes[0], blocks):
        names = list(b["metrics"])
        series = [("base", [b["metrics"][n]["base"] for n in names]), ("tuned", [b["metrics"][n]["tuned"] for n in names])]
        series += [(bn, [bl["metrics"].get(n, {}).get("value", 0.0) for n in names]) for bn, bl in b["baselines"].items()]
        w = 0.8 / len(series)
        for s, (label, vals) in enumerate(series):
            ax.bar([i - 0.4 + w * (s + 0.5) for i in range(len(names))], vals, w, label=label)
        ax.set_xticks(list(range(len(names))), names, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{Path(name).name} (n={b['n']})", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_set(b: dict) -> list[str]:
    L = [table(b["metrics"]), ""]
    if b["baselines"]:
        L += ["Reference baselines (each against the tuned model, same paired bootstrap):", "",
              baseline_table(b["baselines"]), ""]
    for name, why in b["baselines_skipped"].items():
        L.append(f"- {name}: not computed ({why})")
    return L + ([""] if b["baselines_skipped"] else [])


def confusion_counts(refs: list[str], preds: list[str], top: int = CONFUSION_TOP) -> dict[str, Any]:
    """Confusion matrix of a label task: a row per reference label, a column per predicted label.

    The label set is the references' labels. A prediction is read as ``label_accuracy`` reads it (its first line,
    stripped). The ``top`` most frequent reference labels (ties: alphabetical) get their own row and column; when
    there are more labels, the others share one ``OTHER_LABELS`` row and column; a prediction outside the label set
    goes to the ``INVALID`` column. Every item is counted once: the counts sum to ``len(refs)``."""
    freq = Counter(r.strip() for r in refs)
    shown = sorted(freq, key=lambda lab: (-freq[lab], lab))[:top]
    pooled = len(freq) - len(shown)
    rows = shown + ([OTHER_LABELS] if pooled else [])
    cols = rows + [INVALID]
    where = {lab: i for i, lab in enumerate(shown)}

    def col(lab: str) -> int:
        return where.get(lab, len(shown)) if lab in freq else len(cols) - 1

    counts = [[0] * len(cols) for _ in rows]
    for r, p in zip(refs, preds):
        counts[col(r.strip())][col(first_line(p))] += 1
    return {"rows": rows, "columns": cols, "counts": counts, "pooled_labels": pooled, "n": len(refs),
            "correct": sum(first_line(p) == r.strip() for r, p in zip(refs, preds)),
            "invalid": sum(row[-1] for row in counts)}


def _confusion_chart(conf: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, counts = conf["rows"], conf["columns"], conf["counts"]
    fig, ax = plt.subplots(figsize=(2.5 + 0.42 * len(cols), 1.8 + 0.36 * len(rows)))
    ax.imshow(counts, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(cols)), [c[:40] for c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [r[:40] for r in rows], fontsize=7)
    peak = max((c for row in counts for c in row), default=0) or 1
    for i, row in enumerate(counts):
        for j, c in enumerate(row):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=6, color="white" if c > peak / 2 else "black")
    ax.set_xlabel("predicted (tuned)", fontsize=8)
    ax.set_ylabel("reference", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confusion(run_dir: Path, report: dict[str, Any]) -> list[str]:
    """For a label task: ``confusion.png`` and ``report["confusion"]`` from the held-out tuned predictions
    (``predictions.jsonl``); returns the report.md section."""
    if not report.get("closed_label_set") or not (run_dir / PREDICTIONS).exists():
        return []
    rows = [r for r in read_predictions(run_dir) if r["set"] == "heldout"]
    conf = confusion_counts([r["reference"] for r in rows], [r["predictions"]["tuned"] for r in rows])
    report["confusion"] = {"set": "heldout", "model": "tuned", "file": "confusion.png", **conf}
    report["plots"].append("confusion.png")
    shown = len(conf["rows"]) - bool(conf["pooled_labels"])
    which = (f"the {shown} most frequent labels, the other {conf['pooled_labels']} pooled as `{OTHER_LABELS}`"
             if conf["pooled_labels"] else f"all {shown} labels")
    _confusion_chart(conf, run_dir / "confusion.png",
                     f"tuned on held-out (n={conf['n']}): {conf['correct']} correct, {conf['invalid']} invalid")
    return ["## Confusion matrix (tuned, held-out)", "",
            f"Rows: reference labels; columns: the tuned model's reply (first line); {which}; `{INVALID}`: a reply "
            f"outside the label set ({conf['invalid']} of {conf['n']}). Counts: `report.json` → `confusion`.", "",
            "![confusion matrix](confusion.png)", ""]


def write_files(run_dir: Path, report: dict[str, Any], base_model: str) -> None:
    """report.json, report.md, report.png and (label tasks) confusion.png from a finished report dict."""
    report["plots"] = ["report.png"]
    confusion_md = _confusion(run_dir, report)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    md = [f"# Evaluation of {run_dir.name}", "",
          f"Held-out split of snapshot `{report['snapshot']}`: {report['n']} examples, greedy decoding "
          f"(max {report['max_new_tokens']} new tokens). Base = `{base_model}` without the adapter. "
          f"Every prediction: `{PREDICTIONS}`.", "", *_md_set(report), *confusion_md]
    for ef in report["eval_files"]:
        md += [f"## Eval file `{ef['path']}`", "",
               f"{ef['n']} items (sha256 `{ef['sha256'][:12]}…`, cleared by `{ef['leakage_report']}`"
               + (f"; {len(ef['skipped_rows'])} row(s) skipped, first: {ef['skipped_rows'][0]['source']}: "
                  f"{ef['skipped_rows'][0]['reason']}" if ef["skipped_rows"] else "") + ").", "", *_md_set(ef)]
    cols = ["reference", "base", "tuned", *report["baselines"]]
    md += ["## Examples", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in report["examples"][:15]:
        cells = [e["reference"], e["base"], e["tuned"], *(e["baselines"].get(n, "") for n in report["baselines"])]
        md.append(("| " + " | ".join(c[:60].replace("|", "\\|") for c in cells) + " |").replace("\n", " "))
    (run_dir / "report.md").write_text("\n".join(md) + "\n")
    blocks = [("held-out", report)] + [(ef["path"], ef) for ef in report["eval_files"]]
    _chart(blocks, run_dir / "report.png", f"base vs tuned vs baselines ({run_dir.name})")
