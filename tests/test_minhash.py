"""Fast tier: normalisation, shingling, OPH MinHash accuracy, LSH parameter derivation, union-find."""
from __future__ import annotations

import random

import numpy as np
import pytest

from curate import minhash as mh


def test_normalize_rules():
    assert mh.normalize("Hello,  WORLD!!") == "hello world"
    assert mh.normalize("  auto-top_up\tpolicy\n") == "auto top up policy"
    assert mh.normalize("ｆｕｌｌｗｉｄｔｈ Ａ１") == "fullwidth a1"  # NFKC
    assert mh.normalize("Café — résumé…") == "café résumé"
    assert mh.normalize("!!!") == ""


def test_batch_normalisation_matches_single():
    texts = ["Hello,  WORLD!!", "", "  lead and trail  ", "Café — résumé…", "a\x00b", "x" * 3, "top-up?  Now!",
             "ﬁne ½ ü", "emoji 🙂 here", "multi\nline\r\ntext"]
    buf = mh._normalized_bytes(texts).tobytes().decode("utf-8").split("\x00")
    assert buf == [mh.normalize(t) for t in texts]


def test_exact_hash_equal_iff_normalised_equal():
    sh = mh.shingle(["Is there an auto top-up option?", "is there an auto top up option", "Is there an auto top-up?", ""], "word")
    assert sh.exact[0] == sh.exact[1]
    assert sh.exact[0] != sh.exact[2]
    assert sh.exact[3] == 0


def _exact_jaccard(a: str, b: str, n: int = 3) -> float:
    A, B = mh.normalize(a).split(), mh.normalize(b).split()
    sa = {tuple(A[i : i + n]) for i in range(len(A) - n + 1)}
    sb = {tuple(B[i : i + n]) for i in range(len(B) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def test_oph_estimate_is_unbiased_with_expected_spread():
    rnd = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    errs = []
    for _ in range(200):
        w = [rnd.choice(vocab) for _ in range(rnd.randint(15, 120))]
        v = list(w)
        for _ in range(rnd.randint(0, 6)):
            v[rnd.randrange(len(v))] = rnd.choice(vocab)
        sig, _ = mh.signatures_of([" ".join(w), " ".join(v)], "word")
        errs.append(float(mh.jaccard_estimate(sig, np.array([0]), np.array([1]))[0]) - _exact_jaccard(" ".join(w), " ".join(v)))
    assert abs(np.mean(errs)) < 0.01  # unbiased
    assert np.std(errs) < 0.05  # ≈ sqrt(J(1-J)/128) ≈ 0.035 at J = 0.8


def test_signatures_do_not_depend_on_batching():
    texts = [f"record number {i} says something about cards and top ups {i % 7}" for i in range(50)]
    a, xa = mh.signatures_of(texts, "char", batch=7)
    b, xb = mh.signatures_of(texts, "char", batch=1000)
    c, xc = mh.signatures_of(texts, "char", max_chars=200)
    d, xd = mh.signatures_of(texts, "char", max_chars=20)  # compiled path: splits above 64·max_chars
    assert (a == c).all() and (xa == xc).all() and (a == d).all() and (xa == xd).all()
    assert (a == b).all() and (xa == xb).all()


@pytest.mark.parametrize("t", [0.5, 0.8, 0.9])
def test_optimal_params_match_datasketch(t):
    from datasketch.lsh import _optimal_param

    assert mh.optimal_params(t, 128) == _optimal_param(t, 128, 0.5, 0.5)


def test_optimal_params_default_and_errors():
    assert mh.optimal_params(0.8, 128) == (9, 13)
    with pytest.raises(ValueError, match="threshold"):
        mh.optimal_params(1.2)


def test_near_pairs_find_edits_not_strangers():
    base = "my card payment has been pending for three days and the shop says it never arrived please help me"
    texts = [base, base.replace("arrived", "arived"), "completely unrelated text about opening a savings account in euros today"]
    sig, _ = mh.signatures_of(texts, "char")
    pairs, scores = mh.near_pairs(sig, 0.8, *mh.optimal_params(0.8))
    assert pairs.tolist() == [[0, 1]] and scores[0] >= 0.8


def test_union_find_and_exact_pairs():
    uf = mh.UnionFind(6)
    uf.union_pairs([(0, 1), (1, 2), (4, 5)])
    assert uf.groups() == {uf.find(0): [0, 1, 2], uf.find(4): [4, 5]}
    assert uf.find(3) == 3
    ex = np.array([7, 0, 7, 0, 9, 7], dtype=np.uint64)
    assert mh.exact_pairs(ex).tolist() == [[0, 2], [0, 5]]


def test_lsh_candidates_big_bucket_connected():
    sig = np.tile(np.arange(128, dtype=np.uint32), (50, 1))  # 50 identical signatures: one bucket > 32
    pairs = mh.lsh_candidates(sig, 9, 13)
    uf = mh.UnionFind(50)
    uf.union_pairs(pairs)
    assert len(uf.groups()) == 1


@pytest.mark.parametrize("kind", ["word", "char"])
def test_compiled_and_numpy_paths_agree(kind):
    if mh._jit_kernel() is None:
        pytest.skip("numba not installed: only the numpy path exists")
    rnd = random.Random(5)
    vocab = ["card", "top-up", "PIN", "café", "Ünïcode", "x", "ATM!!", "£1", "already", "\u00a0", "🙂", "_"]
    texts = ["", "a", "ab cd", "  !!  ", "Is there an auto top-up option?", "nul\x00inside", "\x00"] + [
        " ".join(rnd.choice(vocab) for _ in range(rnd.randint(1, 40))) for _ in range(300)]
    a, xa = mh.signatures_of(texts, kind, jit=True)
    b, xb = mh.signatures_of(texts, kind, jit=False)
    assert (a == b).all() and (xa == xb).all()


def test_compiled_lsh_and_union_find_match_numpy():
    if mh._jit_kernel() is None:
        pytest.skip("numba not installed: only the numpy path exists")
    rnd = np.random.default_rng(3)
    sig = rnd.integers(0, 4, size=(400, 128), dtype=np.uint32)  # few distinct values: many shared bands
    sig[:60] = sig[0]  # one bucket of 60 (> 32: star + chain) in every band
    rows = rnd.permutation(400)[:300]  # rows in arbitrary order: bucket members follow it
    for rr in (None, rows):
        want = mh.lsh_candidates(sig, 9, 13, rr, jit=False)
        got = mh.lsh_candidates(sig, 9, 13, rr)
        assert len(want) and np.array_equal(got, want)
    pairs = rnd.integers(0, 400, size=(500, 2))
    a, b = mh.UnionFind(400), mh.UnionFind(400)
    a.union_pairs(pairs)  # compiled
    b.union_pairs([tuple(p) for p in pairs.tolist()])  # Python loop
    assert np.array_equal(a.parent, b.parent) and np.array_equal(a.size, b.size)
    with pytest.raises(IndexError):
        a.union_pairs(np.array([[0, 400]]))
