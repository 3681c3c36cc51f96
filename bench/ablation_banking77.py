"""What the curation buys on BANKING77: ``python -m evaluate ablate`` on a real subset, end to end on the CPU.

Builds a workspace from ``data/banking77/train.csv`` (``--intents`` intents picked with a fixed seed,
``--per-intent`` queries each, distinct texts), then runs the real flow through the CLIs: ``curate ingest`` →
``synth generate --strategy paraphrase`` (embedded SmolLM2, local backend, judge on: the reward filter keeps
some candidates and logs the rest) → ``curate dedup`` → ``curate leakage`` → approve the human records by
rule → ``snapshot create S`` → ``evaluate ablate`` over the four variants, ``--seeds`` seeds each, and writes
``bench/results/ablation_banking77.json`` (settings, the variant selection, the table with intervals, the
time of each phase and the machine's load).

    python bench/ablation_banking77.py                      # ~15-20 min on the loaded 2-core box
    python bench/ablation_banking77.py --steps 40 --seeds 3 --out bench/results/other.json

Every subprocess runs with one thread (``OMP_NUM_THREADS=1``, ``--train threads=1``): on a 2-core machine
shared with other work, two threads per process spin against the other load and ran 3-10x slower here.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "Classify the banking query. Reply with its intent label."
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMES: dict[str, float] = {}


def sh(name: str, *args: str) -> str:
    print(f"\n$ python {' '.join(args)}", flush=True)
    t0 = time.time()
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, text=True)
    TIMES[name] = round(TIMES.get(name, 0.0) + time.time() - t0, 1)
    if r.returncode:
        sys.exit(f"bench step {name} failed (exit {r.returncode}): python {' '.join(args)}\n{r.stdout[-2000:]}")
    return r.stdout


def subset(out: Path, intents: int, per_intent: int, seed: int) -> dict:
    rows = list(csv.DictReader((ROOT / "data" / "banking77" / "train.csv").open(newline="")))
    rng = random.Random(seed)
    picked_intents = sorted(rng.sample(sorted({r["category"] for r in rows}), intents))
    picked = []
    for lab in picked_intents:
        texts = sorted({r["text"] for r in rows if r["category"] == lab})
        picked += [{"text": t, "category": lab} for t in rng.sample(texts, per_intent)]
    out.mkdir(parents=True)
    with (out / "banking77_subset.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["text", "category"])
        w.writeheader()
        w.writerows(picked)
    (out / "mapping.toml").write_text(f'system = "{SYSTEM}"\n\n[columns]\nuser = "text"\nassistant = "category"\n'
                                      'label = "category"\n')
    return {"source": "data/banking77/train.csv", "intents": picked_intents, "per_intent": per_intent,
            "rows": len(picked), "seed": seed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--intents", type=int, default=16)
    p.add_argument("--per-intent", type=int, default=20)
    p.add_argument("--synth-n", type=int, default=120, help="paraphrase candidates to generate (default 120)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-ablation"), help="scratch folder (wiped)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ablation_banking77.json"))
    a = p.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    ws = ["--workspace", str(work / "workspace")]
    t0 = time.time()
    load0 = os.getloadavg()
    data = subset(work / "input", a.intents, a.per_intent, seed=77)
    sh("ingest", "-m", "curate", "ingest", str(work / "input"), *ws)
    synth = json.loads(sh("synth", "-m", "synth", "generate", "--strategy", "paraphrase", "--n", str(a.synth_n),
                          "--seed", "7", "--no-progress", "--json", *ws))
    sh("dedup", "-m", "curate", "dedup", *ws)
    sh("leakage", "-m", "curate", "leakage", *ws)
    sh("approve", "-m", "curate", "review", "approve", "--rule", "--reviewer", "bench-rule", "--status", "pending",
       "--origin", "human", *ws)
    sh("snapshot", "-m", "curate", "snapshot", "create", "b77", *ws)
    train = ["lora_layers=4", "max_length=96", "batch_size=16", "learning_rate=1e-3", "threads=1", "save_steps=1000",
             "logging_steps=10", "eval_steps=0"]
    args = ["-m", "evaluate", "ablate", "--snapshot", "b77", *ws, "--out", str(work / "ablation"), "--steps",
            str(a.steps), "--seeds", str(a.seeds), "--batch-size", "32", "--json"]
    for kv in train:
        args += ["--train", kv]
    res = json.loads(sh("ablate", *args))
    load1 = os.getloadavg()
    snap_man = json.loads((work / "workspace" / "snapshots" / "b77" / "manifest.json").read_text())
    out = {
        "what": "python -m evaluate ablate on a BANKING77 subset: raw / gated / gated+synthetic / "
                "gated+synthetic-unfiltered, same steps and seeds, scored on the same held-out items",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in load0],
                    "loadavg_end": [round(x, 2) for x in load1],
                    "note": "2-core box shared with other engineers' jobs; one thread per process"},
        "data": data,
        "snapshot": {"name": "b77", "train_rows": snap_man["files"]["train.parquet"]["rows"],
                     "heldout_rows": snap_man["files"]["heldout.parquet"]["rows"], "gates": snap_man["gates"]["blocked_by_reason"],
                     "by_origin": snap_man["counts"]["by_origin"]},
        "synthetic": {"how": "python -m synth generate --strategy paraphrase --seed 7 (embedded SmolLM2-135M-Instruct, "
                             "local backend, the synth package's default reward filter at the time of the run: "
                             "heuristics, judge, reward model below); generated in this run, not cached",
                      **{k: synth.get(k) for k in ("requested", "accepted", "rejected", "duplicate", "error", "reasons",
                                                   "reward_model", "min_reward", "judge_parse", "seconds")}},
        "train": {"steps": a.steps, "seeds": res["seeds"], "settings": train,
                  "base_model": res["settings"]["train_config"]["base_model"]},
        "selection": res["selection"], "skipped": res["skipped"], "notes": res["notes"],
        "n_heldout": res["n"], "primary_metric": res["primary_metric"], "ci95": res["ci95"],
        "base": res["base"], "variants": {v: d["metrics"] for v, d in res["variants"].items()},
        "seconds": {**TIMES, "ablate_phases": res["settings"].get("seconds"), "total": round(time.time() - t0, 1)},
        "artifacts": str(work / "ablation"),
    }
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    pm = res["primary_metric"]
    print(f"\n{pm} on {res['n']} held-out items (mean over seeds {res['seeds']}; Δ vs gated [95% CI]):")
    for v, d in res["variants"].items():
        m = d["metrics"][pm]
        delta = "" if m["delta"] is None else f"  Δ {m['delta']:+.3f} [{m['delta_ci95'][0]:+.3f}, {m['delta_ci95'][1]:+.3f}]"
        print(f"  {v:28s} {res['selection'][v]['train_rows']:4d} rows  {m['mean']:.3f}  "
              f"(seeds {', '.join(f'{x:.3f}' for x in m['per_seed'].values())}){delta}")
    print(f"written: {a.out}; total {out['seconds']['total']:.0f} s")


if __name__ == "__main__":
    main()
