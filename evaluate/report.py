"""Writing evaluation results: ``report.json``, ``report.md`` and a bar chart PNG in the run folder."""
from __future__ import annotations

import json
from pathlib import Path


def table(metrics: dict[str, dict]) -> str:
    lines = ["| metric | base | tuned | delta | 95% CI of delta |", "|---|---:|---:|---:|---|"]
    for name, m in metrics.items():
        lo, hi = m["ci95"]
        lines.append(f"| {name} | {m['base']:.3f} | {m['tuned']:.3f} | {m['delta']:+.3f} | [{lo:+.3f}, {hi:+.3f}] |")
    return "\n".join(lines)


def write(run_dir: Path, result: dict, examples: list[dict]) -> dict[str, Path]:
    run_dir = Path(run_dir)
    rj, rm, png = run_dir / "report.json", run_dir / "report.md", run_dir / "report.png"
    rj.write_text(json.dumps({**result, "examples": examples}, indent=2) + "\n")
    md = [f"# Evaluation of {run_dir.name}", "",
          f"Snapshot `{result.get('snapshot')}` held-out split, n = {result['n']} "
          f"(greedy decoding, max_new_tokens = {result.get('max_new_tokens')}).", "",
          table(result["metrics"]), "", "## First examples", "",
          "| reference | base | tuned |", "|---|---|---|"]
    for e in examples[:15]:
        esc = lambda s: s.replace("|", "\\|").replace("\n", " ")[:80]  # noqa: E731
        md.append(f"| {esc(e['reference'])} | {esc(e['base'])} | {esc(e['tuned'])} |")
    rm.write_text("\n".join(md) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["metrics"])
    base = [result["metrics"][n]["base"] for n in names]
    tuned = [result["metrics"][n]["tuned"] for n in names]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(names)), 3.5))
    ax.bar([x - 0.2 for x in xs], base, width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], tuned, width=0.4, label="tuned")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"held-out n={result['n']}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return {"json": rj, "md": rm, "png": png}
