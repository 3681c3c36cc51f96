"""Every private API of a fast-moving library the workbench relies on, in one place.

Each shim names the library version range it was written against (the upper bounds are pinned in
``pyproject.toml``) and has a test in ``tests/test_compat.py`` that fails loudly when the library changes under
it. Code elsewhere calls these functions, never the private names. (``curate`` is the base package that every
other one imports, so the module lives here.)
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

# transformers 4.56–5.x: masking_utils.create_causal_mask / create_sliding_window_causal_mask renamed
# input_embeds -> inputs_embeds and past_key_values -> cache between releases


@functools.lru_cache(maxsize=4)
def _params(fn) -> frozenset:
    return frozenset(inspect.signature(fn).parameters)


def causal_mask(kind: str, config, hidden, position_ids):
    """transformers' causal (``kind="full_attention"``) or sliding-window mask for packed position ids, no cache."""
    import torch
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    fn = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
    params = _params(fn)
    kw: dict[str, Any] = {"config": config, "attention_mask": None, "position_ids": position_ids}
    kw["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = hidden
    for name in ("cache", "past_key_values"):
        if name in params:
            kw[name] = None
    if "cache_position" in params:
        kw["cache_position"] = torch.arange(hidden.shape[1], device=hidden.device)
    return fn(**kw)


def attention_functions():
    """transformers' registry of attention implementations (``"sdpa"``, ``"eager"``...): a mapping that
    accepts assignment and keeps its local overrides in ``_local_mapping`` (transformers 4.48–5.x)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS


def flash_varlen_forward(q, k, v, cu, max_len: int, scale: float | None):
    """PyTorch's own FlashAttention-2 variable-length kernel, causal, no dropout (torch 2.4–2.14:
    ``aten._flash_attention_forward``, first output)."""
    import torch

    return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, True, False,
                                                   scale=scale)[0]


def liger_patch(model, **kwargs) -> None:
    """Liger's kernels into a loaded model instance, by its model type (liger-kernel 0.5–0.8:
    ``liger_kernel.transformers._apply_liger_kernel_to_instance``)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, **kwargs)


def uncompile(module) -> None:
    """Undo ``nn.Module.compile()`` on ``module`` (torch 2.2–2.14 keep the compiled call in
    ``_compiled_call_impl``)."""
    module._compiled_call_impl = None


def is_compiled(module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def onednn_linear_available() -> bool:
    import torch

    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def onednn_pack(weight, batch_hint: int):
    """A linear weight reordered for oneDNN (torch 2.1–2.14: ``mkldnn._reorder_linear_weight``)."""
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)


def onednn_linear(x, packed, bias):
    """``x @ W^T + b`` with a packed weight (torch 2.1–2.14: ``mkldnn._linear_pointwise``)."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def argilla_set_default(client) -> None:
    """Make ``client`` the Argilla SDK's default client (argilla 2.x: ``Argilla._set_default``): settings
    objects are built against the default client."""
    import argilla as rg

    rg.Argilla._set_default(client)
