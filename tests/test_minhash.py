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


def test_lsh_params_reach_the_candidate_probability_with_least_false_positive_area():
    assert mh.lsh_params(0.8, 128) == (16, 6)
    for t in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95):
        b, r = mh.lsh_params(t, 128)
        assert b * r <= 128 and mh.candidate_probability(t, b, r) >= 0.99
        fp = mh.false_positive_probability(t, b, r)
        # brute force over every (b', r') with b'·r' ≤ 128 that also reaches 0.99 at t
        for r2 in range(1, 129):
            for b2 in range(1, 128 // r2 + 1):
                if mh.candidate_probability(t, b2, r2) >= 0.99:
                    assert mh.false_positive_probability(t, b2, r2) >= fp - 1e-12, (t, (b, r), (b2, r2))
    # far steeper than datasketch's balanced rule at the threshold (0.40 → 0.99)
    assert mh.candidate_probability(0.8, *mh.optimal_params(0.8)) < 0.45
    # unreachable target (threshold too low for 128 perms): the highest P(t) there is
    b, r = mh.lsh_params(0.01, 128)
    assert (b, r) == (128, 1)
    with pytest.raises(ValueError, match="threshold"):
        mh.lsh_params(0.0)


def _python_jaccard(a: str, b: str, kind: str) -> float:
    def sh(t):
        t = mh.normalize(t)
        if kind == "word":
            w = t.split()
            return {tuple(w[i : i + 3]) for i in range(len(w) - 2)} if len(w) >= 3 else {tuple(w)}
        u = t.encode()
        return {u[i : i + 5] for i in range(len(u) - 4)} if len(u) >= 5 else {u}
    x, y = sh(a), sh(b)
    return len(x & y) / len(x | y)


@pytest.mark.parametrize("kind", ["word", "char"])
def test_exact_jaccard_equals_set_jaccard_of_the_shingles(kind):
    rnd = random.Random(11)
    vocab = ["card", "top-up", "PIN", "café", "x", "ATM!!", "pending", "the", "the", "a", "Ünïcode"]
    texts = []
    for _ in range(120):
        w = [rnd.choice(vocab) for _ in range(rnd.randint(1, 30))]
        v = list(w)
        for _ in range(rnd.randint(0, 3)):
            v[rnd.randrange(len(v))] = rnd.choice(vocab)
        texts += [" ".join(w), " ".join(v)]
    hs, offs = mh.shingle_hashes(texts, kind)
    a, b = np.arange(0, len(texts), 2), np.arange(1, len(texts), 2)
    got = mh.jaccard_sets(hs, offs, a, b)
    want = [_python_jaccard(texts[i], texts[j], kind) for i, j in zip(a, b)]
    assert np.allclose(got, want, atol=0, rtol=1e-12)
    h2, o2 = mh.shingle_hashes(texts, kind, jit=False)
    assert np.array_equal(h2, hs) and np.array_equal(o2, offs)  # compiled = numpy path


def test_verify_pairs_decides_exactly_at_the_threshold():
    # word 3-grams: 5 shingles; one changed last word → 4 shared of 6 (0.667); a text
    # one word longer → 5 of 6 (0.833); the same text → 1.0
    base = "one two three four five six seven"
    texts = [base, base + " eight", "one two three four five six SEVEN!", "one two three four five six other",
             "nothing in common here at all"]
    cand = np.array([[0, 1], [0, 2], [0, 3], [0, 4]])
    pairs, scores = mh.verify_pairs(cand, texts, "word", 0.8)
    assert pairs.tolist() == [[0, 1], [0, 2]]
    assert np.allclose(scores, [5 / 6, 1.0])
    # exactly at the threshold counts: 4 shared of 5 = 0.8
    pairs, scores = mh.verify_pairs(np.array([[0, 1]]), ["a b c d e f", "a b c d e f g"], "word", 0.8)
    assert pairs.tolist() == [[0, 1]] and scores[0] == pytest.approx(0.8)
    pairs, _ = mh.verify_pairs(np.array([[0, 1]]), ["a b c d e f", "a b c d e f g"], "word", 0.81)
    assert len(pairs) == 0
    # texts by function (e.g. fetched from the store): same result, wrong length is an error
    got = mh.verify_pairs(cand, lambda rows: [texts[i] for i in rows], "word", 0.8)[0]
    assert got.tolist() == [[0, 1], [0, 2]]
    with pytest.raises(ValueError, match="returned 1 texts for 5 rows"):
        mh.verify_pairs(cand, lambda rows: ["x"], "word", 0.8)


def test_near_pairs_find_edits_not_strangers():
    base = "my card payment has been pending for three days and the shop says it never arrived please help me"
    texts = [base, base.replace("arrived", "arived"), "completely unrelated text about opening a savings account in euros today"]
    sig, _ = mh.signatures_of(texts, "char")
    pairs, scores = mh.near_pairs(sig, 0.8, *mh.lsh_params(0.8), texts, "char")
    assert pairs.tolist() == [[0, 1]] and scores[0] == pytest.approx(_python_jaccard(texts[0], texts[1], "char"))


@pytest.mark.parametrize("jit", [None, False])
def test_band_keys_without_signatures_match_signature_band_keys(jit):
    if jit is None and mh._jit_kernel() is None:
        pytest.skip("numba not installed")
    rnd = random.Random(2)
    vocab = [f"w{i}" for i in range(50)] + ["Ünïcode", "!!"]
    texts = ["", "!!", "a"] + [" ".join(rnd.choice(vocab) for _ in range(rnd.randint(1, 60))) for _ in range(500)]
    b, r = mh.lsh_params(0.8)
    sig, ex = mh.signatures_of(texts, "word", jit=jit)
    keys, ex2 = mh.lsh_keys_of(texts, "word", 128, b, r, batch=37, jit=jit)
    assert np.array_equal(ex, ex2)
    ok = mh.nonempty(sig)
    assert np.array_equal(ok, ex2 != 0)
    for band in range(b):
        assert np.array_equal(keys[band, ok], mh.band_keys(sig[ok], band, r))
    rows = np.flatnonzero(ok)
    assert np.array_equal(mh.lsh_candidates_keys(keys, rows, jit=jit), mh.lsh_candidates(sig, b, r, rows, jit=False))
    with pytest.raises(ValueError, match="num_perm"):
        mh.lsh_keys_of(texts, "word", 100, 16, 6)
    with pytest.raises(ValueError, match="fit in the signature length"):
        mh.lsh_keys_of(texts, "word", 64, 16, 6)


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
    # the compiled word hash reads 8 bytes at a time: words of every length across the 8- and
    # 16-byte boundaries, runs of punctuation, words at the very end of a document and of a batch
    letters = "abcXYZ0189é"
    texts += [" ".join("".join(rnd.choice(letters) for _ in range(ln)) for ln in rnd.sample(range(1, 25), 12))
              for _ in range(100)]
    texts += ["w" * ln for ln in range(1, 26)] + ["end with a long word " + "q" * 17, "a,,, b!!!c  d", "x" * 8 + "!" + "y" * 8]
    a, xa = mh.signatures_of(texts, kind, jit=True)
    b, xb = mh.signatures_of(texts, kind, jit=False)
    assert (a == b).all() and (xa == xb).all()
    h1, o1 = mh.shingle_hashes(texts, kind)
    h2, o2 = mh.shingle_hashes(texts, kind, jit=False)
    assert np.array_equal(o1, o2) and all(np.array_equal(np.sort(h1[o1[d]:o1[d + 1]]), np.sort(h2[o2[d]:o2[d + 1]]))
                                          for d in range(len(texts)))


def test_partitioned_buckets_match_numpy_on_large_inputs():
    """Above 4 096 rows the compiled LSH splits each band into cache-sized partitions."""
    if mh._jit_kernel() is None:
        pytest.skip("numba not installed: only the numpy path exists")
    rnd = np.random.default_rng(4)
    keys = rnd.integers(0, 3000, size=(5, 20000)).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    keys[:, :50] = keys[:, :1]  # a bucket of 50 (> 32: star + chain) in every band
    rows = np.sort(rnd.permutation(20000)[:15000])
    want = mh.lsh_candidates_keys(keys, rows, jit=False)
    assert len(want) > 10000 and np.array_equal(mh.lsh_candidates_keys(keys, rows), want)
    # the compiled tables compare the low 32 bits of a key first: keys equal there but not in
    # the high bits are different buckets
    lo = rnd.integers(0, 40, size=(3, 30000)).astype(np.uint64)
    part = rnd.integers(0, 4, size=(3, 30000)).astype(np.uint64) << np.uint64(62)  # partition (top bits)
    hi = rnd.integers(0, 3, size=(3, 30000)).astype(np.uint64) << np.uint64(40)  # same partition, other key
    keys = part | hi | (lo * np.uint64(0x9E3779B9) & np.uint64(0xFFFFFFFF))
    for rr in (None, np.sort(rnd.permutation(30000)[:20000])):
        want = mh.lsh_candidates_keys(keys, rr, jit=False)
        assert np.array_equal(mh.lsh_candidates_keys(keys, rr), want)


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
