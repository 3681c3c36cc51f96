"""The default training engine of ``python -m train`` (``engine = "fast"``), on CPU and CUDA alike.

A plain PyTorch loop over pre-tokenized examples, with the same template, masks, LoRA config and
optimizer semantics as the TRL engine (``engine = "trl"``, kept as the reference), plus what makes it
cheaper, each exact (``tests/test_train.py`` and ``tests/test_engine_micro.py`` check them against the plain path):

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
  the attention kernel for packed rows timed (masked SDPA, memory-efficient SDPA or FlashAttention varlen,
  :func:`choose_attention`), no host sync of the engine's own inside a step,
  and the micro-batch sized to memory before the first step: :func:`choose_micro_batch` times a few
  forward+backward passes (no checkpointing / all layers / the fewest layers that fit) under the memory cap
  (``gpu_memory_gib``) and keeps the fastest; an out-of-memory error later checkpoints every layer, then
  halves the micro-batch, instead of failing.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from curate.compat import causal_mask, uncompile

from .kernels import (fusable_lora_modules, fused_lora, liger_available, linear_cross_entropy, target_index,
                      varlen_attention)
from .packing import IGNORE, collate_flat, collate_rows, pack_examples

CACHE_BUDGET_BYTES = 4 * 2**30  # frozen-prefix cache larger than this: recompute the prefix every step


# Decoder families whose forward is exactly embed_tokens → layers (per-layer-type mask and rotary embedding)
# → norm → lm_head (with the config's final logit soft-capping), which is what the engine reproduces. Anything
# else trains on the TRL engine (tests/test_train_families.py compares the first-step loss with transformers').
FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")


def fast_engine_unsupported(model) -> str | None:
    """Why the fast engine cannot train ``model`` exactly (None when it can)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    mt = getattr(base.config, "model_type", "?")
    if mt not in FAST_MODEL_TYPES:
        return f"model type {mt!r} is not one it reproduces exactly ({', '.join(FAST_MODEL_TYPES)})"
    body = getattr(base, "model", None)
    if body is None or not all(hasattr(body, a) for a in ("embed_tokens", "layers", "rotary_emb", "norm")):
        return f"{type(base).__name__} does not have the embed_tokens/layers/rotary_emb/norm decoder layout"
    if getattr(getattr(base, "lm_head", None), "bias", None) is not None:
        return "its lm_head has a bias"
    return None


def _body_head(pm):
    why = fast_engine_unsupported(pm)
    if why:
        raise RuntimeError(f"the fast engine cannot train this model: {why} — use --engine trl")
    base = pm.get_base_model() if hasattr(pm, "get_base_model") else pm
    return base.model, base.lm_head


def layer_types(config) -> list[str]:
    """Each decoder layer's attention type: the config's ``layer_types`` (Gemma 2/3, Qwen2/3), else sliding
    everywhere when the config has a window (Mistral, Phi-3), else full."""
    n = config.num_hidden_layers
    if getattr(config, "layer_types", None):
        return list(config.layer_types)[:n]
    return ["sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"] * n


def varlen_exact(config, max_length: int) -> bool:
    """The varlen kernel is plain causal attention: exact unless a sliding window shorter than a row applies, or
    the attention logits are soft-capped."""
    window = getattr(config, "sliding_window", None) or 0
    sliding = "sliding_attention" in layer_types(config) and window and window < max_length
    return not sliding and not getattr(config, "attn_logit_softcapping", None)


def logit_softcap(config) -> float | None:
    return getattr(config, "final_logit_softcapping", None) or None


def _position_embeddings(body, hidden: torch.Tensor, pos: torch.Tensor, kinds: set[str]) -> dict:
    """(cos, sin) per layer type: Gemma 3 has one rotary base per type, the others one for all."""
    import inspect

    if "layer_type" in inspect.signature(body.rotary_emb.forward).parameters:
        return {t: body.rotary_emb(hidden, pos, t) for t in kinds}
    pe = body.rotary_emb(hidden, position_ids=pos)
    return dict.fromkeys(kinds, pe)


def run_layers(body, hidden: torch.Tensor, pos: torch.Tensor, lo: int, hi: int, *, final_norm: bool,
               checkpoint_layers: int = 0, varlen: tuple[torch.Tensor, int] | None = None,
               dynamic: bool = False) -> torch.Tensor:
    """Decoder layers ``lo:hi`` of ``body`` on ``hidden`` [B,T,H] with packed position ids (no attention
    across examples: transformers builds the block-diagonal mask, sliding-window where the layer's type says so,
    from the restarting position ids).

    ``checkpoint_layers``: the first N of these layers keep only their input for backward and recompute the
    rest (selective activation checkpointing: N is chosen by :func:`choose_micro_batch` to fit memory).

    ``varlen`` = (cu_seqlens on the device, longest segment): variable-length attention over the flattened rows
    (:class:`train.kernels.varlen_attention` must be active) instead of a block-diagonal mask.

    ``dynamic`` (the layers are compiled, :func:`use_compile`): the length dimensions of every tensor the layers
    take are marked dynamic before the first call, so Inductor compiles one graph for all lengths and segment
    counts (unmarked, the first call specializes on its length and the second compiles again), and the input
    requires grad so the first layer shares the others' graph."""
    types = layer_types(body.config)
    kinds = set(types[lo:hi])
    masks = dict.fromkeys(kinds) if varlen is not None else {t: causal_mask(t, body.config, hidden, pos) for t in kinds}
    kw = {} if varlen is None else {"wb_cu_seqlens": varlen[0], "wb_max_seqlen": varlen[1]}
    pes = _position_embeddings(body, hidden, pos, kinds)
    if dynamic:
        hidden = _mark_dynamic(hidden, pos, pes, masks, varlen)
    for i, layer in enumerate(body.layers[lo:hi]):
        mask, pe = masks[types[lo + i]], pes[types[lo + i]]
        if i < checkpoint_layers and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            hidden = checkpoint(lambda h, _l=layer, _m=mask, _p=pe: _l(h, attention_mask=_m, position_embeddings=_p,
                                                                        position_ids=pos, **kw),
                                hidden, use_reentrant=False)
        else:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=pe, position_ids=pos, **kw)
    return body.norm(hidden) if final_norm else hidden


def _mark_dynamic(hidden, pos, pes: dict, masks: dict, varlen) -> torch.Tensor:
    from torch._dynamo import maybe_mark_dynamic

    if torch.is_grad_enabled() and not hidden.requires_grad:
        # the first trained layer's input (frozen embeddings or prefix) would otherwise be a second graph
        # (dynamo guards on requires_grad): one more compile against a wasted input gradient of one layer
        hidden = hidden.detach().requires_grad_(True)
    for t in (hidden, pos, *{id(p): p for pe in pes.values() for p in pe}.values()):
        maybe_mark_dynamic(t, 1)
    for mask in masks.values():
        if isinstance(mask, torch.Tensor):
            maybe_mark_dynamic(mask, 2)
            maybe_mark_dynamic(mask, 3)
    if varlen is not None:
        maybe_mark_dynamic(varlen[0], 0)
    return hidden


def choose_micro_batch(try_fb: Callable[[int, int], float | None], rows_needed: int, n_active: int,
                       margin_layers: int = 1) -> tuple[int, int, list[dict]]:
    """Pick (rows per micro-batch, checkpointed layers) for the fastest step that fits in GPU memory.

    ``try_fb(m, c)`` runs one timed forward+backward on ``m`` full rows with ``c`` of the ``n_active`` trained
    layers checkpointed and returns real tokens/s, or None when it ran out of memory. The search:

    1. no checkpointing: the largest micro-batch (``rows_needed``, then a half, a third, ... of it) that fits;
       if the whole step fits, that is the answer (nothing is recomputed, no accumulation);
    2. every layer checkpointed: the largest micro-batch that fits;
    3. if (2) fits more rows than (1): at that micro-batch, the fewest checkpointed layers that still fit
       (binary search; fitting is monotone in ``c``), plus ``margin_layers`` for allocator slack.

    The candidate with the highest measured tokens/s wins: under a tight memory cap a big micro-batch with
    checkpointing usually beats a small one without (``bench/train_speed.py``: 12 rows with checkpointing
    ~37k tokens/s against 2 rows without ~12k on the 1B shape, docs/gpu.md).
    Returns (m, c, trials) where trials lists every probe for the run manifest.
    """
    trials: list[dict] = []

    def probe(m: int, c: int) -> float | None:
        tps = try_fb(m, c)
        trials.append({"rows": m, "checkpointed_layers": c, "tokens_per_s": None if tps is None else round(tps)})
        return tps

    def largest(c: int) -> tuple[float, int] | None:
        # candidates: the whole step, then 2, 3, 4, 6, 8, ... balanced micro-batches per step
        tried, k = set(), 1
        while True:
            m = math.ceil(rows_needed / k)
            if m not in tried:
                tried.add(m)
                tps = probe(m, c)
                if tps is not None:
                    return tps, m
            if m == 1:
                return None
            k = k + 1 if k < 4 else k * 3 // 2

    best0 = largest(0)
    if best0 and best0[1] == rows_needed:
        return rows_needed, 0, trials
    best_all = largest(n_active) if n_active else None
    if best_all is None:
        if best0 is None:
            raise RuntimeError("one row of max_length tokens does not fit in GPU memory even with activation "
                               "checkpointing; lower max_length or raise gpu_memory_gib")
        return best0[1], 0, trials
    cands = [(best_all[0], best_all[1], n_active)]
    if best0:
        cands.append((best0[0], best0[1], 0))
    m = best_all[1]
    if n_active > 1 and (best0 is None or m > best0[1]):
        lo, hi = 0, n_active  # c=0 does not fit at m, c=n_active does
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if probe(m, mid) is None:
                lo = mid
            else:
                hi = mid
        c = min(n_active, hi + margin_layers)
        if c < n_active:
            tps = probe(m, c)
            if tps is not None:
                cands.append((tps, m, c))
    tps, m, c = max(cands)
    return m, c, trials


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


def _attention_kernel(name: str):
    """Attention kernel of a micro-batch: "auto" = SDPA in torch's own order (cuDNN first on Hopper) with the
    block-diagonal mask, "efficient" = SDPA's memory-efficient kernel with the mask, "varlen" = FlashAttention's
    variable-length kernel over the packed examples (no mask; :class:`train.kernels.varlen_attention`).
    cuDNN with a mask costs ~1.7 ms of CPU per call on an H200 (bench/results/train_speed_profile_b8.txt),
    which a launch-bound step pays 48 times."""
    if name == "varlen":
        return varlen_attention()
    if name == "auto" or not torch.cuda.is_available():
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name != "efficient":
        raise ValueError(f"unknown attention backend {name!r} (auto, efficient, varlen)")
    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


VARLEN_EDGE = 1.10  # choose_attention: another kernel must be this much faster than varlen on the probe to win


def choose_attention(try_fb: Callable[[int, int], float | None], m: int, c: int, trials: list[dict],
                     attn: dict, losses: dict, rtol: float = 1e-2,
                     names: tuple[str, ...] = ("varlen", "efficient", "auto")) -> str:
    """Time the chosen micro-batch (``m`` rows, ``c`` checkpointed layers) with each other attention kernel;
    the fastest wins, with varlen credited :data:`VARLEN_EDGE` for what the probe cannot see. ``losses`` maps
    (m, c, backend) to the loss ``try_fb`` measured: a kernel whose loss is not within ``rtol`` of SDPA's on the
    same rows is rejected (a guard, not the proof: tests/test_kernels.py checks the kernels themselves). A kernel
    that fails (not built for this GPU/dtype/torch) is skipped. ``names``: the kernels exact for this model
    (:func:`varlen_exact`), ``"auto"`` last. Every try is recorded in ``trials`` (the run manifest)."""
    speed = {"auto": max(((t["tokens_per_s"] or 0) for t in trials
                          if t["rows"] == m and t["checkpointed_layers"] == c and "attention" not in t), default=0)}
    ref = losses.get((m, c, "auto"))
    # SDPA is timed once more after the others: the chooser's first try at (m, c) often comes right after
    # out-of-memory tries and reads low (H200: 30.8k, then 40.6k for the same rows), which would favour the others
    for name in names:
        attn["backend"] = name
        note = None
        try:
            tps = try_fb(m, c)
        except Exception as e:  # noqa: BLE001 — any failure of an optional kernel means: not this one
            tps, note = None, f"{type(e).__name__}: {str(e)[:160]}"
        got = losses.get((m, c, name))
        if name != "auto" and tps and ref is not None and (got is None or not abs(got - ref) <= rtol * abs(ref)):
            tps, note = None, f"loss {got} vs SDPA's {ref}: rejected"
        t = {"rows": m, "checkpointed_layers": c, "attention": name, "tokens_per_s": None if tps is None else round(tps)}
        if note:
            t["note"] = note
        trials.append(t)
        speed[name] = max(speed.get(name, 0), tps or 0)  # SDPA: the better of its two reads
    # varlen wins unless another kernel is VARLEN_EDGE faster on the probe: the probe's rows are the step's longest,
    # so it sees neither the row padding varlen skips nor the recompiles a new row count costs the masked path
    # (Liger's RoPE specializes on the batch size; H200: +0.25 s on each first step of a row count)
    best = max(speed, key=lambda k: (speed[k] * (VARLEN_EDGE if k == "varlen" else 1.0), k == "auto"))
    attn["backend"] = best
    return best


# compile "auto": on for CUDA runs of at least this many optimizer steps. Measured on the H200 (1B shape, 24
# examples/step, bench/results/train_speed_history/h200_2026-12-02c_*.json): compiling adds ~55 s to the warm-up
# (64.4 s vs 9.7 s eager, cold Inductor cache) and saves ~0.08 s per step (0.151 vs 0.231 s), so it pays from
# ~700 steps (~830 on the slower lease of 2026-12-02b); 1000 leaves a margin
COMPILE_MIN_STEPS = 1000


def planned_steps(cfg, n_examples: int, world: int = 1) -> int:
    """Optimizer steps the run will take: ``max_steps``, or ``epochs`` passes of global batches."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_step = cfg.batch_size * cfg.grad_accum * world
    return max(1, math.ceil(max(1, math.ceil(n_examples / per_step)) * cfg.epochs))


def use_compile(cfg, cuda: bool, steps: int) -> bool:
    """Whether the trained decoder layers go through ``torch.compile`` (``cfg.compile``): "on", "off", or "auto"
    = on for CUDA runs of at least :data:`COMPILE_MIN_STEPS` steps. Compiled, the layers run plain torch
    RMSNorm/RoPE/SwiGLU (Inductor fuses them; the recipe then skips Liger's kernels, which the compiler cannot
    fuse across) with varlen attention, and Liger's fused loss head stays. On the H200 the 1B step is launch-bound,
    and compiling cuts its host time (docs/gpu.md); it costs a one-off compile, hence the step threshold."""
    mode = getattr(cfg, "compile", "off")
    return mode == "on" or (mode == "auto" and cuda and steps >= COMPILE_MIN_STEPS)


def small_step_notice(rank: int, tokens_per_step: float, cfg) -> None:
    """Say so when a step is too small to keep a GPU busy; the step size is a training setting, so the engine
    never changes it by itself (the same config trains the same way on every machine)."""
    if rank == 0 and tokens_per_step < 4096 and cfg.grad_accum == 1:
        print(f"notice: a step of {cfg.batch_size} examples holds about {tokens_per_step:.0f} tokens; steps this "
              f"small are bound by kernel launches on a GPU, not by its FLOPs. --grad_accum 3 trains 2-3x the "
              f"tokens/s at the same memory (docs/gpu.md) but is a different optimisation (3x the examples per "
              f"step), so it is not done for you", file=sys.stderr)


def _alloc_retries() -> int:
    return int(torch.cuda.memory_stats().get("num_alloc_retries", 0))


def _pack_step(examples: list[dict], idx: list[int], max_length: int, packing: bool = True):
    """Pack the step's examples; returns (rows, member indices per row). ``packing=False`` (benchmark
    ablation only) gives one example per row, padded like an unpacked batch."""
    if not packing:
        rows = [pack_examples([examples[i]], max_length, shuffle_seed=None)[0] for i in idx]
        return rows, [[i] for i in idx]
    rows = pack_examples([examples[i] for i in idx], max_length, shuffle_seed=None)
    return rows, [[idx[j] for j in r.sources] for r in rows]


def _balanced(n: int, m: int) -> list[tuple[int, int]]:
    """Split ``n`` rows into ceil(n/m) micro-batches of near-equal size (12 rows, m=10: 6+6, not 10+2)."""
    k = max(1, math.ceil(n / m)) if n else 0
    bounds = [round(i * n / k) for i in range(k + 1)] if k else [0]
    return list(zip(bounds[:-1], bounds[1:]))


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


@dataclass
class Tuning:
    """Benchmark-only knobs (``bench/train_speed.py``'s ablations); not user settings, never in TrainConfig.

    ``packing`` False: one example per row. ``liger_loss`` False: chunked torch loss head. ``micro_rows`` /
    ``checkpointed_layers``: fixed instead of timed (``checkpointed_layers`` may be ``"all"``). ``attn``: the
    attention kernel, fixed. ``flat_multiple``: varlen's one-sequence micro-batch padded to a multiple of this
    many tokens (:func:`train.packing.collate_flat`). ``compile``: overrides the compile decision.
    ``fused_lora``: PEFT's LoRA layers as one autograd node each (:func:`train.kernels.lora_linear`), an
    ablation that lost to the compiled layers (docs/gpu.md)."""

    packing: bool = True
    liger_loss: bool = True
    micro_rows: int | None = None
    checkpointed_layers: int | str = 0
    attn: str | None = None
    flat_multiple: int = 64
    compile: bool | None = None
    fused_lora: bool = False

    @classmethod
    def of(cls, tuning: "Tuning | dict | None") -> "Tuning":
        if isinstance(tuning, cls):
            return tuning
        unknown = set(tuning or {}) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown tuning option(s) {sorted(unknown)}")
        return cls(**(tuning or {}))

    def overrides(self) -> dict:
        """The fields that differ from the defaults (what the manifest records)."""
        return {k: v for k, v in asdict(self).items() if v != getattr(Tuning(), k)}


class Engine:
    """The fast engine's run, in named phases: :meth:`__init__` (model parts, prefix cache, optimizer, compile),
    :meth:`resume`, :meth:`plan` (micro-batch, checkpointing and attention timed on CUDA), :meth:`train_step`
    (forward+backward of a step's micro-batches, degrading on out-of-memory), :meth:`reduce` (several
    processes), :meth:`log` / :meth:`checkpoint`, and :meth:`run` which strings them together.

    Several processes (``world`` > 1, a joined process group): ``batch_size`` is per process, so a step's
    global batch is ``batch_size × grad_accum × world``. Every rank draws the same global batch, trains on its
    slice ``[rank::world]``, scales its loss by the global target count and all-reduces (sums) the LoRA
    gradients: the update is exactly the single-process update on the global batch. Rank 0 logs and writes
    checkpoints; every rank reads them on ``--resume``."""

    def __init__(self, cfg, pm, tok, examples: list[dict], run_dir: Path, *, device: str, quant: str,
                 rank: int = 0, world: int = 1, tuning: "Tuning | dict | None" = None, compiled: bool | None = None):
        from transformers import get_scheduler

        self.t_engine = time.time()
        self.cfg, self.pm, self.examples, self.run_dir = cfg, pm, examples, Path(run_dir)
        self.device, self.quant, self.rank, self.world = device, quant, rank, world
        self.tuning = Tuning.of(tuning)
        self.body, self.head = _body_head(pm)
        self.n_layers = len(self.body.layers)
        self.k = self.n_layers - cfg.lora_layers if cfg.lora_layers else 0  # frozen-prefix layers
        self.n_active = self.n_layers - self.k
        self.cuda = device == "cuda"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
        self.use_liger = self.cuda and liger_available() and self.tuning.liger_loss
        self.softcap = logit_softcap(self.body.config)
        self.varlen_ok = varlen_exact(self.body.config, cfg.max_length)
        self.pad_id = tok.pad_token_id or 0
        self.prefix = self._prefix_cache()
        self.per_step = cfg.batch_size * cfg.grad_accum * world
        self.n_tgt = [sum(y != IGNORE for y in e["labels"][1:]) for e in examples]
        self.spe = max(1, math.ceil(len(examples) / self.per_step))  # steps per epoch
        self.total = planned_steps(cfg, len(examples), world)
        self.trainable = [p for p in pm.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                     fused=self.cuda)
        self.sched = get_scheduler(cfg.lr_scheduler, self.opt, num_training_steps=self.total,
                                   num_warmup_steps=int(math.ceil(cfg.warmup_ratio * self.total)))
        self.start, self.seen_tokens, self.ckpt_extra = 0, 0, {}
        self.lora_mods = fusable_lora_modules(pm) if self.tuning.fused_lora else []
        self.lora_fused = fused_lora(self.lora_mods)  # entered on every micro-batch (no layers: does nothing)
        # one compile decision: the tuning override, else the recipe's (use_compile), else use_compile here
        self.compiled = bool(next(c for c in (self.tuning.compile, compiled, use_compile(cfg, self.cuda, self.total))
                                  if c is not None))
        # attention kernel: "auto" (masked SDPA), "efficient", "varlen"; compiled on CUDA: varlen, not timed (one
        # graph for every length; the masked kernels' [T, T] mask would be one more dynamic input)
        # the one place the kernel lives: choose_attention switches it through this dict while it times each
        self._attn = {"backend": self.tuning.attn or ("varlen" if self.compiled and self.cuda and self.varlen_ok
                                                      else "auto")}
        if self.compiled:  # dynamic shapes: one graph for every micro-batch length
            for layer in self.body.layers[self.k:]:
                layer.compile(dynamic=True)
        self.micro_rows, self.ckpt_layers, self.probe_trials = None, 0, []
        self.retry_steps: list[int] = []
        if self.cuda and getattr(cfg, "gpu_memory_gib", 0):
            total_gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
            torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.gpu_memory_gib / total_gib))
        pm.train()

    @property
    def attn(self) -> str:
        return self._attn["backend"]

    @attn.setter
    def attn(self, name: str) -> None:
        self._attn["backend"] = name

    def _prefix_cache(self):
        if self.k <= 0:
            return None
        itemsize = 2 if self.cuda else 4
        need = sum(len(e["input_ids"]) for e in self.examples) * self.body.config.hidden_size * itemsize
        if need > CACHE_BUDGET_BYTES:
            return None  # recompute the frozen prefix every step
        return PrefixCache(self.body, self.examples, self.k, self.cfg.max_length, self.device,
                           torch.bfloat16 if self.cuda else torch.float32, self.autocast)

    # ---- resume ------------------------------------------------------------------------------------------
    def resume(self, ckpt: Path | None) -> None:
        if ckpt is None:
            return
        from peft import set_peft_model_state_dict

        st = torch.load(ckpt / "state.pt", weights_only=False, map_location=self.device)
        set_peft_model_state_dict(self.pm, st["adapter"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["rng"])
        self.start, self.ckpt_extra = st["step"], st["extra"]
        self.seen_tokens = self.ckpt_extra.get("num_tokens", 0)

    # ---- one micro-batch ---------------------------------------------------------------------------------
    def _batch(self, rws) -> tuple:
        """(ids, positions, targets, varlen, T) on the device, in one pinned, non-blocking copy."""
        if self.attn == "varlen":  # one sequence [1, N], no padding between rows (collate_flat says why)
            b = collate_flat(rws, self.tuning.flat_multiple, self.pad_id)
            T, cu, longest = b["input_ids"].shape[1], b["cu_seqlens"], b["longest"]
        else:
            # rows padded to the longest one, rounded up to a multiple of 64: few distinct shapes, so Triton
            # (Liger) and cuBLAS compile/tune once, not on every new length
            T = min(self.cfg.max_length, -(-max(len(r.input_ids) for r in rws) // 64) * 64)
            b = collate_rows(rws, T, self.pad_id)
            cu, longest = [], 0
        tidx, ty = target_index(b["labels"])
        n = int(ty.numel())
        flat = torch.cat([b["input_ids"].reshape(-1), b["position_ids"].reshape(-1), tidx, ty,
                          torch.tensor(cu, dtype=torch.long)])
        if self.cuda:
            flat = flat.pin_memory().to(self.device, non_blocking=True)
        BT = b["input_ids"].numel()
        ids, pos = flat[:BT].view(-1, T), flat[BT:2 * BT].view(-1, T)
        targets = (flat[2 * BT:2 * BT + n], flat[2 * BT + n:2 * BT + 2 * n])
        # compiled: the longest segment is passed as its bound (max_length), not a new constant per batch
        bound = self.cfg.max_length if self.compiled else longest
        varlen = (flat[2 * BT + 2 * n:].to(torch.int32), bound) if cu else None
        return ids, pos, targets, varlen, T

    def fwd_bwd(self, rws, mbrs, n_targets: int, ckpt: int) -> torch.Tensor:
        """One micro-batch forward+backward; returns its share of the step loss as a 0-d tensor on the device.

        No host sync of its own (Liger's fused loss has one): the targets are picked by an index built on the
        CPU, so the CPU keeps queueing kernels while the GPU works (at a few rows per step the step is
        launch-bound, docs/gpu.md). Its own frame: after an out-of-memory error every activation is freed."""
        ids, pos, targets, varlen, T = self._batch(rws)
        body, k = self.body, self.k
        with self.autocast, _attention_kernel(self.attn), self.lora_fused:
            if self.prefix is not None:
                flat_layout = self.attn == "varlen"
                h = self.prefix.batch([sum(mbrs, [])] if flat_layout else mbrs, T, body.config.hidden_size,
                                      self.device)
            else:
                with torch.no_grad() if k > 0 else nullcontext():
                    h = body.embed_tokens(ids)
                    if k > 0:
                        h = run_layers(body, h, pos, 0, k, final_norm=False)
            h = run_layers(body, h, pos, k, self.n_layers, final_norm=True, checkpoint_layers=ckpt, varlen=varlen,
                           dynamic=self.compiled)
            loss, _ = linear_cross_entropy(h, self.head.weight, None, use_liger=self.use_liger, targets=targets,
                                           softcap=self.softcap)
            n = int(targets[1].numel())
            (loss * (n / n_targets)).backward()
        return loss.detach().float() * (n / n_targets)

    # ---- plan: micro-batch, checkpointing, attention -------------------------------------------------------
    def _steps_ahead(self, n: int = 64) -> list[list[int]]:
        """This rank's example indices of the next ``n`` steps of the current epoch."""
        order = epoch_order(len(self.examples), self.cfg.seed, self.start // self.spe)
        j0 = self.start % self.spe
        return [order[j * self.per_step:(j + 1) * self.per_step][self.rank::self.world]
                for j in range(j0, min(self.spe, j0 + n))]

    def _prober(self, rows0, members0, probe_losses: dict) -> Callable[[int, int], float | None]:
        """``try_fb(m, c)``: one timed forward+backward of the ``m`` longest rows of the first step with ``c``
        checkpointed layers; real tokens/s, or None when out of memory."""
        full = sorted(range(len(rows0)), key=lambda r: -len(rows0[r].input_ids))

        def try_fb(m: int, c: int) -> float | None:
            sel = [full[i % len(full)] for i in range(m)]
            rws, mbrs = [rows0[i] for i in sel], [members0[i] for i in sel]
            real = sum(len(r.input_ids) for r in rws)
            try:
                with torch.random.fork_rng(devices=[torch.cuda.current_device()]):
                    dts = []
                    for rep in range(3):  # first: fit check and warm-up; then the best of two timed passes
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        loss = self.fwd_bwd(rws, mbrs, 1, c)
                        torch.cuda.synchronize()
                        dts.append(time.perf_counter() - t0)
                        if rep == 0:
                            probe_losses[(m, c, self.attn)] = float(loss)
                return real / min(dts[1:])
            except torch.OutOfMemoryError:
                return None
            finally:
                self.opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()

        return try_fb

    def plan(self) -> None:
        """Micro-batch (rows per forward/backward) and checkpointed layers: fixed by tuning, or timed up front on
        CUDA under the memory cap (:func:`choose_micro_batch`); on CPU a step's rows are split into grad_accum
        micro-batches, nothing checkpointed."""
        t = self.tuning
        if t.micro_rows is not None:
            self.micro_rows = int(t.micro_rows)
            c = t.checkpointed_layers
            self.ckpt_layers = self.n_active if c == "all" else int(c)
            return
        if not self.cuda:
            return
        steps0 = self._steps_ahead()
        rows0, members0 = _pack_step(self.examples, steps0[0], self.cfg.max_length, t.packing) if steps0 and steps0[0] else ([], [])
        if not rows0:
            return
        most = max(len(_pack_step(self.examples, ix, self.cfg.max_length, t.packing)[0]) for ix in steps0 if ix)
        need = max(1, math.ceil(most / self.cfg.grad_accum))
        probe_losses: dict = {}
        try_fb = self._prober(rows0, members0, probe_losses)
        self._probe_micro_batch(try_fb, need)
        if t.attn is None and not self.compiled:  # SDPA (cuDNN on Hopper) vs varlen flash vs efficient, timed
            choose_attention(try_fb, self.micro_rows, self.ckpt_layers, self.probe_trials, self._attn, probe_losses,
                             names=("varlen",) * self.varlen_ok + ("efficient", "auto"))
        self._say(f"micro-batch: {self.micro_rows} row(s) of {self.cfg.max_length} tokens, {self.ckpt_layers}/"
                  f"{self.n_active} trained layer(s) with activation checkpointing, attention {self.attn} "
                  f"(timed {len(self.probe_trials)} tries)")
        small_step_notice(self.rank, sum(min(len(self.examples[i]["input_ids"]), self.cfg.max_length)
                                         for ix in steps0 for i in ix) / max(1, len(steps0)), self.cfg)

    def _probe_micro_batch(self, try_fb, need: int) -> None:
        # slack of an eighth of the layers: at 1 layer (15/16 on the 1B shape) a later step ran out of memory
        margin = max(1, self.n_active // 8)
        try:
            self.micro_rows, self.ckpt_layers, self.probe_trials = choose_micro_batch(try_fb, need, self.n_active,
                                                                                      margin_layers=margin)
        except Exception as e:  # noqa: BLE001 — the compiler failed on this model/GPU: train eagerly instead
            if not self.compiled or self.tuning.compile is not None:
                raise
            self._say(f"notice: torch.compile failed ({type(e).__name__}: {str(e)[:200]}) — training the layers "
                      f"eagerly (plain torch, no Liger kernels); set compile: off to skip compiling")
            for layer in self.body.layers[self.k:]:
                uncompile(layer)
            self.compiled = False
            self.attn = self.tuning.attn or "auto"
            self.micro_rows, self.ckpt_layers, self.probe_trials = choose_micro_batch(try_fb, need, self.n_active,
                                                                                      margin_layers=margin)

    def _say(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, file=sys.stderr)

    # ---- one optimizer step ------------------------------------------------------------------------------
    def train_step(self, idx_global: list[int]) -> tuple[torch.Tensor, int]:
        """Forward+backward of one step's examples (this rank's slice); (loss tensor, real tokens)."""
        n_targets = sum(self.n_tgt[i] for i in idx_global) or 1
        idx = idx_global[self.rank::self.world]
        rows, members = _pack_step(self.examples, idx, self.cfg.max_length, self.tuning.packing) if idx else ([], [])
        while True:
            try:
                step_loss = torch.zeros((), device=self.device)
                m = self.micro_rows or max(1, math.ceil(len(rows) / self.cfg.grad_accum))
                for a, z in _balanced(len(rows), m):
                    step_loss += self.fwd_bwd(rows[a:z], members[a:z], n_targets, self.ckpt_layers)
                return step_loss, sum(len(r.input_ids) for r in rows)
            except torch.OutOfMemoryError:  # a longer step than the probe's, or fragmentation: degrade, never die
                self._degrade(len(rows))

    def _degrade(self, n_rows: int) -> None:
        self.opt.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        m = self.micro_rows or max(1, math.ceil(n_rows / self.cfg.grad_accum))
        if self.ckpt_layers < self.n_active:
            self.ckpt_layers = self.n_active
        elif m > 1:
            self.micro_rows = m // 2
        else:
            raise RuntimeError("one row of max_length tokens does not fit in GPU memory even with activation "
                               "checkpointing; lower max_length") from None
        self._say(f"notice: out of GPU memory — retrying with {self.micro_rows or m} row(s) per micro-batch and "
                  f"{self.ckpt_layers}/{self.n_active} checkpointed layers")

    def reduce(self, step_loss: torch.Tensor, real: int) -> tuple[torch.Tensor, int]:
        """Several processes: sum the LoRA gradients, the loss and the token count over ranks
        (``torch.distributed.all_reduce`` on one flat buffer: one collective per step)."""
        if self.world <= 1:
            return step_loss, real
        import torch.distributed as dist

        for p in self.trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in self.trainable])
        dist.all_reduce(flat)
        o = 0
        for p in self.trainable:
            p.grad.copy_(flat[o:o + p.numel()].view_as(p.grad))
            o += p.numel()
        stats = torch.stack([step_loss.double(), torch.tensor(float(real), dtype=torch.float64, device=flat.device)])
        dist.all_reduce(stats)
        return stats[0], int(stats[1])

    def _watch_memory_cap(self, step: int, retries: list[int]) -> None:
        """Under a memory cap the caching allocator frees its cache and retries when it hits the cap (a device
        sync and new cudaMallocs, every step at the edge); one more slice of checkpointed layers stops that."""
        r = _alloc_retries()
        if r <= retries[0]:
            return
        retries[0] = r
        self.retry_steps.append(step)
        if self.ckpt_layers < self.n_active:
            self.ckpt_layers = min(self.n_active, self.ckpt_layers + max(1, self.n_active // 8))
            self._say(f"notice: step {step} reached the GPU memory cap (allocator retry) — checkpointing "
                      f"{self.ckpt_layers}/{self.n_active} layers from now on")

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self, log_metrics: Callable[[dict], None]) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        self.plan()
        capped = self.cuda and bool(getattr(cfg, "gpu_memory_gib", 0)) and self.tuning.micro_rows is None
        retries = [_alloc_retries() if self.cuda else 0]
        win = {"loss": 0.0, "n": 0, "t": time.time(), "tok": 0}
        losses: list[torch.Tensor] = []
        bar = tqdm(total=self.total, initial=self.start, desc="train", unit="step", file=sys.stderr,
                   disable=self.rank != 0)
        t_train, t_first = time.time(), 0.0
        order, order_epoch = [], -1
        for step in range(self.start + 1, self.total + 1):
            e, j = divmod(step - 1, self.spe)
            if e != order_epoch:  # one permutation per epoch, not per step
                order, order_epoch = epoch_order(len(self.examples), cfg.seed, e), e
            step_loss, real = self.reduce(*self.train_step(order[j * self.per_step:(j + 1) * self.per_step]))
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)  # a tensor: read only when logged
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.seen_tokens += real
            win["tok"] += real
            win["loss"] += step_loss
            win["n"] += 1
            losses.append(step_loss)
            bar.update(1)
            t_first = t_first or time.time()  # end of step 1: setup, probe, compiling (when compiled), step 1
            if capped:
                self._watch_memory_cap(step, retries)
            if step % cfg.logging_steps == 0 or step == self.total:
                bar.set_postfix(**self.log(step, win, grad_norm, log_metrics))
            if step % cfg.save_steps == 0 and step < self.total and self.rank == 0:
                _save_checkpoint(self.pm, self.opt, self.sched, step, {"num_tokens": self.seen_tokens},
                                 self.run_dir / "checkpoints")
        bar.close()
        return self.summary(losses, t_train, t_first)

    def log(self, step: int, win: dict, grad_norm, log_metrics) -> dict:
        now = time.time()
        tps = win["tok"] / max(now - win["t"], 1e-9)
        rec = {"step": step, "epoch": step / self.spe, "loss": float(win["loss"]) / win["n"],
               "grad_norm": float(grad_norm), "learning_rate": self.sched.get_last_lr()[0],
               "num_tokens": self.seen_tokens, "tokens_per_s": tps}
        log_metrics(rec)
        win.update(loss=0.0, n=0, t=now, tok=0)
        return {"loss": f"{rec['loss']:.3f}", "tok_s": f"{tps:.0f}"}

    def summary(self, losses: list, t_train: float, t_first: float) -> dict[str, Any]:
        warmup_s = round(t_first - self.t_engine, 2) if t_first else None
        return {"steps": self.total, "max_steps": self.total, "epochs": self.total / self.spe,
                "tokens_seen": self.seen_tokens,
                "train_loss": float(sum(losses)) / len(losses) if losses else self.ckpt_extra.get("train_loss"),
                "train_seconds": round(time.time() - t_train, 1),
                "engine": {"name": "fast", "world_size": self.world, "frozen_prefix_layers": self.k,
                           "prefix_cached": self.prefix is not None, "liger": self.use_liger,
                           "micro_rows": self.micro_rows, "checkpointed_layers": self.ckpt_layers,
                           "trained_layers": self.n_active, "micro_batch_probe": self.probe_trials,
                           "attention": self.attn, "alloc_retry_steps": self.retry_steps,
                           "fused_lora_layers": len(self.lora_mods), "compiled": self.compiled,
                           "warmup_s": warmup_s, "packing": self.tuning.packing,
                           "tuning": self.tuning.overrides(), "quantization": self.quant}}


def train_engine(cfg, pm, tok, examples: list[dict], run_dir: Path, *, device: str, quant: str,
                 resume_ckpt: Path | None, log_metrics: Callable[[dict], None], rank: int = 0,
                 world: int = 1, tuning: "Tuning | dict | None" = None, compiled: bool | None = None) -> dict[str, Any]:
    """Train the PEFT model ``pm`` in place on ``examples`` (:class:`Engine`); returns the run summary."""
    eng = Engine(cfg, pm, tok, examples, run_dir, device=device, quant=quant, rank=rank, world=world, tuning=tuning,
                 compiled=compiled)
    eng.resume(resume_ckpt)
    return eng.run(log_metrics)
