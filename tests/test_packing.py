"""Packing: rows hold whole examples, nothing lost, and packed loss == unpacked loss on a tiny random Llama."""
import random

import pytest
import torch

from train.packing import IGNORE, PackStats, collate_rows, pack_examples


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    m = LlamaForCausalLM(cfg)
    m.config._attn_implementation = "sdpa"
    m.config.use_cache = False
    return m.eval()


def make_examples(n, seed=1, lo=3, hi=40, V=97):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        L = rng.randint(lo, hi)
        ids = [rng.randrange(1, V) for _ in range(L)]
        k = rng.randint(1, L - 1)  # prompt part carries no loss
        out.append({"input_ids": ids, "labels": [IGNORE] * k + ids[k:]})
    return out


def test_rows_hold_every_token_once():
    exs = make_examples(50)
    st = PackStats()
    rows = pack_examples(exs, 64, stats=st)
    assert st.examples == 50 and st.truncated == 0
    assert st.real_tokens == sum(len(e["input_ids"]) for e in exs)
    assert all(len(r.input_ids) <= 64 for r in rows)
    got = sorted(tuple(r.input_ids[a:b]) for r in rows for a, b in zip(r.cu_seqlens, r.cu_seqlens[1:]))
    assert got == sorted(tuple(e["input_ids"]) for e in exs)
    assert len(rows) < 50  # several examples per row
    for r in rows:
        for a, b in zip(r.cu_seqlens, r.cu_seqlens[1:]):
            assert r.position_ids[a:b] == list(range(b - a))
            assert r.labels[a] == IGNORE


def test_truncation_is_counted_and_bad_input_named():
    st = PackStats()
    pack_examples([{"input_ids": list(range(1, 11)), "labels": list(range(1, 11))}], 8, stats=st)
    assert st.truncated == 1 and st.truncated_tokens == 2
    with pytest.raises(ValueError, match="example #1.*labels has 2"):
        pack_examples([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [1, 2, 3], "labels": [1, 2]}], 8)


def unpacked_loss(model, exs):
    tot, n = 0.0, 0
    for e in exs:
        ids = torch.tensor([e["input_ids"]])
        lab = torch.tensor([e["labels"]])
        k = int((lab[0, 1:] != IGNORE).sum())
        with torch.no_grad():
            tot += float(model(input_ids=ids, labels=lab).loss) * k
        n += k
    return tot / n


def test_packed_loss_equals_unpacked_loss():
    model = tiny_llama()
    exs = make_examples(24)
    rows = pack_examples(exs, 96)
    b = collate_rows(rows, 96)
    assert b["input_ids"].shape == (len(rows), 96)
    with torch.no_grad():
        packed = float(model(input_ids=b["input_ids"], position_ids=b["position_ids"], labels=b["labels"], use_cache=False).loss)
    ref = unpacked_loss(model, exs)
    assert abs(packed - ref) / ref < 1e-5, (packed, ref)


def test_without_position_ids_attention_leaks():
    # the same rows with plain 0..T positions (no per-example reset) give a different loss: the test above
    # would catch cross-example attention
    model = tiny_llama()
    exs = make_examples(24)
    rows = pack_examples(exs, 96)
    b = collate_rows(rows, 96)
    with torch.no_grad():
        leaky = float(model(input_ids=b["input_ids"], labels=b["labels"], use_cache=False).loss)
    ref = unpacked_loss(model, exs)
    assert abs(leaky - ref) / ref > 1e-4
