"""Kernel paths agree with the plain HF path: chunked linear cross-entropy (CPU) and Liger (CUDA only)."""
import pytest
import torch

from train.kernels import IGNORE, apply_liger, linear_cross_entropy


def tiny(seed=0, vocab=101):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, use_cache=False)
    return LlamaForCausalLM(cfg)


def batch(vocab=101, B=3, T=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    lab = ids.clone()
    lab[:, :7] = IGNORE  # a prompt with no loss
    lab[1, 20:] = IGNORE
    return ids, lab


def test_chunked_linear_ce_matches_full_logits_loss_and_grads():
    m = tiny()
    ids, lab = batch()
    ref = m(input_ids=ids, labels=lab).loss
    ref.backward()
    g_ref = m.model.embed_tokens.weight.grad.clone()
    m.zero_grad()
    hidden = m.model(input_ids=ids).last_hidden_state
    loss, n = linear_cross_entropy(hidden, m.lm_head.weight, lab, use_liger=False, chunk_tokens=16)
    loss.backward()
    assert n == int((lab[:, 1:] != IGNORE).sum())
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6), (loss, ref)
    g = m.model.embed_tokens.weight.grad
    assert (g - g_ref).norm() / g_ref.norm() < 1e-4


def test_no_targets_gives_zero_loss_with_graph():
    m = tiny()
    ids, lab = batch()
    lab[:] = IGNORE
    loss, n = linear_cross_entropy(m.model(input_ids=ids).last_hidden_state, m.lm_head.weight, lab, use_liger=False)
    assert n == 0 and float(loss) == 0.0
    loss.backward()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_apply_liger_is_a_reported_noop_on_cpu():
    m = tiny()
    info = apply_liger(m)
    assert info["liger"] is False and "CUDA" in info["reason"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger kernels need CUDA (run on the device machine)")
def test_liger_kernels_match_plain_path_on_cuda():
    pytest.importorskip("liger_kernel")
    ids, lab = batch(vocab=1001, T=256)
    ids, lab = ids.cuda(), lab.cuda()
    plain = tiny(vocab=1001).cuda()
    fast = tiny(vocab=1001).cuda()
    fast.load_state_dict(plain.state_dict())
    info = apply_liger(fast)
    assert info["applied"] == ["rms_norm", "rope", "swiglu"]
    ref = plain(input_ids=ids, labels=lab).loss
    ref.backward()
    h = fast.model(input_ids=ids).last_hidden_state
    loss, _ = linear_cross_entropy(h, fast.lm_head.weight, lab, use_liger=True)
    loss.backward()
    assert abs(float(loss) - float(ref)) / float(ref) < 1e-4, (float(loss), float(ref))
    for (n1, p1), (n2, p2) in zip(plain.named_parameters(), fast.named_parameters()):
        rel = float((p1.grad - p2.grad).norm() / p1.grad.norm())
        assert rel < 1e-3, (n1, rel)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash varlen kernel needs CUDA (run on the device machine)")
def test_flash_varlen_matches_per_segment_sdpa_on_cuda():
    from train.kernels import flash_varlen, reference_varlen

    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 130, 131, 400, 512, 1000, 1024], dtype=torch.int32, device="cuda")
    longest = int((cu[1:] - cu[:-1]).max())
    q, k, v = (torch.randn(1024, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = flash_varlen(q, k, v, cu, longest, 0.125)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    q2, k2, v2 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = reference_varlen(q2, k2, v2, cu, longest, 0.125)
    ref_grads = torch.autograd.grad(ref, (q2, k2, v2), g.float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    for a, b in zip(grads, ref_grads):
        rel = float((a.float() - b).norm() / b.norm())
        assert rel < 2e-2, rel
