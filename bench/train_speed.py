"""Side-by-side training-speed benchmark: TRL's QLoRA SFTTrainer vs `python -m train`'s engine (train/engine.py).

Same random-init model shape, same seeded chat-like data (lognormal lengths 32..2048, truncated to 1024,
the recipe of ../shared/bench/trl_qlora_baseline.py copied here so the device run is self-contained), same
LoRA (r16 all-linear), NF4 + double quant, bf16 compute. Every configuration runs in its own subprocess
(clean CUDA memory); the first ``--warmup`` optimizer steps are not timed.

  python bench/train_speed.py --out $OUT/train_speed.json            # on the GPU machine (device tool)
  python bench/train_speed.py --device cpu --dry-run --out /tmp/ts.json   # CPU smoke test, tiny shape

Prints one JSON document (and writes it to --out after every configuration, so a time-out keeps what ran):
real (non-pad) tokens/s, peak GiB, loss at the end of the timed window, ratios vs TRL default and vs TRL
packing+Liger, per shape, plus the ablation rows (each trick on its own).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODEL_DIR = os.environ.get("WB_BENCH_MODELS", "/tmp/wb_bench_models")

SHAPES = {
    # SmolLM2-135M
    "smol135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0),
    # Llama-3.2-1B / 3B
    "llama1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
    "llama3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                    num_attention_heads=24, num_key_value_heads=8, rope_theta=500000.0),
    # other families' published shapes (config.json of Qwen/Qwen2.5-1.5B-Instruct and google/gemma-3-1b-it):
    # QKV biases; Gemma 3's (1+w) norms, q/k norms, scaled embeddings, 5 sliding-window layers per global one
    "qwen2.5-1.5b": dict(family="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, rope_theta=1000000.0),
    "gemma3-1b": dict(family="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                      num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                      sliding_window=512, rope_theta=1000000.0, query_pre_attn_scalar=256),
    # CPU dry run
    "tiny_gemma3": dict(family="gemma3_text", vocab_size=512, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                        sliding_window=16, rope_theta=10000.0, query_pre_attn_scalar=16),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0),
}

# TRL modes as in the shared baseline
TRL_MODES = ["default", "packed_liger", "packed", "liger"]
# ours = the engine behind `python -m train` (train/engine.py) on the same data, every token trained (as in TRL's
# run), NF4 + double quant, LoRA r16 alpha 32 all-linear with dropout 0.0: TRL baseline's exact LoRA config.
#   batch: examples per optimizer step (TRL default: 8); mem: GPU memory capped at this multiple of TRL
#   default's peak (gpu_memory_gib); dropout: LoRA dropout; liger: Liger RMSNorm/RoPE/SwiGLU + fused loss head;
#   liger_patch: False = Liger's fused loss head only; tuning: train_engine's ablation knobs (packing, micro_rows,
#   checkpointed_layers, attn, flat_multiple, compile, fused_lora)
OURS = {
    "cli_b8": {"batch": 8},
    "cli_b32": {"batch": 32},  # ~ 11k real tokens per step
    # 24 examples ~ 8.3k real tokens per step = TRL packing's 8 rows of 1024 slots: the same step size as TRL packed
    "cli_b24": {"batch": 24},
    "cli_b24_mem1.5x": {"batch": 24, "mem": 1.5},
    "cli_b8_mem1.5x": {"batch": 8, "mem": 1.5},
    # the same run under torch.profiler (3 steps after the warm-up; not timed): tables go to --profile-dir
    "prof_b8_mem1.5x": {"batch": 8, "mem": 1.5, "profile": True},
    "prof_b8": {"batch": 8, "profile": True},
    "cli_b32_mem1.5x": {"batch": 32, "mem": 1.5},
    "cli_b32_mem1.0x": {"batch": 32, "mem": 1.0},
    "cli_b32_mem1.5x_dropout0.05": {"batch": 32, "mem": 1.5, "dropout": 0.05},  # python -m train's default dropout
    # ablation: each trick alone on top of a TRL-like run (8 examples per step, one per row padded to the longest,
    # no Liger, every layer checkpointed, the whole step in one micro-batch)
    "abl_plain": {"batch": 8, "liger": False, "tuning": {"packing": False, "micro_rows": 8, "checkpointed_layers": "all"}},
    "abl_packing": {"batch": 8, "liger": False, "tuning": {"micro_rows": 8, "checkpointed_layers": "all"}},
    "abl_liger": {"batch": 8, "tuning": {"packing": False, "micro_rows": 8, "checkpointed_layers": "all"}},
    "abl_nogc": {"batch": 8, "liger": False, "tuning": {"packing": False, "micro_rows": 8, "checkpointed_layers": 0}},
    "abl_pack_liger": {"batch": 8, "tuning": {"micro_rows": 8, "checkpointed_layers": "all"}},
    "abl_pack_liger_nogc": {"batch": 8, "tuning": {"micro_rows": 8, "checkpointed_layers": 0}},
    # attention kernel forced instead of timed (everything else as python -m train does it)
    "abl_attn_auto_b24_mem1.5x": {"batch": 24, "mem": 1.5, "tuning": {"attn": "auto"}},
    "abl_attn_efficient_b24_mem1.5x": {"batch": 24, "mem": 1.5, "tuning": {"attn": "efficient"}},
    "abl_attn_auto_b8": {"batch": 8, "tuning": {"attn": "auto"}},
    "abl_attn_varlen_b24_mem1.5x": {"batch": 24, "mem": 1.5, "tuning": {"attn": "varlen"}},
    # each trick off on its own at the 24-example step, everything else as python -m train does it
    "abl_b24_nopacking_mem1.5x": {"batch": 24, "mem": 1.5, "tuning": {"packing": False}},
    "abl_b24_noliger_mem1.5x": {"batch": 24, "mem": 1.5, "liger": False},
    # launch overhead (the 24-example step is CPU-bound on the H200): Liger's loss head only (RMSNorm/RoPE/SwiGLU in
    # plain torch: fewer Python-side Triton launches), and the trained layers through torch.compile instead of Liger
    "abl_b24_ligerloss_only_mem1.5x": {"batch": 24, "mem": 1.5, "liger_patch": False},
    # python -m train --compile on (the default for CUDA runs of >= COMPILE_MIN_STEPS steps): trained layers through
    # torch.compile, plain-torch RMSNorm/RoPE/SwiGLU, varlen attention, Liger's loss head (2026-12-02's first run
    # measured this as abl_b24_compile_mem1.5x: tuning compile + attn varlen + liger_patch False, then unmarked shapes)
    "cli_b24_mem1.5x_compile": {"batch": 24, "mem": 1.5, "compile": "on"},
    "cli_b8_compile": {"batch": 8, "compile": "on"},
    "abl_b24_compile_fusedlora_mem1.5x": {"batch": 24, "mem": 1.5, "compile": "on", "tuning": {"fused_lora": True}},
    "prof_b24_mem1.5x": {"batch": 24, "mem": 1.5, "profile": True},
    # PEFT's LoRA layers as one fused autograd node each (train.kernels.lora_linear), and that under the profiler
    "abl_b24_fusedlora_mem1.5x": {"batch": 24, "mem": 1.5, "tuning": {"fused_lora": True}},
    "prof_b24_fusedlora_mem1.5x": {"batch": 24, "mem": 1.5, "profile": True, "tuning": {"fused_lora": True}},
    # varlen's one-sequence micro-batch padded to whole 1024-token rows instead of a multiple of 64 tokens
    "abl_flat1024_b24_mem1.5x": {"batch": 24, "mem": 1.5, "tuning": {"attn": "varlen", "flat_multiple": 1024}},
}


def make_data(V: int, n: int = 4000, seed: int = 0):
    """Exactly the shared baseline's data: lens first, then ids, from random.seed(seed)."""
    random.seed(seed)
    lens = [max(32, min(2048, int(random.lognormvariate(5.6, 0.7)))) for _ in range(n)]
    return [[random.randrange(3, V) for _ in range(L)] for L in lens]


def build_model(shape: str, device: str) -> str:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    path = os.path.join(MODEL_DIR, shape)
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    s = dict(SHAPES[shape])
    family = s.pop("family", "llama")
    V = s["vocab_size"]
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(V)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1", bos_token="t2",
                                     unk_token="t0")
    cfg = AutoConfig.for_model(family, max_position_embeddings=4096, tie_word_embeddings=True, **s)
    cfg.pad_token_id = 0
    torch.manual_seed(0)
    with torch.device("cuda" if device == "cuda" else "cpu"):
        m = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16 if device == "cuda" else torch.float32)
    m.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def worker_trl(mode: str, shape: str, steps: int, warmup: int, device: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    path = os.path.join(MODEL_DIR, shape)
    hf_tok = AutoTokenizer.from_pretrained(path)
    ds = Dataset.from_dict({"input_ids": make_data(SHAPES[shape]["vocab_size"])})
    cuda = device == "cuda"
    if cuda:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        mk = dict(quantization_config=quant, dtype=torch.bfloat16, attn_implementation="sdpa")
    else:
        mk = dict(dtype=torch.float32, attn_implementation="sdpa")
    args = SFTConfig(output_dir="/tmp/out_trl_" + mode, max_steps=steps, per_device_train_batch_size=8,
                     gradient_accumulation_steps=1, learning_rate=2e-4, logging_steps=1, save_strategy="no",
                     report_to=[], bf16=cuda, use_cpu=not cuda, gradient_checkpointing=True, max_length=1024,
                     model_init_kwargs=mk, packing=mode in ("packed", "packed_liger"),
                     use_liger_kernel=mode in ("liger", "packed_liger"), dataloader_num_workers=0, seed=0)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")

    class Clock(TrainerCallback):
        t0 = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                if cuda:
                    torch.cuda.synchronize()
                Clock.t0 = time.time()

    trainer = SFTTrainer(model=path, args=args, train_dataset=ds, processing_class=hf_tok, peft_config=lora)
    orig = trainer.data_collator
    cnt = {"tok": 0, "slots": 0, "batches": 0}

    def coll(features):
        b = orig(features)
        if cnt["batches"] >= warmup:
            if "attention_mask" in b:
                cnt["tok"] += int(b["attention_mask"].sum())
                cnt["slots"] += int(b["attention_mask"].numel())
            else:
                cnt["tok"] += int(b["input_ids"].numel())
                cnt["slots"] += int(b["input_ids"].numel())
        cnt["batches"] += 1
        return b

    trainer.data_collator = coll
    trainer.add_callback(Clock())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    dt = time.time() - Clock.t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens_per_s_real": cnt["tok"] / dt, "slot_fill": cnt["tok"] / max(1, cnt["slots"]), "sec": dt,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "loss_end": losses[-1] if losses else None, "losses": losses, "batches_seen": cnt["batches"]}


def worker_ours(mode: str, shape: str, steps: int, warmup: int, device: str, mem_ref: float | None = None) -> dict:
    """The engine behind `python -m train` (train/engine.py): NF4 QLoRA, Liger, per-step packing into
    1024-token rows, target-only loss head, micro-batch and checkpointed layers timed up front."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as train/__main__.py sets it
    sys.path.insert(0, ROOT)
    import tempfile
    import types
    from pathlib import Path

    import torch
    from peft import get_peft_model

    from train.config import TrainConfig
    from train.engine import _pack_step, epoch_order, train_engine, use_compile
    from train.kernels import apply_liger, liger_available
    from train.recipe import load_base, lora_config

    o = OURS[mode]
    cuda = device == "cuda"
    if o.get("mem") and cuda and not mem_ref:
        raise RuntimeError("memory-matched run needs TRL default's peak (--mem-ref)")
    cfg = TrainConfig(batch_size=o["batch"], max_length=1024, max_steps=steps, learning_rate=2e-4,
                      lora_dropout=o.get("dropout", 0.0), logging_steps=1, save_steps=10**9, warmup_ratio=0.0,
                      lr_scheduler="constant", gpu_memory_gib=o["mem"] * mem_ref if o.get("mem") and mem_ref else 0.0,
                      compile=o.get("compile", "auto"))
    data = make_data(SHAPES[shape]["vocab_size"])
    exs = [{"input_ids": ids[:1024], "labels": ids[:1024]} for ids in data]
    torch.manual_seed(0)
    model = load_base(os.path.join(MODEL_DIR, shape), "nf4" if cuda else "none", cuda)
    liger = cuda and liger_available() and o.get("liger", True)
    patched = liger and o.get("liger_patch", True) and not use_compile(cfg, cuda, steps)  # as train/recipe.py does
    if patched:
        apply_liger(model)
    model.config.use_cache = False
    pm = get_peft_model(model, lora_config(cfg, model))
    tuning = dict(o.get("tuning", {}))
    if not liger:
        tuning["liger_loss"] = False
    recs: list[dict] = []
    prof = None
    if o.get("profile"):
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        prof = profile(activities=acts, schedule=schedule(wait=max(0, warmup - 1), warmup=1, active=3, repeat=1))
        prof.start()

    def log(rec: dict) -> None:
        recs.append(rec)
        if prof is not None:
            prof.step()

    # full (oldest-generation) garbage collections: [step they fell in (1 = setup, probe or step 1), seconds]
    gc_full: list[list] = []
    gc_t0 = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                gc_t0[0] = time.perf_counter()
            else:
                gc_full.append([len(recs) + 1, round(time.perf_counter() - gc_t0[0], 4)])

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gc.callbacks.append(on_gc)
    try:
        with tempfile.TemporaryDirectory() as td:
            summ = train_engine(cfg, pm, types.SimpleNamespace(pad_token_id=0), exs, Path(td),
                                device="cuda" if cuda else "cpu", quant="nf4" if cuda else "none", resume_ckpt=None,
                                log_metrics=log, tuning=tuning)
    finally:
        gc.callbacks.remove(on_gc)
    # packed rows per step (the engine's own packing of the same order): first occurrences of a row count are new
    # tensor shapes, the other suspect for a slow step
    order, per = epoch_order(len(exs), cfg.seed, 0), cfg.batch_size * cfg.grad_accum
    step_rows = [len(_pack_step(exs, order[j * per:(j + 1) * per], cfg.max_length,
                                tuning.get("packing", True))[0]) for j in range(min(steps, len(exs) // per))]
    if prof is not None:
        prof.stop()
        pdir = os.environ.get("WB_BENCH_PROFILE_DIR") or tempfile.gettempdir()
        os.makedirs(pdir, exist_ok=True)
        ka = prof.key_averages()
        with open(os.path.join(pdir, f"prof_{shape}_{mode}.txt"), "w") as f:
            for key in (("cuda_time_total" if cuda else "cpu_time_total"), "cpu_time_total"):
                f.write(f"=== 3 steps, sorted by {key}\n")
                f.write(ka.table(sort_by=key, row_limit=45, max_name_column_width=70) + "\n")
    timed = recs[warmup:]
    prev = recs[warmup - 1]["num_tokens"] if warmup else 0
    toks = timed[-1]["num_tokens"] - prev
    secs = sum((r["num_tokens"] - q) / r["tokens_per_s"] for r, q in
               zip(timed, [prev] + [t["num_tokens"] for t in timed[:-1]]))
    eng = summ["engine"]
    if eng.get("compiled"):  # what compiling cost: graphs and the compiler's phases (seconds)
        from torch._dynamo.utils import compile_times, counters

        eng["dynamo"] = {"stats": dict(counters["stats"]), "compile_times": str(compile_times(repr="str"))[:3000]}
    step_s = [round((r["num_tokens"] - q) / r["tokens_per_s"], 4) for r, q in
              zip(recs, [0] + [t["num_tokens"] for t in recs[:-1]])]
    return {"tokens_per_s_real": toks / secs, "sec": secs, "step_s": step_s,
            "step_tokens": [r["num_tokens"] - q for r, q in zip(recs, [0] + [t["num_tokens"] for t in recs[:-1]])],
            "step_rows": step_rows, "gc_full": gc_full,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "loss_end": recs[-1]["loss"], "losses": [r["loss"] for r in recs], "examples_per_step": o["batch"],
            "gpu_memory_gib": cfg.gpu_memory_gib, "lora_dropout": cfg.lora_dropout, "liger": liger,
            "liger_patch": patched,
            "compiled": eng.get("compiled"), "warmup_s": eng.get("warmup_s"), "micro_rows": eng["micro_rows"],
            "checkpointed_layers": eng["checkpointed_layers"],
            "attention": eng.get("attention"), "alloc_retry_steps": eng.get("alloc_retry_steps"), "engine": eng}


def driver(args) -> dict:
    device = args.device
    shapes = args.shapes.split(",")
    res = {"device": None, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": args.steps,
           "warmup": args.warmup, "shapes": {}, "notes": []}
    if device == "cuda":
        import torch
        res["device"] = torch.cuda.get_device_name(0)
        import importlib.metadata as md
        res["versions"] = {p: md.version(p) for p in ("torch", "transformers", "peft", "trl", "bitsandbytes",
                                                          "liger-kernel", "triton")}
    else:
        res["device"] = "cpu (dry run)"
    t_end = time.time() + args.budget_s

    def save():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)

    plan = []
    for sh in shapes:  # the core plan on every shape first (--repeats rounds of it), then the ablations
        plan += [(sh, item) for _ in range(args.repeats) for item in args.plan.split(",")]
    if args.ablations:
        plan += [(args.ablation_shape, item) for item in args.ablations.split(",")]
    for sh, item in plan:
        kind, mode = item.split(":")
        left = t_end - time.time()
        if left < 40:
            res["notes"].append(f"skipped {sh} {item}: time budget spent")
            continue
        if sh not in res["shapes"]:
            t = time.time()
            build_model(sh, device)
            res["shapes"][sh] = {"build_s": round(time.time() - t, 1), "runs": {}}
        ref = res["shapes"][sh]["runs"].get("trl:default", {}).get("peak_gib") or args.mem_ref
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--mode", mode, "--shape", sh,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", device]
        if ref:
            cmd += ["--mem-ref", str(ref)]
        t = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=min(left - 10, args.run_timeout))
            out = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            r = json.loads(out[-1][7:]) if out else {"error": (p.stderr or p.stdout)[-1500:], "rc": p.returncode}
        except subprocess.TimeoutExpired:
            r = {"error": "timeout"}
        r["wall_s"] = round(time.time() - t, 1)
        runs = res["shapes"][sh]["runs"]
        if item in runs and "tokens_per_s_real" in runs[item]:  # a repeat: kept beside the first
            runs[item].setdefault("repeats", []).append(
                {k: r.get(k) for k in ("tokens_per_s_real", "peak_gib", "loss_end", "attention", "micro_rows",
                                       "checkpointed_layers", "error", "wall_s", "step_s")})
        else:
            runs[item] = r
        if kind == "ours" and "error" in r and r["error"] != "timeout" and not args.keep_going:
            res["notes"].append(f"stopped after {sh} {item} failed (--keep-going runs on)")
            print(f"FAILED {sh} {item}: {str(r.get('error'))[-1500:]}", flush=True)
            save()
            break
        tps = r.get("tokens_per_s_real")
        print(f"[{time.strftime('%H:%M:%S')}] {sh:9s} {item:26s} "
              + (f"{tps:9.0f} tok/s  peak {r.get('peak_gib') or 0:.2f} GiB  loss {r.get('loss_end')}"
                 if tps else f"FAILED {str(r.get('error'))[-300:]}"), flush=True)
        ratios(res)
        save()
    return res


def ratios(res: dict) -> None:
    for sh, d in res["shapes"].items():
        runs = d["runs"]

        def med(r: dict) -> float | None:  # median over the first run and its --repeats
            xs = sorted(x["tokens_per_s_real"] for x in [r] + r.get("repeats", []) if x.get("tokens_per_s_real"))
            return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2 if xs else None

        base = med(runs.get("trl:default", {}))
        pl = med(runs.get("trl:packed_liger", {}))
        bpk = runs.get("trl:default", {}).get("peak_gib")
        bl = runs.get("trl:default", {}).get("loss_end")
        table = {}
        for name, r in runs.items():
            t = med(r)
            if not t:
                continue
            table[name] = {"tokens_per_s_real": round(t), "samples": [round(x["tokens_per_s_real"]) for x in
                                                                      [r] + r.get("repeats", [])
                                                                      if x.get("tokens_per_s_real")],
                           "peak_gib": r.get("peak_gib") and round(r["peak_gib"], 2),
                           "loss_end": r.get("loss_end") and round(r["loss_end"], 4),
                           "x_trl_default": round(t / base, 2) if base else None,
                           "x_trl_packed_liger": round(t / pl, 2) if pl else None,
                           "mem_x_trl_default": round(r["peak_gib"] / bpk, 2) if bpk and r.get("peak_gib") else None,
                           "loss_rel_diff_vs_trl_default": round(r["loss_end"] / bl - 1, 4)
                           if bl and r.get("loss_end") else None,
                           "micro_rows": r.get("micro_rows"), "checkpointed_layers": r.get("checkpointed_layers"),
                           "attention": r.get("attention"), "compiled": r.get("compiled"),
                           "warmup_s": r.get("warmup_s")}
        d["table"] = table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dry-run", action="store_true", help="tiny shape, 3 steps, CPU-friendly plan")
    ap.add_argument("--shapes", default="llama1b,smol135m,llama3b")
    ap.add_argument("--plan", default="trl:default,trl:packed_liger,ours:cli_b8,ours:cli_b8_mem1.5x,ours:cli_b24_mem1.5x",
                    help="kind:mode list run on every shape")
    ap.add_argument("--ablation-shape", default="llama1b")
    ap.add_argument("--ablations", default="ours:abl_plain,ours:abl_packing,ours:abl_liger,ours:abl_nogc,ours:abl_pack_liger,"
                    "ours:abl_attn_auto_b24_mem1.5x,ours:abl_attn_auto_b8")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of --plan per shape (interleaved); the table "
                    "reports the median tokens/s of each configuration and every sample")
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting new runs after this many seconds")
    ap.add_argument("--run-timeout", type=float, default=150)
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep-going", action="store_true", help="run the rest of the plan after an engine run fails "
                    "(default: stop, so a broken engine does not spend the device time on the other runs)")
    ap.add_argument("--profile-dir", default=None, help="where prof_* modes write their torch.profiler tables")
    ap.add_argument("--worker", choices=["trl", "ours"])
    ap.add_argument("--mode")
    ap.add_argument("--shape")
    ap.add_argument("--mem-ref", type=float, default=None, help="TRL default's peak GiB, for the memory-capped runs "
                    "of a plan without trl:default (else that run's own peak is used)")
    a = ap.parse_args(argv)
    if a.worker:
        if a.worker == "trl":
            r = worker_trl(a.mode, a.shape, a.steps, a.warmup, a.device)
        else:
            r = worker_ours(a.mode, a.shape, a.steps, a.warmup, a.device, a.mem_ref)
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    if a.dry_run:
        a.shapes, a.steps, a.warmup = "tiny", 4, 1
        a.plan, a.ablation_shape, a.repeats = "trl:default,ours:cli_b8,ours:cli_b24_mem1.5x", "tiny", 2
        a.ablations = "ours:abl_plain,ours:abl_packing,ours:abl_nogc,ours:abl_attn_efficient_b24_mem1.5x,ours:prof_b8"
    if a.profile_dir:
        os.environ["WB_BENCH_PROFILE_DIR"] = a.profile_dir
    res = driver(a)
    print(json.dumps({sh: d.get("table") for sh, d in res["shapes"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
