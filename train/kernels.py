"""Fused kernels for the fast CUDA engine (issue 9): Liger on CUDA, plain-PyTorch fallbacks elsewhere.

* :func:`apply_liger` swaps a Llama-family model's RMSNorm, RoPE and SwiGLU MLP for Liger's Triton kernels
  (``liger-kernel``, optional extra ``gpu``). Needs CUDA; on CPU or without the package it changes nothing
  and says so in the returned dict.
* :func:`linear_cross_entropy` is the loss head: mean next-token cross-entropy over the positions whose
  label is not -100, computed from the final hidden states and the lm_head weight **without materialising
  the full [tokens, vocab] logits**. Only target positions are projected at all (assistant-only loss skips
  prompt tokens before the matmul). On CUDA with Liger it uses ``LigerFusedLinearCrossEntropyLoss``;
  otherwise a chunked PyTorch version (each chunk's logits are recomputed in backward via checkpointing).

* :class:`varlen_attention` (with :func:`train.packing.collate_flat`) runs attention over packed rows with PyTorch's
  FlashAttention-2 variable-length kernel instead of SDPA with a block-diagonal mask: no mask is built and
  nothing is computed across examples. The engine's probe times it against the masked kernels.

* :class:`fused_lora` runs PEFT's LoRA layers (over ``nn.Linear`` or NF4 ``Linear4bit``) as one autograd node
  each (:func:`lora_linear`), for steps whose cost is CPU time per launch; an ablation (``tuning["fused_lora"]``),
  off by default: on the H200 it paid alone on the eager path (28.0k against 25.3k tokens/s, one sample) but cost a
  quarter of the compiled engine's speed (34.1k against 44.7k), docs/gpu.md.

``tests/test_kernels.py`` checks each path against the plain ``model(..., labels=...)`` loss (and the varlen
kernel against per-segment SDPA on CUDA); ``tests/test_engine_micro.py`` checks the varlen wiring and the
fused LoRA layers (against PEFT, also on NF4 under bf16 autocast) on CPU.
"""
from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

from .packing import IGNORE


def liger_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def apply_liger(model, *, rms_norm: bool = True, rope: bool = True, swiglu: bool = True) -> dict:
    """Patch ``model`` (a base HF model, before PEFT wrapping) in place with Liger kernels.

    Returns {"liger": bool, "applied": [...], "reason": str}. The loss head is not patched here: the fast
    engine calls :func:`linear_cross_entropy` itself.
    """
    if not torch.cuda.is_available():
        return {"liger": False, "applied": [], "reason": "no CUDA (Liger kernels are Triton/CUDA only)"}
    if importlib.util.find_spec("liger_kernel") is None:
        return {"liger": False, "applied": [], "reason": "liger-kernel not installed (pip install '.[gpu]')"}
    from curate.compat import liger_patch

    liger_patch(model, rms_norm=rms_norm, rope=rope, swiglu=swiglu,
                                    cross_entropy=False, fused_linear_cross_entropy=False)
    applied = [k for k, v in (("rms_norm", rms_norm), ("rope", rope), ("swiglu", swiglu)) if v]
    return {"liger": True, "applied": applied, "reason": ""}


def target_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions, labels) of the real targets of ``labels`` [B,T] after the shift (position t predicts
    label t+1), as indices into ``hidden[..., :-1, :].reshape(-1, H)``. Computed where ``labels`` lives: the
    engine does it on the CPU copy, so selecting the targets on the GPU needs no device-to-host sync (a boolean
    mask would: its size is data-dependent)."""
    y = labels[..., 1:].reshape(-1)
    idx = (y != IGNORE).nonzero().squeeze(1)
    return idx, y[idx]


def _chunk_loss_sum(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, softcap: float | None = None) -> torch.Tensor:
    logits = h @ w.t()
    if softcap:  # Gemma 2/3: logits soft-capped to (-cap, cap) before the loss, as transformers does
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), y, reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None, *,
                         use_liger: bool | None = None, chunk_tokens: int = 4096,
                         targets: tuple[torch.Tensor, torch.Tensor] | None = None,
                         softcap: float | None = None) -> tuple[torch.Tensor, int]:
    """(mean loss over targets, number of targets) for hidden [B,T,H], lm_head weight [V,H], labels [B,T].

    ``use_liger``: None = Liger when available; True forces it (error if unavailable); False = chunked torch.
    ``targets``: :func:`target_index` of the labels, already on ``hidden``'s device (then ``labels`` is unused).
    ``softcap``: the model's final logit soft-capping (``tanh(logits / cap) * cap``), None for none.
    """
    idx, y = targets if targets is not None else target_index(labels)
    n = int(y.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    h = hidden[..., :-1, :].reshape(-1, hidden.shape[-1]).index_select(0, idx.to(hidden.device))
    y = y.to(hidden.device)
    if use_liger is None:
        use_liger = liger_available() and hidden.is_cuda
    if use_liger:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(reduction="mean", softcap=softcap)(weight, h.contiguous(), y), n
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk_tokens):
        hs, ys = h[s:s + chunk_tokens], y[s:s + chunk_tokens]
        if torch.is_grad_enabled() and (hs.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_loss_sum, hs, weight, ys, softcap, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(hs, weight, ys, softcap)
    return total / n, n


# ---- variable-length attention over packed rows (no mask, no work across examples) -------------------------

def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
                 scale: float | None) -> torch.Tensor:
    """Causal attention within each segment of ``cu`` for q/k/v [tokens, heads, dim] (k/v already expanded to
    q's heads): PyTorch's own FlashAttention-2 varlen kernel (CUDA, fp16/bf16), with its autograd formula."""
    from curate.compat import flash_varlen_forward

    return flash_varlen_forward(q, k, v, cu, max_len, scale)


def reference_varlen(q, k, v, cu, max_len, scale):
    """The same attention, one segment at a time through SDPA (CPU tests, and the CUDA agreement test)."""
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for a, z in zip(bounds[:-1], bounds[1:]):
        o = F.scaled_dot_product_attention(q[a:z].transpose(0, 1), k[a:z].transpose(0, 1), v[a:z].transpose(0, 1),
                                           is_causal=True, scale=scale)
        out[a:z] = o.transpose(0, 1)
    return out


VARLEN_KERNEL = {"fn": flash_varlen}  # tests swap in reference_varlen on CPU


@functools.lru_cache(maxsize=4)
def _make_dispatch(orig):
    """The dispatcher wrapping transformers' ``orig`` SDPA function: one object per ``orig`` (cached), so a
    compiled decoder layer (``compile`` setting, :func:`train.engine.use_compile`) sees the same function on every micro-batch and is not
    recompiled each time the context manager is entered."""
    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        cu = kwargs.pop("wb_cu_seqlens", None)
        max_len = kwargs.pop("wb_max_seqlen", None)
        if cu is None:  # anything but the engine's packed forward: transformers' own SDPA path, untouched
            return orig(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        B, Hq, T, D = query.shape
        rep = Hq // key.shape[1]

        def flat(x):
            x = x.transpose(1, 2)  # [B, T, heads, D]
            if rep > 1 and x.shape[2] != Hq:
                x = x.repeat_interleave(rep, dim=2)  # grouped-query heads, in transformers' repeat_kv order
            return x.reshape(B * T, Hq, D)

        out = VARLEN_KERNEL["fn"](flat(query), flat(key), flat(value), cu, max_len, scaling)
        return out.view(B, T, Hq, D), None

    return attention


class varlen_attention:
    """Context manager: while active, transformers' "sdpa" attention accepts ``wb_cu_seqlens`` /
    ``wb_max_seqlen`` (passed down by :func:`train.engine.run_layers`) and then runs variable-length attention
    instead of a masked SDPA; calls without them are unchanged. The block-diagonal mask of a packed row is
    never built, and no work is spent on the masked-out blocks across examples."""

    def __enter__(self):
        from curate.compat import attention_functions

        F_ = attention_functions()
        self._f = F_
        self._had = "sdpa" in F_._local_mapping
        self._prev = F_._local_mapping.get("sdpa")
        F_["sdpa"] = _make_dispatch(F_["sdpa"])
        return self

    def __exit__(self, *exc):
        if self._had:
            self._f["sdpa"] = self._prev
        else:
            del self._f["sdpa"]
        return False


# ---- fused LoRA linear (tuning["fused_lora"]) ------------------------------------------------------------------

def _base_weight(base) -> torch.Tensor:
    """The frozen weight of a LoRA layer's base module: ``nn.Linear``'s, or bitsandbytes' NF4 weight dequantized
    (what bitsandbytes' own 4-bit matmul does in its forward and again in its backward)."""
    w = base.weight
    qs = getattr(w, "quant_state", None)
    if qs is None:
        return w
    import bitsandbytes.functional as bnb_f

    return bnb_f.dequantize_4bit(w.data, qs)


class _LoraLinear(torch.autograd.Function):
    """``y = x Wᵀ + s · (xd Aᵀ) Bᵀ`` with W frozen (re-read from ``base`` in backward, so nothing of it is kept)
    and A, B trained; ``xd`` is x after LoRA dropout (None: the same tensor). One autograd node and four
    kernels forward (plus the dequantization) instead of PEFT's and bitsandbytes' chain of modules, casts and
    nodes: what a launch-bound step pays for in CPU time."""

    @staticmethod
    def forward(ctx, x, xd, A, B, base, s):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xd2 = x2 if xd is None else xd.reshape(-1, shape[-1])
        W = _base_weight(base).to(x2.dtype)
        xa = xd2 @ A.t()
        y = x2 @ W.t() if base.bias is None else torch.addmm(base.bias.to(x2.dtype), x2, W.t())
        y.addmm_(xa, B.t(), alpha=s)
        ctx.save_for_backward(xd2, xa, A, B)
        ctx.base, ctx.s, ctx.shape, ctx.same = base, s, shape, xd is None
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, g):
        xd2, xa, A, B = ctx.saved_tensors
        s = ctx.s
        g2 = g.reshape(-1, g.shape[-1])
        gb = g2 @ B  # [tokens, r]
        gB = (g2.t() @ xa).mul_(s)
        gA = (gb.t() @ xd2).mul_(s)
        gx = g2 @ _base_weight(ctx.base).to(g2.dtype)
        if ctx.same:
            gx.addmm_(gb, A, alpha=s)
            gxd = None
        else:
            gxd = (gb @ A).mul_(s).view(ctx.shape)
        return gx.view(ctx.shape), gxd, gA, gB, None, None


def lora_linear(x: torch.Tensor, xd: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor, base, s: float):
    """:class:`_LoraLinear` under autocast's rules: inside an autocast region x, xd, A and B are cast to its
    dtype first (as autocast casts a matmul's operands; the casts' backward returns A's and B's gradients in
    their own dtype), and the matmuls run with autocast off."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, A, B = x.to(dt), A.to(dt), B.to(dt)
        xd = None if xd is None else xd.to(dt)
        with torch.autocast(dev, enabled=False):
            return _LoraLinear.apply(x, xd, A, B, base, s)
    return _LoraLinear.apply(x, xd, A, B, base, s)


def fusable_lora_modules(model) -> list:
    """PEFT LoRA layers that :class:`fused_lora` can run: one active plain-LoRA adapter (no DoRA/variants, no
    LoRA bias), not merged, over a frozen ``nn.Linear`` or bitsandbytes ``Linear4bit``. Others keep PEFT's path."""
    try:
        from peft.tuners.lora.layer import LoraLayer
    except ImportError:
        return []
    out = []
    for m in model.modules():
        if not isinstance(m, LoraLayer) or m.merged or m.disable_adapters or len(m.active_adapters) != 1:
            continue
        name = m.active_adapters[0]
        base = m.get_base_layer()
        kind = type(base).__name__
        if (name not in m.lora_A or name in getattr(m, "lora_variant", {}) or m.use_dora.get(name)
                or m.lora_B[name].bias is not None or kind not in ("Linear", "Linear4bit")
                or (kind == "Linear" and type(base) is not torch.nn.Linear) or base.weight.requires_grad
                or (base.bias is not None and base.bias.requires_grad)):
            continue
        out.append((m, name))
    return out


class fused_lora:
    """Context manager: while active, the given PEFT LoRA layers (:func:`fusable_lora_modules`) run
    :func:`lora_linear` instead of PEFT's forward; on exit their own forward is back. The forwards are built
    once here, so one instance can be entered on every micro-batch at the cost of an attribute set per layer."""

    def __init__(self, mods: list):
        self.fwds = [(m, self._forward(m, name)) for m, name in mods]

    @staticmethod
    def _forward(m, name: str):
        drop = m.lora_dropout[name]
        ident = isinstance(drop, torch.nn.Identity)

        def fwd(x, *args, **kwargs):
            A = m.lora_A[name].weight
            # anything unusual (extra arguments; mixed dtypes outside autocast, which PEFT casts): PEFT's path
            if args or kwargs or (x.dtype != A.dtype and not torch.is_autocast_enabled(x.device.type)):
                return type(m).forward(m, x, *args, **kwargs)
            return lora_linear(x, None if ident else drop(x), A, m.lora_B[name].weight, m.get_base_layer(),
                               m.scaling[name])
        return fwd

    def __enter__(self):
        for m, fwd in self.fwds:
            m.forward = fwd
        return self

    def __exit__(self, *exc):
        for m, _ in self.fwds:
            m.__dict__.pop("forward", None)
        return False
