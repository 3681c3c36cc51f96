"""Fast tier: the continuous-batching engine (synth.engine) on a tiny random Llama — same tokens as
transformers' own generate, one row at a time or batched with rows joining and leaving, prefix-cache
reuse, exact score-token probabilities, logprobs, per-row seeded sampling, cancellation."""
from __future__ import annotations

import types

import pytest
import torch

from synth.engine import Engine, Row

EOS = 1


@pytest.fixture(scope="module")
def lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, eos_token_id=EOS, pad_token_id=0,
                      initializer_range=0.4)  # large weights: sharp attention, so wrong positions or masks change tokens
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config.eos_token_id = EOS
    return m


TOK = types.SimpleNamespace(eos_token_id=EOS, decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))


def reference(lm, ids: list[int], n: int) -> list[int]:
    """transformers' greedy generate for one prompt, tokens before EOS."""
    with torch.inference_mode():
        out = lm.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=EOS)
    toks = out[0, len(ids):].tolist()
    return toks[: toks.index(EOS)] if EOS in toks else toks


PREFIX = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
PROMPTS = [PREFIX + [20, 21, 22], PREFIX + [30], [40, 41, 42, 43, 44, 45, 46], PREFIX + [20, 21, 22, 23, 24, 25, 26, 27],
           [50, 51]]
LIMITS = [12, 5, 9, 15, 3]


def test_engine_matches_generate_alone_and_in_a_continuous_batch(lm):
    want = [reference(lm, p, n) for p, n in zip(PROMPTS, LIMITS)]
    alone = Engine(lm, TOK, max_batch=1)
    rows = alone.run([Row(p, n) for p, n in zip(PROMPTS, LIMITS)])
    assert [r.out for r in rows] == want
    # 3 slots for 5 rows of different lengths and limits: rows leave early and the queued ones join
    eng = Engine(lm, TOK, max_batch=3)
    rows = eng.run([Row(p, n) for p, n in zip(PROMPTS, LIMITS)])
    assert [r.out for r in rows] == want
    assert eng.stats["row_steps"] > eng.stats["steps"]  # several rows per forward
    assert max(r.batch_at_admit for r in rows) == 3
    assert eng.rows == [] and eng.kv is None
    # the shared 10-token prefix came from the prefix cache for the later prompts that start with it
    assert rows[1].prefilled == 1 and rows[3].prefilled == len(PROMPTS[3]) - len(PROMPTS[0])
    assert eng.stats["prefix_reused_tokens"] >= 10 + len(PROMPTS[0])


def test_choice_probabilities_are_the_exact_next_token_distribution(lm):
    eng = Engine(lm, TOK)
    choices = [60, 61, 62, 63, 64]
    rows = eng.run([Row(p, 2, choices=choices, logprobs=True, top_logprobs=4) for p in PROMPTS[:3]])
    for p, r in zip(PROMPTS, rows):
        with torch.inference_mode():
            full = torch.softmax(lm(torch.tensor([p])).logits[0, -1], -1)
        assert r.choice_probs == pytest.approx(full[choices].tolist(), abs=1e-5)
        first = r.logprobs[0]
        assert first["id"] == int(full.argmax()) and first["top"][0][0] == first["id"]
        assert first["logprob"] == pytest.approx(float(full.max().log()), abs=1e-4) and len(first["top"]) == 4
    lp = eng.openai_logprobs(rows[0])
    assert len(lp) == len(rows[0].out) and {"token", "logprob", "bytes", "top_logprobs"} <= set(lp[0])


def test_sampling_is_seeded_per_row_and_cancelled_rows_stop(lm):
    def sample(seed: int, others: int) -> list[int]:
        eng = Engine(lm, TOK, max_batch=4)
        rows = [Row(PROMPTS[0], 10, temperature=1.0, top_p=0.9, seed=seed)]
        rows += [Row(PROMPTS[2], 10, temperature=1.0, seed=100 + k) for k in range(others)]
        return eng.run(rows)[0].out

    assert sample(3, 0) == sample(3, 3)  # the same row alone or with company
    assert any(sample(3, 0) != sample(s, 0) for s in (4, 5, 6))
    steps = {"n": 0}

    def gone() -> bool:
        steps["n"] += 1
        return steps["n"] > 3

    eng = Engine(lm, TOK, max_batch=2)
    a, b = eng.run([Row(PROMPTS[3], 50, gone=gone), Row(PROMPTS[2], 6)])
    assert a.finish == "cancelled" and len(a.out) <= 3
    assert b.out == reference(lm, PROMPTS[2], 6)


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="empty prompt"):
        Row([], 4)


def test_rows_arriving_together_are_prefilled_packed_with_the_same_tokens(lm):
    """admit_many: the first row is prefilled alone, the rows sharing its prefix in ONE packed forward
    (block mask, own positions); tokens equal transformers' generate and the one-by-one engine."""
    want = [reference(lm, p, n) for p, n in zip(PROMPTS, LIMITS)]
    prompts = [PREFIX + [60 + i, 61, 62 + i][: 1 + i % 3] for i in range(5)] + PROMPTS
    limits = [6, 7, 8, 9, 10] + LIMITS
    want = [reference(lm, p, n) for p, n in zip(prompts, limits)]
    one = Engine(lm, TOK, max_batch=10, pack_prefill=False)
    rows1 = one.run([Row(p, n) for p, n in zip(prompts, limits)])
    eng = Engine(lm, TOK, max_batch=10)
    rows = eng.run([Row(p, n) for p, n in zip(prompts, limits)])
    assert [r.out for r in rows] == want == [r.out for r in rows1]
    assert eng.stats["packed_prefills"] >= 1 and "packed_prefills" not in one.stats
    # prefix reuse kept (a row that matched a token or two past the shared prefix recomputes them)
    assert eng.stats["prefill_tokens"] <= one.stats["prefill_tokens"] + len(prompts)
    for a, b in zip(rows, rows1):
        assert torch.allclose(a.logits if a.logits is not None else torch.zeros(1),
                              b.logits if b.logits is not None else torch.zeros(1), atol=1e-4)


def test_output_layer_in_slices_is_bitwise_the_whole_product(lm):
    """Several rows on the CPU: the output layer runs in head_chunk-word slices (7 here: 14 slices of the
    96-word vocabulary, the last one short); the logits are those of one product (bitwise on the real
    model's shapes with MKL, measured; to float rounding in general), tokens as generate."""
    eng = Engine(lm, TOK, max_batch=5, head_chunk=7)
    assert eng._head is not None
    h = torch.randn(5, lm.config.hidden_size)
    with torch.inference_mode():
        assert torch.allclose(eng._logits(h), torch.nn.functional.linear(h, lm.get_output_embeddings().weight),
                              atol=1e-5, rtol=1e-5)
    rows = eng.run([Row(p, n) for p, n in zip(PROMPTS, LIMITS)])
    assert [r.out for r in rows] == [reference(lm, p, n) for p, n in zip(PROMPTS, LIMITS)]
    assert Engine(lm, TOK, head_chunk=0)._head is None  # off: the model's own forward


def test_onednn_linears_give_the_same_tokens(lm):
    """onednn_linears: every nn.Linear (output layer included) computed by oneDNN with prepacked weights;
    the engine's tokens equal transformers' generate on the original model, logits to ~1e-4."""
    import copy

    from synth.engine import OneDNNLinear, onednn_linears

    fast = copy.deepcopy(lm)
    n = onednn_linears(fast)
    if n == 0:
        pytest.skip("no oneDNN linear in this torch build")
    assert n == 2 * 7 + 1 and isinstance(fast.lm_head, OneDNNLinear)
    ids = torch.tensor([PROMPTS[0]])
    with torch.inference_mode():
        assert torch.allclose(fast(ids).logits, lm(ids).logits, atol=1e-4, rtol=1e-4)
    want = [reference(lm, p, n) for p, n in zip(PROMPTS, LIMITS)]
    rows = Engine(fast, TOK, max_batch=3).run([Row(p, n) for p, n in zip(PROMPTS, LIMITS)])
    assert [r.out for r in rows] == want
