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

``tests/test_kernels.py`` checks each path against the plain ``model(..., labels=...)`` loss (and the varlen
kernel against per-segment SDPA on CUDA); ``tests/test_engine_micro.py`` checks the varlen wiring on CPU.
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
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rms_norm=rms_norm, rope=rope, swiglu=swiglu,
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


def _chunk_loss_sum(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((h @ w.t()).float(), y, reduction="sum")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None, *,
                         use_liger: bool | None = None, chunk_tokens: int = 4096,
                         targets: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, int]:
    """(mean loss over targets, number of targets) for hidden [B,T,H], lm_head weight [V,H], labels [B,T].

    ``use_liger``: None = Liger when available; True forces it (error if unavailable); False = chunked torch.
    ``targets``: :func:`target_index` of the labels, already on ``hidden``'s device (then ``labels`` is unused).
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

        return LigerFusedLinearCrossEntropyLoss(reduction="mean")(weight, h.contiguous(), y), n
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk_tokens):
        hs, ys = h[s:s + chunk_tokens], y[s:s + chunk_tokens]
        if torch.is_grad_enabled() and (hs.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_loss_sum, hs, weight, ys, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(hs, weight, ys)
    return total / n, n


# ---- variable-length attention over packed rows (no mask, no work across examples) -------------------------

def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
                 scale: float | None) -> torch.Tensor:
    """Causal attention within each segment of ``cu`` for q/k/v [tokens, heads, dim] (k/v already expanded to
    q's heads): PyTorch's own FlashAttention-2 varlen kernel (CUDA, fp16/bf16), with its autograd formula."""
    return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, True, False,
                                                   scale=scale)[0]


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
    compiled decoder layer (``tuning["compile"]``) sees the same function on every micro-batch and is not
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
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as F_

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
