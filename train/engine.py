"""The default training engine of ``python -m train`` (``engine = "fast"``), on CPU and CUDA alike.

A plain PyTorch loop over pre-tokenized examples, with the same template, masks, LoRA config and
optimizer semantics as the TRL engine (``engine = "trl"``, kept as the reference), plus what makes it
cheaper, each exact (``tests/test_engine.py`` checks them against the plain HF loss):

* **packing per step**: the ``batch_size × grad_accum`` examples of a step are packed first-fit into rows
  of ``max_length`` tokens with per-example position ids (block-diagonal attention, :mod:`train.packing`),
  so no padding is computed;
* **target-only loss head**: the LM head projects only assistant (target) positions, never the full
  ``[tokens, vocab]`` logits (:func:`train.kernels.linear_cross_entropy`; Liger's fused kernel on CUDA);
* **frozen-prefix cache** (``lora_layers = N``): layers below the lowest adapted one are frozen and see no
  dropout, so their output for an example never changes. It is computed once per example (inference mode)
  and reused every epoch; each step runs only the top N layers forward and backward. On a 2-core CPU this
  is what makes ``make demo`` fit its budget;
* CUDA: NF4 QLoRA (bitsandbytes, double quant, bf16 compute), Liger RMSNorm/RoPE/SwiGLU when installed,
  micro-batches halved on out-of-memory and per-layer activation checkpointing only when even one row does
  not fit.

Checkpoints (adapter weights, optimizer, scheduler, step) go to ``checkpoints/checkpoint-N`` every
``save_steps``; ``--resume`` continues from the newest one and ends at the same step count, because the
data order is a pure function of (seed, epoch).
"""
from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch

from .kernels import apply_liger, liger_available, linear_cross_entropy
from .packing import IGNORE, collate_rows, pack_examples

CACHE_BUDGET_BYTES = 4 * 2**30  # frozen-prefix cache larger than this: recompute the prefix every step


def _body_head(pm):
    base = pm.get_base_model() if hasattr(pm, "get_base_model") else pm
    body = getattr(base, "model", None)
    if body is None or not hasattr(body, "layers") or not hasattr(body, "rotary_emb"):
        raise RuntimeError(f"the fast engine supports Llama-family decoders (model.layers + rotary_emb); "
                           f"{type(base).__name__} is not one — use --engine trl")
    return body, base.lm_head


@functools.lru_cache(maxsize=1)
def _mask_params() -> frozenset:
    import inspect

    from transformers.masking_utils import create_causal_mask

    return frozenset(inspect.signature(create_causal_mask).parameters)


def _causal_mask(config, hidden: torch.Tensor, pos: torch.Tensor):
    """transformers' causal mask for packed position ids, across the 4.5x and 5.x signatures."""
    from transformers.masking_utils import create_causal_mask

    params = _mask_params()
    kw = {"config": config, "attention_mask": None, "position_ids": pos}
    kw["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = hidden
    if "cache" in params:
        kw["cache"] = None
    if "past_key_values" in params:
        kw["past_key_values"] = None
    if "cache_position" in params:
        kw["cache_position"] = torch.arange(hidden.shape[1], device=hidden.device)
    return create_causal_mask(**kw)


def run_layers(body, hidden: torch.Tensor, pos: torch.Tensor, lo: int, hi: int, *, final_norm: bool,
               checkpoint_layers: bool = False) -> torch.Tensor:
    """Decoder layers ``lo:hi`` of ``body`` on ``hidden`` [B,T,H] with packed position ids (no attention
    across examples: transformers builds the block-diagonal mask from the restarting position ids)."""
    mask = _causal_mask(body.config, hidden, pos)
    pe = body.rotary_emb(hidden, position_ids=pos)
    for layer in body.layers[lo:hi]:
        if checkpoint_layers and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            hidden = checkpoint(lambda h, _l=layer: _l(h, attention_mask=mask, position_embeddings=pe,
                                                       position_ids=pos), hidden, use_reentrant=False)
        else:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=pe, position_ids=pos)
    return body.norm(hidden) if final_norm else hidden


class PrefixCache:
    """Per-example output of the frozen layers ``0:k`` (computed once, in inference mode)."""

    def __init__(self, body, examples: list[dict], k: int, max_length: int, device: str, dtype, autocast,
                 progress: bool = True) -> None:
        from tqdm import tqdm

        self.k = k
        self.store: list[torch.Tensor | None] = [None] * len(examples)
        rows = pack_examples(examples, max_length, shuffle_seed=None)  # packed: no padding computed here either
        was_training = body.training
        body.eval()
        bs = 16
        with torch.inference_mode(), autocast:
            for s in tqdm(range(0, len(rows), bs), desc=f"frozen layers 0-{k - 1} (once)", unit="batch",
                          file=sys.stderr, disable=not progress):
                chunk = rows[s:s + bs]
                b = collate_rows(chunk, max_length, 0)
                ids, pos = b["input_ids"].to(device), b["position_ids"].to(device)
                h = run_layers(body, body.embed_tokens(ids), pos, 0, k, final_norm=False)
                for r, row in enumerate(chunk):
                    for j, i in enumerate(row.sources):
                        a, z = row.cu_seqlens[j], row.cu_seqlens[j + 1]
                        self.store[i] = h[r, a:z].to(dtype).clone()
        body.train(was_training)

    def batch(self, idx_rows: list[list[int]], T: int, H: int, device: str) -> torch.Tensor:
        out = torch.zeros((len(idx_rows), T, H), dtype=self.store[idx_rows[0][0]].dtype, device=device)
        for r, members in enumerate(idx_rows):
            a = 0
            for i in members:
                h = self.store[i]
                out[r, a:a + h.shape[0]] = h
                a += h.shape[0]
        return out


def _pack_step(examples: list[dict], idx: list[int], max_length: int):
    """Pack the step's examples; returns (rows, member indices per row)."""
    rows = pack_examples([examples[i] for i in idx], max_length, shuffle_seed=None)
    return rows, [[idx[j] for j in r.sources] for r in rows]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _save_checkpoint(pm, opt, sched, step: int, extra: dict, ck_dir: Path, keep: int = 2) -> None:
    from peft import get_peft_model_state_dict

    tmp = ck_dir / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"adapter": get_peft_model_state_dict(pm), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "step": step, "extra": extra,
                "rng": torch.get_rng_state()}, tmp / "state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"global_step": step, **extra}, indent=1))
    final = ck_dir / f"checkpoint-{step}"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # atomic: a kill leaves either the old set or a complete new checkpoint
    cks = sorted(ck_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for old in cks[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _all_reduce_(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def train_engine(cfg, pm, tok, examples: list[dict], run_dir: Path, *, device: str, quant: str,
                 resume_ckpt: Path | None, log_metrics: Callable[[dict], None], rank: int = 0,
                 world: int = 1) -> dict[str, Any]:
    """Train the PEFT model ``pm`` in place on ``examples``; returns the run summary for the manifest.

    Several processes (``world`` > 1, a joined process group): ``batch_size`` is per process, so a step's
    global batch is ``batch_size × grad_accum × world``. Every rank draws the same global batch, trains on its
    slice ``[rank::world]``, scales its loss by the global target count and all-reduces (sums) the LoRA
    gradients: the update is exactly the single-process update on the global batch. Rank 0 logs and writes
    checkpoints; every rank reads them on ``--resume``.
    """
    from tqdm import tqdm
    from transformers import get_scheduler

    body, head = _body_head(pm)
    n_layers = len(body.layers)
    k = n_layers - cfg.lora_layers if cfg.lora_layers else 0
    cuda = device == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    use_liger = cuda and liger_available()
    H = body.config.hidden_size

    prefix = None
    if k > 0:
        itemsize = 2 if cuda else 4
        need = sum(len(e["input_ids"]) for e in examples) * H * itemsize
        if need <= CACHE_BUDGET_BYTES:
            prefix = PrefixCache(body, examples, k, cfg.max_length, device,
                                 torch.bfloat16 if cuda else torch.float32, autocast)
    per_step = cfg.batch_size * cfg.grad_accum * world
    n_tgt = [sum(y != IGNORE for y in e["labels"][1:]) for e in examples]
    spe = max(1, math.ceil(len(examples) / per_step))
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(spe * cfg.epochs))
    trainable = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=cuda)
    sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=int(math.ceil(cfg.warmup_ratio * total)),
                          num_training_steps=total)
    start, seen_tokens, ckpt_extra = 0, 0, {}
    if resume_ckpt is not None:
        from peft import set_peft_model_state_dict

        st = torch.load(resume_ckpt / "state.pt", weights_only=False, map_location=device)
        set_peft_model_state_dict(pm, st["adapter"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["rng"])
        start, ckpt_extra = st["step"], st["extra"]
        seen_tokens = ckpt_extra.get("num_tokens", 0)
    ck_dir = run_dir / "checkpoints"
    if cuda and getattr(cfg, "gpu_memory_gib", 0):
        total_gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.gpu_memory_gib / total_gib))
    pm.train()
    micro_rows: int | None = None  # None: a step's rows split into grad_accum micro-batches; set (halved) on CUDA OOM
    # under a memory cap, start with activation checkpointing: a failed try without it leaves the allocator
    # fragmented at the cap, and checkpointing with big micro-batches beats small ones without it
    checkpoint_layers = bool(cuda and getattr(cfg, "gpu_memory_gib", 0))
    window_loss, window_n, t_win, tok_win = 0.0, 0, time.time(), 0
    losses: list[float] = []
    pad_id = tok.pad_token_id or 0
    bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr, disable=rank != 0)
    t_train = time.time()
    step = start
    order, order_epoch = [], -1
    for step in range(start + 1, total + 1):
        e, j = divmod(step - 1, spe)
        if e != order_epoch:  # one permutation per epoch, not per step
            order, order_epoch = epoch_order(len(examples), cfg.seed, e), e
        idx_global = order[j * per_step:(j + 1) * per_step]
        n_targets = sum(n_tgt[i] for i in idx_global) or 1
        idx = idx_global[rank::world]
        rows, members = _pack_step(examples, idx, cfg.max_length) if idx else ([], [])
        def micro_step(rws, mbrs) -> float:
            # its own frame: after an out-of-memory error every activation of the failed try is freed
            b = collate_rows(rws, cfg.max_length, pad_id)
            pos = b["position_ids"].to(device)
            lab = b["labels"].to(device)
            with autocast:
                if prefix is not None:
                    h = prefix.batch(mbrs, cfg.max_length, H, device)
                else:
                    ids = b["input_ids"].to(device)
                    with torch.no_grad() if k > 0 else nullcontext():
                        h = body.embed_tokens(ids)
                        if k > 0:
                            h = run_layers(body, h, pos, 0, k, final_norm=False)
                h = run_layers(body, h, pos, k, n_layers, final_norm=True, checkpoint_layers=checkpoint_layers)
                loss, n = linear_cross_entropy(h, head.weight, lab, use_liger=use_liger)
            (loss * (n / n_targets)).backward()
            return float(loss.detach()) * n / n_targets

        while True:
            try:
                step_loss = 0.0
                m = micro_rows or max(1, math.ceil(len(rows) / cfg.grad_accum))
                for s in range(0, len(rows), m):
                    step_loss += micro_step(rows[s:s + m], members[s:s + m])
                break
            except torch.OutOfMemoryError:
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                m = micro_rows or max(1, math.ceil(len(rows) / cfg.grad_accum))
                if not checkpoint_layers:  # cheaper than smaller micro-batches (measured in bench/train_speed.py)
                    checkpoint_layers = True
                elif m > 1:
                    micro_rows = m // 2
                else:
                    raise RuntimeError("one row of max_length tokens does not fit in GPU memory even with "
                                       "activation checkpointing; lower max_length") from None
                if rank == 0:
                    print(f"notice: out of GPU memory — retrying with activation checkpointing"
                          f"{f' and {micro_rows} row(s) per micro-batch' if micro_rows else ''}", file=sys.stderr)
        real = sum(len(r.input_ids) for r in rows)
        if world > 1:
            for p in trainable:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            flat = _all_reduce_(torch.cat([p.grad.reshape(-1) for p in trainable]))
            o = 0
            for p in trainable:
                p.grad.copy_(flat[o:o + p.numel()].view_as(p.grad))
                o += p.numel()
            stats = _all_reduce_(torch.tensor([step_loss, float(real)], dtype=torch.float64, device=flat.device))
            step_loss, real = float(stats[0]), int(stats[1])
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 1.0))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        seen_tokens += real
        tok_win += real
        window_loss += step_loss
        window_n += 1
        losses.append(step_loss)
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == total:
            now = time.time()
            tps = tok_win / max(now - t_win, 1e-9)
            rec = {"step": step, "epoch": step / spe, "loss": window_loss / window_n, "grad_norm": grad_norm,
                   "learning_rate": sched.get_last_lr()[0], "num_tokens": seen_tokens, "tokens_per_s": tps}
            log_metrics(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{tps:.0f}")
            window_loss, window_n, t_win, tok_win = 0.0, 0, now, 0
        if step % cfg.save_steps == 0 and step < total and rank == 0:
            _save_checkpoint(pm, opt, sched, step, {"num_tokens": seen_tokens}, ck_dir)
    bar.close()
    return {"steps": total, "max_steps": total, "epochs": total / spe, "tokens_seen": seen_tokens,
            "train_loss": sum(losses) / len(losses) if losses else ckpt_extra.get("train_loss"),
            "train_seconds": round(time.time() - t_train, 1),
            "engine": {"name": "fast", "world_size": world, "frozen_prefix_layers": k, "prefix_cached": prefix is not None,
                       "liger": use_liger, "micro_rows": micro_rows, "activation_checkpointing": checkpoint_layers,
                       "quantization": quant}}
