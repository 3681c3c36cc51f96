"""Export one trained run to GGUF at every weight type and record what each costs and keeps.

For each ``--dtypes`` entry (default f16, q8_0, q4_k_m, q5_k_m) the run is exported with
``python -m train export --format gguf`` (:func:`train.export.export`, every check it runs included), and
this records:

* the file's size (bytes, MB = 10^6 bytes) and its tensor types;
* conversion seconds (:func:`train.gguf_writer.write_gguf` alone, timed by wrapping it) and the whole export's
  seconds (conversion + every parity check, the report's ``seconds``);
* whether llama.cpp (the ``xllamacpp`` wheel, through :func:`train.export.llamacpp_server` as the export does)
  loads the file, and the seconds to load it and answer one request, measured again after the export;
* the parity result as the export's checks report it (``export_report.json`` → ``gguf.llama_cpp``): greedy
  tokens of llama.cpp identical to the reference on the check prompts (the merged model for f16 / q8_0, the
  dequantised GGUF weights for K-quants), identical to the merged model, and each divergence's token index and
  the reference's near-tie margin; an export whose checks fail is recorded with its error, not dropped.

The run is copied first (without ``checkpoints/`` and ``export/``) into ``--workdir``, since an export writes
``RUN/export/merged``; the merged folder is built once (timed) and reused by every dtype. Writes
``bench/results/export.json``::

    python bench/export.py                                  # runs/demo/run (made by `make demo`)
    python bench/export.py --run runs/my-run --dtypes f16 q8_0 --out /tmp/export.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MACHINE_NOTE = "2-core CPU, shared with other jobs"


def copy_run(run: Path, dest: Path) -> Path:
    """The run folder without its checkpoints and earlier exports (an export writes into RUN/export/)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints", "export", "*.partial"))
    return dest


class Timed:
    """Wraps :func:`train.gguf_writer.write_gguf` (``export`` imports it at call time) and keeps its seconds."""

    def __init__(self):
        import train.gguf_writer as gw

        self.gw, self.orig, self.seconds = gw, gw.write_gguf, None

    def __enter__(self):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return self.orig(*a, **kw)
            finally:
                self.seconds = round(time.perf_counter() - t0, 1)
        self.gw.write_gguf = timed
        return self

    def __exit__(self, *exc):
        self.gw.write_gguf = self.orig


def llamacpp_load(path: Path) -> dict:
    """Load the file in llama.cpp again (as the export's check does) and answer one /tokenize request."""
    from train.export import llamacpp_server

    t0 = time.perf_counter()
    try:
        with llamacpp_server(path, n_ctx=512) as post:
            n = len(post("/tokenize", {"content": "Hello world", "add_special": False})["tokens"])
        return {"loaded": n > 0, "load_s": round(time.perf_counter() - t0, 2)}
    except Exception as e:  # noqa: BLE001 — a file llama.cpp refuses is a result, not a crash
        return {"loaded": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}


def parity(rep: dict) -> dict:
    """The export's own parity numbers (``export_report.json``)."""
    g = rep.get("gguf") or {}
    lc = g.get("llama_cpp") or {}
    out = {"reference": g.get("reference"), "prompts": lc.get("prompts", g.get("prompts")),
           "llama_cpp_checked": lc.get("checked", False),
           "identical_to_reference": lc.get("identical_greedy_outputs"),
           "identical_to_merged": lc.get("identical_to_merged"),
           "divergences": [{"prompt": r["prompt"], "token": r.get("diverges_at"),
                            "reference_margin": r.get("merged_margin")}
                           for r in lc.get("per_prompt", []) if not r.get("identical")],
           "template_mismatches": lc.get("template_mismatches"), "tokenizer_mismatches": lc.get("tokenizer_mismatches"),
           "weights_readback_max_abs_logit_diff": g.get("weights_readback_max_abs_logit_diff")}
    if g.get("transformers_checked"):
        out["transformers_second_opinion"] = {k: g.get(k) for k in ("identical_greedy_outputs", "max_abs_logit_diff",
                                                                      "top1_agreement")}
    return out


def export_one(run: Path, work: Path, dtype: str, prompts: int, max_new_tokens: int) -> dict:
    import gguf

    from train.export import ExportConfig, ExportError, export

    out = work / f"gguf-{dtype}"
    cfg = ExportConfig(run=run, format="gguf", dtype=dtype, out=out, progress=False, prompts=prompts,
                       max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    with Timed() as timer:
        try:
            rep, error, folder = export(cfg, log=lambda *_: None), None, out
        except ExportError as e:
            folder = out.with_name(out.name + ".partial")
            rep, error = json.loads((folder / "export_report.json").read_text()), str(e)
    wall = round(time.perf_counter() - t0, 1)
    path = folder / f"model-{dtype}.gguf"
    size = path.stat().st_size
    types = Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors)
    row = {"dtype": dtype, "ok": error is None, "error": error, "file": path.name, "bytes": size,
           "mb": round(size / 1e6, 1), "tensor_types": dict(sorted(types.items())), "quantizer": rep.get("quantizer"),
           "conversion_s": timer.seconds, "export_s": rep.get("seconds", wall), "export_wall_s": wall,
           "llama_cpp": llamacpp_load(path), "parity": parity(rep),
           "prompts_source": rep.get("prompts_source"), "card": (folder / "README.md").exists()}
    print(f"{dtype}: {row['mb']} MB, conversion {row['conversion_s']} s, export {row['export_s']} s, llama.cpp "
          f"{row['parity']['identical_to_reference']}/{row['parity']['prompts']} = reference, "
          f"{row['parity']['identical_to_merged']}/{row['parity']['prompts']} = merged" + (f"; FAILED: {error}" if error else ""),
          flush=True)
    return row


def provenance(run: Path) -> dict:
    man = json.loads((run / "manifest.json").read_text())
    model, cfg = man.get("model") or {}, man.get("config") or {}

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"run": str(run), "base_model": cfg.get("base_model"),
            "base_model_commit": model.get("commit"), "base_model_path": model.get("path"),
            "model_type": model.get("model_type"), "adapter": {k: cfg.get(k) for k in ("lora_r", "lora_layers", "lora_targets")},
            "snapshot": (man.get("snapshot") or {}).get("name"),
            "workbench_commit": git("rev-parse", "HEAD"), "workbench_tree_dirty": bool(git("status", "--porcelain"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "demo" / "run", help="run folder (default runs/demo/run)")
    p.add_argument("--dtypes", nargs="+", default=["f16", "q8_0", "q4_k_m", "q5_k_m"])
    p.add_argument("--prompts", type=int, default=4, help="check prompts (the export's default 4)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="greedy tokens per prompt (the export's default 24)")
    p.add_argument("--workdir", type=Path, default=None, help="where the run copy and the exports go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (GGUF files) afterwards")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "export.json")
    a = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from train.export import ExportConfig, export

    hf_logging.disable_progress_bar()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"what": "python -m train export --format gguf of one run at each weight type: file size, conversion "
                      "seconds, llama.cpp load, greedy parity on the export's check prompts",
              **provenance(a.run), "prompts": a.prompts, "max_new_tokens": a.max_new_tokens,
              "machine": {"note": MACHINE_NOTE, "cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_start": [round(x, 2) for x in os.getloadavg()]},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        run = copy_run(a.run, work / "run")
        t0 = time.perf_counter()
        merged = export(ExportConfig(run=run, format="merged", progress=False), log=lambda *_: None)
        result["merged"] = {"seconds": round(time.perf_counter() - t0, 1),
                            "merge_max_abs_logit_diff": merged["merge_max_abs_logit_diff"],
                            "adapter_effect_max_abs_logit": merged["adapter_effect_max_abs_logit"],
                            "bytes": sum(f.stat().st_size for f in Path(merged["out"]).glob("*.safetensors"))}
        result["gguf"] = [export_one(run, work, d, a.prompts, a.max_new_tokens) for d in a.dtypes]
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
