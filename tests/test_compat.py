"""One test per shim of curate/compat.py: each fails loudly, naming the library, when a private API the
workbench relies on changes shape. (The shims' behaviour is exercised by the engine and kernel tests.)"""
from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch


def test_mask_functions_take_packed_position_ids():
    from transformers import LlamaConfig

    from curate.compat import causal_mask

    cfg = LlamaConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, sliding_window=2)
    cfg._attn_implementation = "sdpa"
    pos = torch.tensor([[0, 1, 2, 0, 1]])  # two packed examples
    m = causal_mask("full_attention", cfg, torch.zeros(1, 5, 8), pos)
    assert m is not None and m.shape[-2:] == (5, 5), "transformers.masking_utils.create_causal_mask changed"
    allowed = m[0, 0] if m.dtype == torch.bool else m[0, 0] == 0
    assert not allowed[3, 2] and allowed[4, 3], "packed sequences are no longer separated by position ids"
    s = causal_mask("sliding_attention", cfg, torch.zeros(1, 5, 8), torch.arange(5)[None])
    allowed = s[0, 0] if s.dtype == torch.bool else s[0, 0] == 0
    assert allowed[4, 3] and not allowed[4, 1], "create_sliding_window_causal_mask changed"


def test_attention_registry_accepts_local_overrides():
    from curate.compat import attention_functions

    f = attention_functions()
    assert "sdpa" in f and hasattr(f, "_local_mapping"), "transformers' ALL_ATTENTION_FUNCTIONS changed"


def test_flash_varlen_op_exists_with_the_expected_arguments():
    from curate.compat import flash_varlen_forward  # noqa: F401

    op = torch.ops.aten._flash_attention_forward
    names = [a.name for a in op.default._schema.arguments]
    assert names[:9] == ["query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p",
                         "is_causal"], f"aten._flash_attention_forward changed: {names}"


def test_liger_instance_patch_exists():
    if importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is the CUDA extra; not installed here")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    assert "model" in inspect.signature(_apply_liger_kernel_to_instance).parameters


def test_uncompile_restores_the_eager_call():
    from curate.compat import is_compiled, uncompile

    lin = torch.nn.Linear(2, 2)
    lin.compile()
    assert is_compiled(lin), "nn.Module.compile no longer sets _compiled_call_impl"
    uncompile(lin)
    assert not is_compiled(lin)


def test_onednn_linear_matches_torch():
    from curate.compat import onednn_linear, onednn_linear_available, onednn_pack

    if not onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear (synth falls back to nn.Linear)")
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    got = onednn_linear(x, onednn_pack(lin.weight.detach(), 3), lin.bias.detach())
    assert torch.allclose(got, lin(x).detach(), atol=1e-5)


def test_argilla_default_client_setter_exists():
    rg = pytest.importorskip("argilla")

    assert callable(getattr(rg.Argilla, "_set_default", None)), "argilla.Argilla._set_default is gone"
