"""The fast CUDA training engine (issue 9): a lean QLoRA loop over packed, pre-tokenized data.

What makes it fast, each measured on its own in ``bench/train_speed.py`` (table in ``docs/gpu.md``):

* packing (:mod:`train.packing`): whole examples back to back in rows of ``max_length`` tokens with
  per-example position ids, so no padding is computed and no attention crosses examples;
* Liger kernels (:mod:`train.kernels`): RMSNorm, RoPE, SwiGLU, and a fused linear cross-entropy that
  projects only target (assistant) positions and never materialises the full logits;
* no gradient checkpointing when the micro-batch fits, checkpointing only as the fallback;
* micro-batch sized automatically: the largest power-of-two number of rows whose forward+backward fits
  (optionally under ``memory_budget_gib``), with gradient accumulation up to ``tokens_per_step``;
* fused AdamW over the LoRA parameters only, bf16 autocast, one host sync per optimizer step;
* optional ``torch.compile`` of each decoder layer (off by default: kept only where it pays).

The model is QLoRA on CUDA (NF4 + double quantisation, bf16 compute, via bitsandbytes + PEFT), plain
LoRA on CPU (the CPU path exists for tests and dry runs). The loss is the mean cross-entropy over
positions whose label is not -100, exactly as ``model(input_ids, labels=labels)`` computes it for the
unpacked examples.

Entry point: :func:`train_fast`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .kernels import apply_liger, liger_available, linear_cross_entropy
from .packing import PackStats, collate_rows, pack_examples


@dataclass
class FastConfig:
    """Knobs of the fast engine (defaults = the measured-fastest recipe)."""

    max_length: int = 1024          # row length in tokens; longer examples are truncated (and counted)
    tokens_per_step: int = 8192     # token slots per optimizer step (rows * max_length, accumulation fills it)
    micro_rows: int | str = "auto"  # rows per forward/backward; "auto" = largest power of two that fits
    max_micro_rows: int = 64        # upper bound for "auto"
    gradient_checkpointing: str = "auto"  # "auto" (only if even 1 row does not fit), "on", "off"
    liger: bool | None = None       # None = use Liger when CUDA + liger-kernel are present
    compile: bool = False           # torch.compile each decoder layer
    packing: bool = True            # False = one example per row (padding), for the ablation
    quantize: str = "auto"          # "nf4" (QLoRA), "none" (bf16/fp32 LoRA), "auto" = nf4 on CUDA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = 0              # >0 overrides epochs
    warmup_steps: int = 0
    seed: int = 0
    memory_budget_gib: float | None = None  # cap for the auto micro-batch (per-process memory fraction)
    cache_dir: str | None = None    # packed rows cached here by content hash

    @classmethod
    def from_any(cls, cfg_like: Any) -> "FastConfig":
        """Build from a FastConfig, a dict, or any object with same-named (or common alias) attributes."""
        if isinstance(cfg_like, cls):
            return cfg_like
        src = dict(cfg_like) if isinstance(cfg_like, dict) else {
            k: getattr(cfg_like, k) for k in dir(cfg_like) if not k.startswith("_")}
        alias = {"lr": "learning_rate", "num_epochs": "epochs", "num_train_epochs": "epochs",
                 "max_seq_length": "max_length", "max_seq_len": "max_length", "r": "lora_r",
                 "lora_rank": "lora_r"}
        names = {f.name for f in fields(cls)}
        kw = {}
        for k, v in src.items():
            k2 = alias.get(k, k)
            if k2 in names and v is not None and not callable(v):
                kw[k2] = v
        return cls(**kw)


def _load(model: Any, quantize: str, device: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not isinstance(model, (str, os.PathLike)):
        return model, "given"
    if quantize == "nf4":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        m = AutoModelForCausalLM.from_pretrained(model, quantization_config=q, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa", device_map={"": 0})
        return m, "nf4"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    m = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="sdpa").to(device)
    return m, str(dtype).replace("torch.", "")


def _packed_rows(examples: list[dict], fc: FastConfig, stats: PackStats):
    if not fc.packing:
        rows = []
        for i, ex in enumerate(examples):
            rows += pack_examples([ex], fc.max_length, shuffle_seed=None, stats=stats)
        import random
        random.Random(fc.seed).shuffle(rows)
        return rows
    key = None
    if fc.cache_dir:
        from .packing import cache_key
        key = cache_key(examples, fc.max_length, extra=f"seed={fc.seed}")
        p = Path(fc.cache_dir) / f"packed-{key}.pt"
        if p.exists():
            blob = torch.load(p, weights_only=False)
            for k, v in blob["stats"].items():
                setattr(stats, k, v)
            return blob["rows"]
    rows = pack_examples(examples, fc.max_length, shuffle_seed=fc.seed, stats=stats)
    if key:
        Path(fc.cache_dir).mkdir(parents=True, exist_ok=True)
        torch.save({"rows": rows, "stats": asdict(stats)}, Path(fc.cache_dir) / f"packed-{key}.pt")
    return rows


def _inner(peft_model):
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    return base.model, base.lm_head


def _forward_loss(peft_model, batch, device, use_liger, autocast):
    body, head = _inner(peft_model)
    ids = batch["input_ids"].to(device, non_blocking=True)
    pos = batch["position_ids"].to(device, non_blocking=True)
    lab = batch["labels"].to(device, non_blocking=True)
    with autocast:
        hidden = body(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        loss, n = linear_cross_entropy(hidden, head.weight, lab, use_liger=use_liger)
    return loss, n


def train_fast(model, tokenizer, tokenized_examples: list[dict], cfg_like: Any, out_dir: str | os.PathLike | None,
               progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train a LoRA/QLoRA adapter with the fast engine and return metrics.

    model: a model folder/name (loaded as NF4 QLoRA on CUDA, LoRA on CPU) or an already loaded
        ``PreTrainedModel`` (used as is; LoRA is added).
    tokenizer: used only for ``pad_token_id`` (may be None: pad id 0).
    tokenized_examples: list of {"input_ids": [...], "labels": [...]} with -100 on tokens that carry no
        loss (what ``train.data.tokenize_example`` returns).
    cfg_like: a :class:`FastConfig`, a dict, or a config object with same-named attributes
        (``learning_rate``/``lr``, ``epochs``, ``max_length``, ``lora_r`` ...; unknown ones are ignored).
    out_dir: where the adapter (``adapter/``) and ``fast_metrics.json`` go; None = do not save.
    progress: called as progress(step, total_steps, loss) after each optimizer step.

    Returns a dict: steps, losses (per optimizer step), step_seconds, step_real_tokens, tokens_per_s_real
    (over all steps but the first), peak_gib, micro_rows, gradient_checkpointing, liger, compile,
    packing stats, quantization, device.
    """
    from peft import LoraConfig, get_peft_model

    fc = FastConfig.from_any(cfg_like)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    quant = fc.quantize if fc.quantize != "auto" else ("nf4" if device == "cuda" else "none")
    if quant == "nf4" and device != "cuda":
        raise RuntimeError("quantize='nf4' needs CUDA (bitsandbytes NF4); use quantize='none' on CPU")
    torch.manual_seed(fc.seed)
    if device == "cuda" and fc.memory_budget_gib:
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, fc.memory_budget_gib / total))
    stats = PackStats()
    rows = _packed_rows(tokenized_examples, fc, stats)
    m, qdesc = _load(model, quant, device)
    use_liger = fc.liger if fc.liger is not None else liger_available()
    liger_info = apply_liger(m) if use_liger else {"liger": False, "applied": [], "reason": "disabled"}
    if use_liger and not liger_info["liger"]:
        raise RuntimeError(f"liger=True but unavailable: {liger_info['reason']}")
    m.config.use_cache = False
    lora = LoraConfig(r=fc.lora_r, lora_alpha=fc.lora_alpha, lora_dropout=fc.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    pm = get_peft_model(m, lora)
    trainable = [p for p in pm.parameters() if p.requires_grad]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext())
    compiled = False
    if fc.compile and device == "cuda":
        body, _ = _inner(pm)
        for layer in body.layers:
            layer.compile(dynamic=False)
        compiled = True
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0

    def set_gc(on: bool):
        base = pm.get_base_model()
        if on:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif getattr(base, "is_gradient_checkpointing", False):
            base.gradient_checkpointing_disable()
        base.train()

    # --- micro-batch sizing: probe forward+backward, halve on OOM -------------------------------------
    rows_per_step = max(1, fc.tokens_per_step // fc.max_length)
    gc_mode = fc.gradient_checkpointing
    if fc.micro_rows != "auto":
        micro = int(fc.micro_rows)
        set_gc(gc_mode == "on")
        gc_on = gc_mode == "on"
    else:
        # for each checkpointing option: the largest micro-batch that fits; then, if both fit, the faster
        # one wins (timed on one forward+backward each): under a tight memory budget checkpointing with a
        # big micro-batch often beats no checkpointing with a tiny one
        fits = []
        for gc_try in {"off": [False], "on": [True], "auto": [False, True]}[gc_mode]:
            set_gc(gc_try)
            cand = min(fc.max_micro_rows, rows_per_step, len(rows))
            cand = 2 ** int(math.log2(max(1, cand)))
            while cand >= 1:
                if device != "cuda":
                    break
                try:
                    b = collate_rows(rows[:cand], fc.max_length, pad_id)
                    for rep in range(2):  # second pass timed (first = warm-up / fit check)
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        loss, _ = _forward_loss(pm, b, device, use_liger, autocast)
                        loss.backward()
                        del loss
                        pm.zero_grad(set_to_none=True)
                        torch.cuda.synchronize()
                    fits.append((b["n_real"] / (time.perf_counter() - t0), cand, gc_try))
                    break
                except torch.OutOfMemoryError:
                    pm.zero_grad(set_to_none=True)
                    torch.cuda.empty_cache()
                    cand //= 2
            if device != "cuda":
                fits.append((0.0, max(1, cand), gc_try))
                break
            if fits and cand >= min(fc.max_micro_rows, rows_per_step):
                break  # the full step fits without checkpointing: nothing to gain from trying it
        if not fits:
            raise RuntimeError("even one row of max_length tokens does not fit in memory with checkpointing; "
                               "lower max_length or raise memory_budget_gib")
        _, micro, gc_on = max(fits)
        set_gc(gc_on)
    accum = max(1, rows_per_step // micro)
    rows_per_step = accum * micro
    steps_per_epoch = max(1, len(rows) // rows_per_step)
    total_steps = fc.max_steps if fc.max_steps > 0 else max(1, int(round(steps_per_epoch * fc.epochs)))

    opt = torch.optim.AdamW(trainable, lr=fc.learning_rate, weight_decay=0.0, betas=(0.9, 0.999),
                            fused=(device == "cuda"))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / fc.warmup_steps if fc.warmup_steps else 1.0)
        * max(0.0, 1.0 - s / total_steps))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses, secs, toks = [], [], []
    cursor = 0
    for step in range(total_steps):
        t0 = time.perf_counter()
        mbs = []
        for _ in range(accum):
            if cursor + micro > len(rows):
                cursor = 0
            mbs.append(collate_rows(rows[cursor:cursor + micro], fc.max_length, pad_id))
            cursor += micro
        n_step = sum(b["n_targets"] for b in mbs) or 1
        step_loss = torch.zeros((), device=device)
        for b in mbs:
            loss, n = _forward_loss(pm, b, device, use_liger, autocast)
            (loss * (n / n_step)).backward()
            step_loss += loss.detach() * (n / n_step)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        lv = float(step_loss)  # the one host sync per step
        secs.append(time.perf_counter() - t0)
        toks.append(sum(b["n_real"] for b in mbs))
        losses.append(lv)
        if progress:
            progress(step + 1, total_steps, lv)
    timed = slice(1, None) if len(secs) > 1 else slice(None)
    metrics = {
        "steps": total_steps, "losses": losses, "step_seconds": secs, "step_real_tokens": toks,
        "tokens_per_s_real": sum(toks[timed]) / max(1e-9, sum(secs[timed])),
        "peak_gib": (torch.cuda.max_memory_allocated() / 2**30) if device == "cuda" else None,
        "micro_rows": micro, "accum": accum, "gradient_checkpointing": gc_on, "liger": liger_info,
        "compile": compiled, "packing": asdict(stats) | {"fill": stats.fill, "enabled": fc.packing},
        "quantization": qdesc, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "config": asdict(fc),
    }
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pm.save_pretrained(out / "adapter")
        (out / "fast_metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    metrics["model"] = pm
    return metrics
