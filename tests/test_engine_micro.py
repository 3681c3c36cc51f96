"""The fast engine's micro-batch chooser and selective activation checkpointing.

``choose_micro_batch`` is tested against a memory/speed model whose best answer is known; ``run_layers`` with
some layers checkpointed must give the same loss and LoRA gradients as without (checkpointing only trades
memory for recompute)."""
from __future__ import annotations

import pytest
import torch

from train.engine import choose_attention, choose_micro_batch, run_layers
from train.kernels import linear_cross_entropy, target_index
from train.packing import collate_rows, pack_examples

from tests.test_packing import make_examples, tiny_llama


def model_fb(cap: float, base: float, per_row_layer: float, per_row_ckpt: float, n: int, calls: list):
    """Memory = base + m * (per_row_layer * (n - c) + per_row_ckpt * c); tokens/s grow with m and fall
    with recompute (a checkpointed layer costs one more forward, ~1/3 of its forward+backward)."""

    def fb(m: int, c: int):
        calls.append((m, c))
        if base + m * (per_row_layer * (n - c) + per_row_ckpt * c) > cap:
            return None
        eff = m / (m + 2)  # bigger micro-batches use the GPU better
        return 1000 * eff / (1 + c / (3 * n))

    return fb


def test_whole_step_fits_without_checkpointing():
    calls = []
    m, c, trials = choose_micro_batch(model_fb(100, 1, 1, 0.1, 8, calls), rows_needed=11, n_active=8)
    assert (m, c) == (11, 0)
    assert calls == [(11, 0)]  # nothing else tried
    assert trials[0]["rows"] == 11 and trials[0]["tokens_per_s"] > 0


def test_tight_cap_picks_partial_checkpointing_at_the_big_micro_batch():
    n, calls = 16, []
    # cap 40: no checkpointing fits 2 rows (1+2*16=33), full checkpointing fits 11 rows (1+11*1.6=18.6)
    fb = model_fb(40, 1, 1, 0.1, n, calls)
    m, c, trials = choose_micro_batch(fb, rows_needed=11, n_active=n, margin_layers=1)
    assert m == 11
    # fewest layers that fit at 11 rows: 1 + 11*((16-c) + 0.1c) <= 40  ->  c >= 13.8 -> 14, plus 1 of margin
    assert c == 15
    assert fb(m, c) is not None and fb(m, c - 2) is None
    # it beats the other two candidates: every layer checkpointed at 11 rows, none at 2 rows
    tps = {(t["rows"], t["checkpointed_layers"]): t["tokens_per_s"] for t in trials}
    assert tps[(m, c)] > tps[(11, n)] and tps[(m, c)] > tps[(2, 0)]
    # edge probes of the binary search (c=14 fits exactly) are fit checks, not candidates
    assert (11, 14) in tps


def test_small_micro_batch_without_checkpointing_can_win():
    calls = []

    def fb(m, c):  # recompute is very expensive here, so 4 rows without checkpointing beat 8 with
        calls.append((m, c))
        if m * (10 - 9 * c / 4) > 45:
            return None
        return 1000 * m / (m + 1) / (1 + 2 * c)

    m, c, _ = choose_micro_batch(fb, rows_needed=8, n_active=4)
    assert (m, c) == (4, 0)


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(RuntimeError, match="lower max_length"):
        choose_micro_batch(lambda m, c: None, rows_needed=4, n_active=4)


def _attn_fb(speeds: dict, attn: dict, losses: dict, loss_of: dict):
    def fb(m, c):
        v = speeds.get(attn["backend"], 100.0)
        if isinstance(v, Exception):
            raise v
        losses[(m, c, attn["backend"])] = loss_of.get(attn["backend"], 2.0)
        return v
    return fb


@pytest.mark.parametrize("speeds,loss_of,expect", [
    ({"varlen": 150.0, "efficient": 90.0}, {}, "varlen"),
    ({"varlen": 120.0, "efficient": 140.0}, {}, "efficient"),
    ({"varlen": 120.0, "efficient": 130.0}, {}, "varlen"),  # within varlen's edge (VARLEN_EDGE)
    ({"varlen": 95.0, "efficient": 80.0}, {}, "varlen"),  # a bit slower than SDPA's 100 on the probe: still varlen
    ({"varlen": 80.0, "efficient": None}, {}, "auto"),  # slower / out of memory
    ({"varlen": RuntimeError("no kernel"), "efficient": 99.0}, {}, "auto"),  # not built for this GPU
    ({"varlen": 300.0, "efficient": 99.0}, {"varlen": 2.5}, "auto"),  # fast but a different loss: rejected
    ({"varlen": 110.0, "efficient": 90.0, "auto": 130.0}, {}, "auto"),  # SDPA's first read was low; its second wins
])
def test_attention_kernel_is_the_fastest_that_agrees(speeds, loss_of, expect):
    attn = {"backend": "auto"}
    losses = {(6, 2, "auto"): 2.0}
    trials = [{"rows": 6, "checkpointed_layers": 2, "tokens_per_s": 100}, {"rows": 3, "checkpointed_layers": 0,
                                                                           "tokens_per_s": 500}]
    got = choose_attention(_attn_fb(speeds, attn, losses, loss_of), 6, 2, trials, attn, losses)
    assert got == expect and attn["backend"] == expect
    # every try is in the manifest, whatever it gave; (3, 0) at 500 tok/s is another micro-batch, not the baseline
    assert [t.get("attention") for t in trials[2:]] == ["varlen", "efficient", "auto"]
    if loss_of:
        assert "rejected" in trials[2]["note"]


def test_target_index_selects_what_a_boolean_mask_selects():
    torch.manual_seed(0)
    lab = torch.randint(0, 50, (3, 17))
    lab[torch.rand(3, 17) < 0.4] = -100
    h = torch.randn(3, 17, 8, requires_grad=True)
    w = torch.randn(50, 8)
    keep = lab[:, 1:].reshape(-1) != -100
    ref = torch.nn.functional.cross_entropy(h[:, :-1].reshape(-1, 8)[keep] @ w.t(), lab[:, 1:].reshape(-1)[keep])
    idx, y = target_index(lab)
    assert torch.equal(y, lab[:, 1:].reshape(-1)[keep])
    loss, n = linear_cross_entropy(h, w, None, use_liger=False, targets=(idx, y))
    assert n == int(keep.sum())
    torch.testing.assert_close(loss, ref)
    assert torch.equal(linear_cross_entropy(h, w, lab, use_liger=False)[0], loss)


@pytest.mark.parametrize("ckpt", [1, 2])
def test_selective_checkpointing_is_exact(ckpt):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    pm.train()
    body, head = pm.get_base_model().model, pm.get_base_model().lm_head
    b = collate_rows(pack_examples(make_examples(12), 96), 96)

    def loss_and_grads(c):
        pm.zero_grad(set_to_none=True)
        h = run_layers(body, body.embed_tokens(b["input_ids"]), b["position_ids"], 0, 2, final_norm=True,
                       checkpoint_layers=c)
        loss, _ = linear_cross_entropy(h, head.weight, b["labels"], use_liger=False)
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}

    l0, g0 = loss_and_grads(0)
    l1, g1 = loss_and_grads(ckpt)
    assert l0 == pytest.approx(l1, rel=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("multiple", [1, 64, 96])
def test_flat_micro_batch_holds_every_token_once(multiple):
    """collate_flat: the rows' examples back to back in one sequence, one segment each, plus a padding tail up to
    the multiple; tokens, labels and positions are the rows' own, and the targets are the rows' targets."""
    from train.packing import collate_flat

    rows = pack_examples(make_examples(12), 96)
    f = collate_flat(rows, multiple)
    real = sum(len(r.input_ids) for r in rows)
    N = f["input_ids"].shape[1]
    assert f["input_ids"].shape == f["labels"].shape == f["position_ids"].shape == (1, N)
    assert N % multiple == 0 and real <= N < real + multiple and f["n_real"] == real
    cu = f["cu_seqlens"]
    assert cu[0] == 0 and cu[-1] == N and all(z > a for a, z in zip(cu, cu[1:]))
    assert len(cu) - 1 == sum(len(r.sources) for r in rows) + (N > real)
    assert f["longest"] == max(z - a for a, z in zip(cu, cu[1:]))
    assert f["input_ids"][0, :real].tolist() == [t for r in rows for t in r.input_ids]
    assert f["position_ids"][0, :real].tolist() == [p for r in rows for p in r.position_ids]
    assert f["labels"][0, real:].eq(-100).all() and f["n_targets"] == collate_rows(rows, 96)["n_targets"]
    for a, z in zip(cu, cu[1:]):  # positions restart at every segment: each is its own sequence
        assert f["position_ids"][0, a:z].tolist() == list(range(z - a))


def test_varlen_attention_path_equals_the_masked_path(monkeypatch):
    """The engine's variable-length attention wiring (the one-sequence layout, segments, head layout, grouped-query
    heads, kwargs through the decoder layers, checkpointed layers) gives the masked SDPA loss and LoRA gradients
    of the same rows padded one per batch row. On CPU the kernel is
    the per-segment SDPA reference; the CUDA flash kernel is checked against it in tests/test_kernels.py."""
    from peft import LoraConfig, get_peft_model

    from train import kernels

    calls = []

    def counted(*a):
        calls.append(a[0].shape)
        return kernels.reference_varlen(*a)

    monkeypatch.setitem(kernels.VARLEN_KERNEL, "fn", counted)
    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    pm.train()
    body, head = pm.get_base_model().model, pm.get_base_model().lm_head
    assert body.config.num_key_value_heads < body.config.num_attention_heads  # the GQA path is exercised
    rows = pack_examples(make_examples(12), 96)
    from train.packing import collate_flat

    def loss_and_grads(varlen):
        # masked path: rows padded to 96 [B, 96]; varlen path: the engine's one-sequence layout [1, N]
        b = collate_flat(rows, 64) if varlen else collate_rows(rows, 96)
        seg = (torch.tensor(b["cu_seqlens"], dtype=torch.int32), b["longest"]) if varlen else None
        pm.zero_grad(set_to_none=True)
        with kernels.varlen_attention() if varlen else torch.enable_grad():
            h = run_layers(body, body.embed_tokens(b["input_ids"]), b["position_ids"], 0, 2, final_norm=True,
                           checkpoint_layers=1, varlen=seg)
            loss, _ = linear_cross_entropy(h, head.weight, b["labels"], use_liger=False)
            loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}

    l0, g0 = loss_and_grads(False)
    assert calls == []
    l1, g1 = loss_and_grads(True)
    assert len(calls) == 3  # 2 layers forward + the checkpointed one recomputed: the varlen kernel really ran
    assert l0 == pytest.approx(l1, rel=1e-5)
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-4, atol=1e-6)
    # outside the context manager transformers' own "sdpa" is back
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping


def test_balanced_split_covers_every_row_once():
    from train.engine import _balanced

    assert _balanced(12, 10) == [(0, 6), (6, 12)]
    assert _balanced(10, 10) == [(0, 10)]
    assert _balanced(0, 4) == []
    for n in range(1, 40):
        for m in range(1, 12):
            parts = _balanced(n, m)
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a < z and z - a <= m for a, z in parts)
            assert all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
            assert max(z - a for a, z in parts) - min(z - a for a, z in parts) <= 1


@pytest.mark.parametrize("dropout,autocast", [(0.0, False), (0.2, False), (0.0, True)])
def test_fused_lora_equals_peft(dropout, autocast):
    """fused_lora (one autograd node per LoRA linear) gives PEFT's loss and LoRA gradients through the decoder,
    with a checkpointed layer, with LoRA dropout (same masks: same RNG order) and under bf16 autocast."""
    from peft import LoraConfig, get_peft_model

    from train.kernels import fusable_lora_modules, fused_lora

    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 lora_dropout=dropout))
    pm.train()
    for n, p in pm.named_parameters():  # B starts at zero: make the LoRA branch count
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    body, head = pm.get_base_model().model, pm.get_base_model().lm_head
    mods = fusable_lora_modules(pm)
    assert len(mods) == 2 * 7  # q k v o gate up down in both layers
    b = collate_rows(pack_examples(make_examples(12), 96), 96)

    def loss_and_grads(fused):
        pm.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        ac = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.enable_grad()
        with ac, fused_lora(mods if fused else []):
            h = run_layers(body, body.embed_tokens(b["input_ids"]), b["position_ids"], 0, 2, final_norm=True,
                           checkpoint_layers=1)
            loss, _ = linear_cross_entropy(h.float(), head.weight, b["labels"], use_liger=False)
            loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}

    l0, g0 = loss_and_grads(False)
    l1, g1 = loss_and_grads(True)
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-4, atol=1e-6)
    assert l0 == pytest.approx(l1, rel=tol["rtol"] / 10)
    assert g0.keys() == g1.keys() and all(g0[n].dtype == g1[n].dtype for n in g0)
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], **tol)
    assert all("forward" not in m.__dict__ for m, _ in mods)  # PEFT's forward is back


def test_fused_lora_on_nf4_matches_peft():
    """The fused path over bitsandbytes' NF4 Linear4bit (dequantized weight, double quant) under bf16 autocast
    matches PEFT's QLoRA forward and gradients to bf16 precision (bitsandbytes runs NF4 on CPU too)."""
    bnb = pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model

    from train.kernels import fusable_lora_modules, fused_lora

    torch.manual_seed(0)

    def nf4(i, o):
        lin = bnb.nn.Linear4bit(i, o, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                                compress_statistics=True)
        lin.weight = bnb.nn.Params4bit(torch.randn(o, i, dtype=torch.bfloat16) / i ** 0.5, requires_grad=False,
                                       quant_type="nf4", compress_statistics=True)
        return lin

    net = torch.nn.Sequential(nf4(64, 96), torch.nn.Tanh(), nf4(96, 64)).to("cpu")  # .to() quantizes; smooth: no ReLU flips
    pm = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"]))
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    mods = fusable_lora_modules(pm)
    assert len(mods) == 2 and all(getattr(m.get_base_layer().weight, "quant_state", None) is not None for m, _ in mods)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)

    def run(fused):
        pm.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16), fused_lora(mods if fused else []):
            y = pm(x)
            y.float().pow(2).sum().backward()
        return [y.detach().float(), x.grad.float()] + [p.grad for p in pm.parameters() if p.requires_grad]

    for a, b in zip(run(False), run(True)):
        assert a.dtype == b.dtype or a.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2 * float(a.abs().max()))
