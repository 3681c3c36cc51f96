"""GPU check of ``python -m train`` and ``python -m evaluate`` on CUDA (issue 4 item 4, issue 9 wiring).

No weights can reach the GPU machine, so the models are random-init Llamas built from a config (SmolLM2-135M
and Llama-3.2-1B shapes) with the embedded SmolLM2 tokenizer (ChatML). The data is a real approved snapshot
(the demo's BANKING77 subset) made on this machine by ``--prepare``. On the GPU each engine runs through the
real CLI, and the script checks and records that:

* the fast engine (default) loads the base in 4-bit NF4 with double quantisation (``quantization: nf4``),
  packs every step and trains only assistant tokens (``data.target_tokens`` < ``data.tokens``; the
  preflight's marked example is kept in the JSON);
* the TRL engine runs the same snapshot, without and with packing (``--engine trl [--packing true]``);
* ``python -m evaluate`` runs on CUDA against the fast run.

Real tokens/s and peak GiB are reported per run with ratios against TRL's default in the same process
(small batches of short banking queries: a functional check, not the speed benchmark — that is
``bench/train_speed.py``).

Usage::

    python bench/gpu_check.py --prepare                       # here: bench/.gpu/{ws,tok}
    # device (carry .whl and bench/.gpu):
    pip install --no-deps .whl/*.whl && python bench/gpu_check.py --out $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "bench" / ".gpu"
sys.path.insert(0, str(ROOT / "bench"))
from train_speed import SHAPES as BENCH_SHAPES  # noqa: E402  (the benchmark's model shapes, one definition)

# the same shapes with the embedded tokenizer's vocabulary (set in build_model)
SHAPES = {name: {k: v for k, v in BENCH_SHAPES[src].items() if k != "vocab_size"}
          for name, src in (("smollm2-135m", "smol135m"), ("llama-1b", "llama1b"))}
RUNS = [("fast", []), ("trl", ["--engine", "trl"]), ("trl-packing", ["--engine", "trl", "--packing", "true"])]


def prepare() -> None:
    from transformers import AutoTokenizer

    from curate.models import materialize_chat_model

    shutil.rmtree(GPU, ignore_errors=True)
    ws = GPU / "ws"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args in (["ingest", "data/banking77_demo"], ["leakage"],
                 ["review", "approve", "--rule", "--reviewer", "demo-rule", "--status", "pending"],
                 ["snapshot", "create", "demo"]):
        subprocess.run([sys.executable, "-m", "curate", *args, "--workspace", str(ws)], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)
    AutoTokenizer.from_pretrained(materialize_chat_model()).save_pretrained(GPU / "tok")
    print(f"prepared {GPU} ({sum(f.stat().st_size for f in GPU.rglob('*') if f.is_file()) / 2**20:.1f} MiB)")


def build_model(shape: str, dst: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(GPU / "tok")
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    m.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


def run_train(model: Path, out: Path, extra: list[str], steps: int, batch: int, log: Path) -> dict:
    cmd = [sys.executable, "-m", "train", "--snapshot", "demo", "--workspace", str(GPU / "ws"), "--base_model",
           str(model), "--output_dir", str(out), "--max_steps", str(steps), "--batch_size", str(batch),
           "--max_length", "256", "--logging_steps", "5", "--save_steps", "1000", *extra]
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(" ".join(cmd) + "\n" + p.stdout + p.stderr)
    if p.returncode:
        return {"ok": False, "rc": p.returncode, "stderr_tail": p.stderr[-2500:]}
    man = json.loads((out / "manifest.json").read_text())
    mets = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    real = max((m.get("num_tokens") or 0) for m in mets)  # non-padding tokens, both engines
    marked = p.stderr.split("(trained tokens in ⟦…⟧):\n", 1)[-1].split("\n<|im_start|>assistant")[0][:400] \
        if "⟦" in p.stderr else None
    return {"ok": True, "wall_s": round(time.time() - t0, 1), "train_seconds": man["train_seconds"],
            "real_tokens": real, "tokens_per_s": round(real / max(man["train_seconds"], 1e-9), 1),
            "peak_gib": man["peak_gpu_gib"], "quantization": man["quantization"], "device": man["device"],
            "engine": man["engine"], "data": man.get("data"), "steps": man["steps"],
            "final_loss": ([m["loss"] for m in mets if "loss" in m] or [man.get("train_loss")])[-1],
            "train_loss": man.get("train_loss"), "preflight_has_marks": marked is not None,
            "cuda_device": man["hardware"].get("cuda_device")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="build bench/.gpu (snapshot + tokenizer) here")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/.gpu/out"))
    ap.add_argument("--shapes", default="smollm2-135m,llama-1b")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    if a.prepare:
        prepare()
        return
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "steps": a.steps, "batch_size": a.batch, "max_length": 256, "shapes": {}}
    for shape in a.shapes.split(","):
        model = build_model(shape, Path("/tmp/gpu_check_models") / shape)
        runs = {}
        for name, extra in RUNS:
            runs[name] = run_train(model, Path("/tmp/gpu_check_runs") / f"{shape}-{name}", extra, a.steps, a.batch,
                                   out / f"{shape}-{name}.log")
            print(shape, name, json.dumps({k: runs[name].get(k) for k in ("ok", "tokens_per_s", "peak_gib", "final_loss")}),
                  flush=True)
        base = runs["trl"].get("tokens_per_s")
        for r in runs.values():
            if r.get("ok") and base:
                r["x_trl_default"] = round(r["tokens_per_s"] / base, 2)
        res["shapes"][shape] = runs
    first = a.shapes.split(",")[0]
    ev = subprocess.run([sys.executable, "-m", "evaluate", "--run", f"/tmp/gpu_check_runs/{first}-fast", "--limit",
                         "64", "--json"], cwd=ROOT, capture_output=True, text=True)
    res["evaluate"] = {"rc": ev.returncode, "result": json.loads(ev.stdout) if ev.returncode == 0 else None,
                       "stderr_tail": ev.stderr[-1500:] if ev.returncode else None}
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
