"""Vectorised text normalisation, shingling, MinHash signatures, LSH and union-find.

This module owns the arithmetic behind ``curate dedup`` / ``curate leakage``;
it knows nothing about the store. Everything works on *batches* of texts and
returns numpy arrays, never per-document Python objects, so a million
signatures are one ``(n, k)`` ``uint32`` matrix (128 × 4 B = 512 B a record),
and the near detector keeps only their LSH band keys (16 × 8 B = 128 B a record).

Normalisation (:func:`normalize`)
---------------------------------
Unicode NFKC, lower case, every run of characters that is not a letter or a
digit (punctuation, ``_``, whitespace, emoji …) becomes one space, then the
text is stripped. ``"Hello,  WORLD!!"`` and ``"hello world"`` are equal.
Exact dedup hashes this string; near dedup shingles it.

Shingles
--------
* ``word`` (default, ``n=3``): the hashes of consecutive word triples. A text
  with fewer than ``n`` words is one shingle (all its words).
* ``char`` (``n=5``): the hashes of every 5-byte window of the UTF-8 of the
  normalised text (spaces included, so word boundaries count).

``auto`` picks ``char`` when the median normalised text has fewer than 12
words and ``word`` otherwise. Measured on BANKING77 (median 10 words): a
one-word change in a 10-word query leaves word-3-gram Jaccard at ~0.5, so at
0.8 word shingles find only exact-after-normalisation copies there; char
5-grams find the one-typo / one-word variants. On the long planted-edit corpus
of ``bench/dedup.py`` both reach recall/precision ≥ 0.95; word 3-grams are
cheaper (fewer shingles). See ``docs/dedup.md``.

Word hashes are computed without a Python loop: the normalised batch is one
byte array; a word's polynomial hash ``Σ b_i·P^(i-start)`` (mod 2^64) is a
difference of prefix sums of ``b_i·P^i`` times ``P^-start`` (``P`` odd, hence
invertible mod 2^64), followed by a splitmix64 finaliser.

MinHash: one-permutation hashing with optimal densification
-----------------------------------------------------------
Classic MinHash applies ``k`` hash functions to every shingle (cost
``shingles × k``). We use *one permutation hashing* (Li, Owen & Zhang 2012):
each shingle is hashed once to 64 bits; the top ``log2 k`` bits pick one of
``k`` bins and the low 32 bits are its value; a signature keeps the minimum
value per bin (cost ``shingles``). Empty bins (short texts) are filled by
*optimal densification* (Shrivastava 2017): empty bin ``i`` copies the value of
the first non-empty bin among ``g(i, 1), g(i, 2), …`` for a fixed pseudo-random
sequence ``g`` shared by all documents. For two sets ``A``, ``B`` every bin then
agrees with probability ``J(A,B) = |A∩B| / |A∪B|``, so the fraction of equal
bins is an unbiased Jaccard estimate with variance ≈ ``J(1-J)/k``
(std 0.035 at ``J = 0.8, k = 128``).

LSH banding and exact verification
----------------------------------
The ``k`` values are cut into ``b`` bands of ``r`` rows. Two documents with
Jaccard ``s`` share at least one band with probability ``P(s) = 1-(1-s^r)^b``.
The user states a Jaccard threshold ``t`` and means "every pair with J ≥ t", so
:func:`lsh_params` picks, among ``b·r ≤ k`` with ``P(t) ≥ 0.99``, the ``(b, r)``
with the smallest false-positive area ``∫_0^t P(s) ds`` (the candidates below
the threshold that verification must reject). ``t=0.8, k=128`` → ``b=16, r=6``:
``P(0.8) = 0.992``, ``P(0.9) ≈ 1``, ``P(0.5) = 0.22``, ``P(0.3) = 0.012``.
(datasketch's rule, :func:`optimal_params`, balances false positives and
negatives instead: ``(9, 13)``, whose ``P(0.8)`` is only 0.40.)

Candidates are then verified by the *exact* Jaccard of their shingle sets
(:func:`verify_pairs`): the shingle hashes of the rows in candidate pairs are
recomputed from their texts (:func:`shingle_hashes`, the same shingles the
signatures were made of), a block of pairs at a time, and each pair's
``|A∩B| / |A∪B|`` is counted (:func:`jaccard_sets`). The decision at the
threshold is therefore exact (64-bit shingle hashes: a collision inside one pair
has probability ~10⁻¹⁵), not an estimate with spread ±0.035; the only misses
are pairs LSH never proposes (≤ 0.8 % at J = t, fewer above).

The near detector never needs the full signatures: :func:`lsh_keys_of` computes
each signature in a scratch row and keeps only its ``b`` band keys (``b·8`` bytes
a record: 128 B instead of 512 B at 16 bands).

Clusters are the connected components of the verified pairs, computed by a
:class:`UnionFind` (path halving + union by size).

Two implementations of the same arithmetic
------------------------------------------
With numba installed, :mod:`curate.minhash_kernel` does the hot loops in
machine code: :func:`signatures_of` / :func:`lsh_keys_of` (one pass per document
over the raw UTF-8 of a batch: ASCII normalisation by table, word hashes,
shingles, OPH bins, optimal densification, band keys), :func:`shingle_hashes`
and :func:`jaccard_sets` (verification), :func:`lsh_candidates` /
:func:`lsh_candidates_keys` (shared band keys found with cache-sized hash tables
per band) and :meth:`UnionFind.union_pairs`. Without numba, or with ``WORKBENCH_NO_JIT=1``
(``jit=False`` per call), the numpy paths above run instead (:func:`shingle` +
:func:`signatures`, sorted band keys, the Python union-find). They are
bit-identical (tested), so signatures, candidates, clusters, Redis indexes and
reports do not depend on which one ran. Measured throughput is in
``docs/dedup.md`` and ``bench/results/dedup.json``.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, Union

import numpy as np

U64 = np.uint64
MASK32 = np.uint64(0xFFFFFFFF)
EMPTY = np.uint32(0xFFFFFFFF)
_P = np.uint64(0x100000001B3)  # FNV prime: odd, so invertible modulo 2^64
_SEP = "\x00"  # document separator inside a batch (stripped from texts)
_NONWORD = re.compile(r"[^\w\x00]+|_+")
_SPACES = re.compile(r" +")


# --------------------------------------------------------------------------- normalisation
def normalize(text: str) -> str:
    """The normal form used by every detector (see the module docstring)."""
    t = unicodedata.normalize("NFKC", text.replace(_SEP, " ")).lower()
    return _SPACES.sub(" ", _NONWORD.sub(" ", t)).strip()


_ASCII_TABLE = bytes(
    c if (48 <= c <= 57 or 97 <= c <= 122 or c == 0 or c >= 128) else (c + 32 if 65 <= c <= 90 else 32) for c in range(256)
)


def _translated_bytes(texts: Sequence[str]) -> np.ndarray:
    """NUL-joined texts, ASCII lower-cased and punctuation → space by one ``bytes.translate``;
    texts with non-ASCII characters go through :func:`normalize` first. Spaces not collapsed."""
    joined = _SEP.join(texts)
    if joined.count(_SEP) != max(len(texts) - 1, 0) or not joined.isascii():
        joined = _SEP.join(t if t.isascii() and _SEP not in t else normalize(t) for t in texts)
    return np.frombuffer(joined.encode("utf-8").translate(_ASCII_TABLE), dtype=np.uint8)


def _normalized_bytes(texts: Sequence[str]) -> np.ndarray:
    """Normalise many texts at once → one uint8 array, documents separated by NUL.

    Fast path: ASCII texts are lower-cased and stripped of punctuation with one
    ``bytes.translate``; texts with other characters go through :func:`normalize`
    first (the translate is then a no-op on them). Runs of spaces are collapsed
    and spaces next to a separator removed, in numpy.
    """
    buf = _translated_bytes(texts)
    if not len(buf):
        return buf
    sp = buf == 32
    blank = sp | (buf == 0)
    prev_blank = np.concatenate([[True], blank[:-1]])
    next_sep = np.concatenate([buf[1:] == 0, [True]])
    # drop a space after a space/separator/start, or before a separator/end
    keep = ~(sp & (prev_blank | next_sep))
    buf = buf[keep]
    # a space kept before a run of dropped spaces that ends at a separator
    if len(buf):
        sp = buf == 32
        bad = sp & np.concatenate([buf[1:] == 0, [True]])
        if bad.any():
            buf = buf[~bad]
    return buf


# --------------------------------------------------------------------------- hashing helpers
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (wrapping uint64 arithmetic)."""
    x = x.astype(U64, copy=True)
    x ^= x >> U64(30)
    x *= U64(0xBF58476D1CE4E5B9)
    x ^= x >> U64(27)
    x *= U64(0x94D049BB133111EB)
    x ^= x >> U64(31)
    return x


_POW_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i mod 2^64 for i < n (cached, grown by doubling)."""
    have = next((m for m in sorted(_POW_CACHE) if m >= n), None)
    if have is not None:
        pw, inv = _POW_CACHE[have]
        return pw[:n], inv[:n]
    m = 1 << max(16, (n - 1).bit_length())
    pinv = pow(int(_P), -1, 1 << 64)
    pw = np.empty(m, U64)
    inv = np.empty(m, U64)
    pw[0] = inv[0] = 1
    size = 1
    with np.errstate(over="ignore"):
        while size < m:  # doubling: block [size, 2·size) = block [0, size) · P^size
            step = min(size, m - size)
            np.multiply(pw[:step], U64(pow(int(_P), size, 1 << 64)), out=pw[size : size + step])
            np.multiply(inv[:step], U64(pow(pinv, size, 1 << 64)), out=inv[size : size + step])
            size += step
    _POW_CACHE.clear()
    _POW_CACHE[m] = (pw, inv)
    return pw[:n], inv[:n]


def _segment_hash(prefix: np.ndarray, inv: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Polynomial hash of buf[start:end] from prefix sums of b_i·P^i (end exclusive)."""
    hi = prefix[end - 1]
    lo = np.where(start > 0, prefix[np.maximum(start - 1, 0)], U64(0))
    return (hi - lo) * inv[start]


@dataclass
class Shingled:
    """Shingle hashes of a batch: ``hashes[i]`` belongs to document ``doc[i]``."""

    hashes: np.ndarray  # uint64
    doc: np.ndarray  # int64, non-decreasing
    n_docs: int
    words_per_doc: np.ndarray  # int64
    exact: np.ndarray  # uint64 hash of the normalised text (0 for empty texts)


def shingle(texts: Sequence[str], kind: str = "word", n: int | None = None) -> Shingled:
    """Normalise and shingle ``texts`` (see the module docstring)."""
    if kind not in ("word", "char"):
        raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")
    n = n or (3 if kind == "word" else 5)
    n_docs = len(texts)
    if n_docs == 0:
        z = np.zeros(0, U64)
        return Shingled(z, np.zeros(0, np.int64), 0, np.zeros(0, np.int64), z)
    buf = _normalized_bytes(texts)
    L = len(buf)
    is_sep = buf == 0
    sep_pos = np.flatnonzero(is_sep)
    pw, inv = _powers(L + 1)
    with np.errstate(over="ignore"):
        prefix = np.cumsum((buf.astype(U64) + U64(1)) * pw[:L], dtype=U64) if L else np.zeros(0, U64)
    is_word = (buf != 32) & ~is_sep
    prev = np.concatenate([[False], is_word[:-1]])
    nxt = np.concatenate([is_word[1:], [False]])
    wstart = np.flatnonzero(is_word & ~prev)
    wend = np.flatnonzero(is_word & ~nxt) + 1
    with np.errstate(over="ignore"):
        wh = _mix64(_segment_hash(prefix, inv, wstart, wend)) if len(wstart) else np.zeros(0, U64)
    wdoc = np.searchsorted(sep_pos, wstart).astype(np.int64)
    words_per_doc = np.bincount(wdoc, minlength=n_docs).astype(np.int64)
    first_word = np.concatenate([[0], np.cumsum(words_per_doc)[:-1]])

    # exact hash: order-dependent combination of the word hashes of each doc
    with np.errstate(over="ignore"):
        pos = np.arange(len(wh), dtype=np.int64) - first_word[wdoc]
        wpw, _ = _powers(int(pos.max()) + 2 if len(pos) else 2)
        contrib = wh * wpw[pos]
        exact = np.zeros(n_docs, U64)
        has = np.flatnonzero(words_per_doc > 0)
        if len(has):  # words are in document order: one segment sum per non-empty doc
            exact[has] = np.add.reduceat(contrib, first_word[has])
        exact = np.where(words_per_doc > 0, _mix64(exact + words_per_doc.astype(U64)), U64(0))

    if kind == "word":
        m = len(wh)
        if m >= n:
            ok = wdoc[: m - n + 1] == wdoc[n - 1 :]
            with np.errstate(over="ignore"):
                h = np.zeros(m - n + 1, U64)
                for j in range(n):
                    h = h * U64(0x9E3779B97F4A7C15) + wh[j : m - n + 1 + j]
            sh, sd = h[ok], wdoc[: m - n + 1][ok]
        else:
            sh, sd = np.zeros(0, U64), np.zeros(0, np.int64)
        short = np.flatnonzero((words_per_doc > 0) & (words_per_doc < n))
        if len(short):  # one shingle for the whole (short) text
            sh = np.concatenate([sh, _mix64(exact[short] ^ U64(0x5555))])
            sd = np.concatenate([sd, short])
    else:
        if L >= n:
            starts = np.arange(L - n + 1)
            seps_cum = np.cumsum(is_sep)
            ends = starts + n
            has_sep = (seps_cum[ends - 1] - np.where(starts > 0, seps_cum[starts - 1], 0)) > 0
            starts = starts[~has_sep]
            with np.errstate(over="ignore"):
                sh = _segment_hash(prefix, inv, starts, starts + n)
            sd = np.searchsorted(sep_pos, starts).astype(np.int64)
        else:
            sh, sd = np.zeros(0, U64), np.zeros(0, np.int64)
        # docs shorter than n bytes: one shingle for the whole text
        bounds = np.concatenate([[-1], sep_pos, [L]])
        doc_len = np.diff(bounds) - 1
        short = np.flatnonzero((doc_len > 0) & (doc_len < n))
        if len(short):
            sh = np.concatenate([sh, _mix64(exact[short] ^ U64(0x5555))])
            sd = np.concatenate([sd, short])
    if len(sd) > 1 and (sd[1:] < sd[:-1]).any():
        order = np.argsort(sd, kind="stable")
        sh, sd = sh[order], sd[order]
    return Shingled(sh, sd, n_docs, words_per_doc, exact)


def choose_shingle(texts: Sequence[str], kind: str = "auto") -> str:
    """Resolve ``auto``: char 5-grams for short texts (median < 12 words), else word 3-grams."""
    if kind != "auto":
        return kind
    if not texts:
        return "word"
    sample = list(texts[:2000])
    med = float(np.median([len(normalize(t).split()) for t in sample]))
    return "char" if med < 12 else "word"


# --------------------------------------------------------------------------- MinHash (OPH)
def _densify_sequence(k: int, attempts: int) -> np.ndarray:
    """g(i, t) for bins i < k and attempts t < attempts: the bins an empty bin borrows from."""
    i = np.arange(k, dtype=U64)[:, None]
    t = np.arange(1, attempts + 1, dtype=U64)[None, :]
    with np.errstate(over="ignore"):
        h = _mix64(i * U64(0xD6E8FEB86659FD93) + t * U64(0xA0761D6478BD642F) + U64(12345))
    return (h % U64(k)).astype(np.int64)


def signatures(sh: Shingled, k: int = 128, seed: int = 1) -> np.ndarray:
    """``(n_docs, k)`` uint32 one-permutation MinHash signatures (densified).

    Documents without any shingle (empty after normalisation) keep all bins at
    ``0xFFFFFFFF``; :func:`nonempty` tells them apart.
    """
    if k & (k - 1) or not 8 <= k <= 1024:
        raise ValueError(f"num_perm must be a power of two in [8, 1024], got {k}")
    bits = k.bit_length() - 1
    with np.errstate(over="ignore"):
        v = _mix64(sh.hashes ^ _mix64(np.array([seed], U64))[0])
    bins = (v >> U64(64 - bits)).astype(np.int64)
    vals = (v & MASK32).astype(np.uint32)
    vals = np.minimum(vals, np.uint32(0xFFFFFFFE))  # keep EMPTY as a marker
    sig = np.full((sh.n_docs, k), EMPTY, dtype=np.uint32)
    np.minimum.at(sig.reshape(-1), sh.doc * k + bins, vals)
    # optimal densification: empty bin i borrows from g(i,1), g(i,2), … (same sequence for every doc)
    empty = sig == EMPTY
    has_any = ~empty.all(axis=1)
    rows, cols = np.nonzero(empty & has_any[:, None])
    if len(rows):
        seq = _densify_sequence(k, 4 * k)
        flat = sig.reshape(-1)
        out = np.empty(len(rows), np.uint32)
        todo = np.arange(len(rows))
        base = rows * k
        for t in range(seq.shape[1]):
            if not len(todo):
                break
            val = flat[base[todo] + seq[cols[todo], t]]
            ok = val != EMPTY
            out[todo[ok]] = val[ok]
            todo = todo[~ok]
        for j in todo:  # astronomically rare: first non-empty bin to the right
            r = sig[rows[j]]
            nz = np.flatnonzero(r != EMPTY)
            out[j] = r[nz[np.searchsorted(nz, cols[j]) % len(nz)]]
        sig[rows, cols] = out
    return sig


def nonempty(sig: np.ndarray) -> np.ndarray:
    return sig[:, 0] != EMPTY


# --------------------------------------------------------------------------- compiled path (numba)
# The same arithmetic as shingle() + signatures() above, one pass per document in
# machine code: word hash Σ (b_i+1)·P^(i-start), exact hash, shingles, OPH bins,
# optimal densification. tests/test_minhash.py checks both paths agree bit for bit.
_JIT = None


def _jit_module():
    """curate.minhash_kernel when numba is installed and WORKBENCH_NO_JIT is unset, else None."""
    global _JIT
    if _JIT is not None:
        return _JIT or None
    import os

    if os.environ.get("WORKBENCH_NO_JIT"):
        _JIT = False
        return None
    try:
        from . import minhash_kernel
    except ImportError:
        _JIT = False
        return None
    _JIT = minhash_kernel
    return minhash_kernel


def _jit_kernel():
    mod = _jit_module()
    return mod.kernel if mod is not None else None


# byte → normal form for the compiled path: like _ASCII_TABLE, but NUL is a space too
# (documents are given by offsets there, not separators)
_JIT_TABLE = np.frombuffer(_ASCII_TABLE, np.uint8).copy()
_JIT_TABLE[0] = 32
_SEQ_T: dict[int, np.ndarray] = {}
# texts per call of a compiled kernel: the joined UTF-8 of 2 048 texts of ~600 bytes
# (~1.2 MB) stays in cache between "\0".join, encode and the kernel, and malloc reuses it
# instead of mapping fresh pages per batch (20 000 texts a call page-faulted ~0.5 µs a
# record in system time at 100 k records; measured, docs/dedup.md)
JIT_CHUNK = 2048


def _raw_bytes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 of the texts joined by NUL, and the byte offset where each starts (plus the
    end): document ``d`` is ``buf[offs[d]:offs[d+1]]``, its trailing NUL included (the
    kernel reads NUL as a space). ASCII texts are passed as they are (the kernel
    normalises them byte by byte); texts with other characters, or with a NUL of their
    own, go through :func:`normalize` first."""
    n = len(texts)
    joined = _SEP.join(texts)
    buf = np.frombuffer(joined.encode("utf-8"), np.uint8) if joined.isascii() else None
    seps = np.flatnonzero(buf == 0) if buf is not None else None
    if seps is None or len(seps) != max(n - 1, 0):  # non-ASCII text, or a NUL inside a text
        joined = _SEP.join(t if t.isascii() and _SEP not in t else normalize(t) for t in texts)
        buf = np.frombuffer(joined.encode("utf-8"), np.uint8)
        seps = np.flatnonzero(buf == 0)
    offs = np.empty(n + 1, np.int64)
    offs[0] = 0
    offs[1:n] = seps + 1
    offs[n] = len(buf)
    return buf, offs


def _signatures_jit(kernel, buf: np.ndarray, offs: np.ndarray, kind: str, k: int, seed: int,
                    sig: np.ndarray, exact: np.ndarray) -> None:
    """Fill ``sig`` (rows pre-set to EMPTY) and ``exact`` for the documents of
    :func:`_raw_bytes` ``(buf, offs)`` with the compiled kernel."""
    if len(offs) < 2:
        return
    if k not in _SEQ_T:
        _SEQ_T[k] = np.ascontiguousarray(_densify_sequence(k, 4 * k).T.astype(np.uint16))
    pw, _ = _powers(int(np.diff(offs).max()) + 2)
    seedmix = _mix64(np.array([seed], U64))[0]
    kernel(buf, offs, _JIT_TABLE, pw, kind == "char", 3 if kind == "word" else 5, k,
           np.uint64(64 - (k.bit_length() - 1)), seedmix, _SEQ_T[k], sig, exact)


def signatures_of(texts: Sequence[str], kind: str = "word", k: int = 128, batch: int = 20000,
                  seed: int = 1, max_chars: int = 1 << 20, jit: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Signatures and exact-text hashes of ``texts``.

    Work is done in chunks of at most ``batch`` texts (numpy path: and about
    ``max_chars`` characters, which keeps its temporary arrays in cache; the
    compiled path has no large temporaries and only splits chunks above
    ``64·max_chars`` bytes); each chunk writes straight into the result
    matrix, and results do not depend on the chunking. With numba installed the compiled kernel is used
    (``jit=False`` or ``WORKBENCH_NO_JIT=1`` forces the numpy path); both give
    identical results.
    """
    if kind not in ("word", "char"):
        raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")
    if k & (k - 1) or not 8 <= k <= 1024:
        raise ValueError(f"num_perm must be a power of two in [8, 1024], got {k}")
    kernel = _jit_kernel() if jit is not False else None
    n = len(texts)
    sig = np.full((n, k), EMPTY, dtype=np.uint32)
    exact = np.zeros(n, U64)
    i = 0
    while i < n:
        if kernel is not None:  # no large temporaries: chunks of ≤ JIT_CHUNK texts, ≤ 64·max_chars bytes
            j = min(n, i + min(batch, JIT_CHUNK))
            buf, offs = _raw_bytes(texts[i:j])
            while j - i > 1 and len(buf) > 64 * max_chars:
                j = i + (j - i) // 2
                buf, offs = _raw_bytes(texts[i:j])
            _signatures_jit(kernel, buf, offs, kind, k, seed, sig[i:j], exact[i:j])
            i = j
            continue
        j, size = i, 0
        while j < n and j - i < batch and (size < max_chars or j == i):
            size += len(texts[j]) + 1
            j += 1
        sh = shingle(texts[i:j], kind)
        sig[i:j], exact[i:j] = signatures(sh, k, seed), sh.exact
        i = j
    return sig, exact


def lsh_keys_of(texts: Sequence[str], kind: str, k: int, b: int, r: int, batch: int = 20000, seed: int = 1,
                max_chars: int = 1 << 20, jit: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LSH band keys ``(b, n)`` uint64 and exact-text hashes of ``texts``: the keys
    :func:`band_keys` gives on the rows of :func:`signatures_of`, without keeping the
    signatures (b·8 bytes a record instead of k·4: 128 B instead of 512 B at 16 bands).
    Texts without words have exact hash 0 and key 0 (leave them out of the LSH)."""
    if kind not in ("word", "char"):
        raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")
    if k & (k - 1) or not 8 <= k <= 1024:
        raise ValueError(f"num_perm must be a power of two in [8, 1024], got {k}")
    if b < 1 or r < 1 or b * r > k:
        raise ValueError(f"bands × rows = {b} × {r} must be ≥ 1 and fit in the signature length {k}")
    kernel_mod = _jit_module() if jit is not False else None
    n = len(texts)
    keys = np.zeros((b, n), U64)
    exact = np.zeros(n, U64)
    if kernel_mod is None:  # numpy path: signatures of a batch, then their band keys
        for i in range(0, n, batch):
            s_, x_ = signatures_of(texts[i : i + batch], kind, k, batch, seed, max_chars, jit=False)
            ok = nonempty(s_)
            for band in range(b):
                keys[band, i : i + len(s_)] = np.where(ok, band_keys(s_, band, r), U64(0))
            exact[i : i + len(s_)] = x_
        return keys, exact
    if k not in _SEQ_T:
        _SEQ_T[k] = np.ascontiguousarray(_densify_sequence(k, 4 * k).T.astype(np.uint16))
    seedmix = _mix64(np.array([seed], U64))[0]
    i = 0
    while i < n:
        j = min(n, i + min(batch, JIT_CHUNK))
        buf, offs = _raw_bytes(texts[i:j])
        while j - i > 1 and len(buf) > 64 * max_chars:
            j = i + (j - i) // 2
            buf, offs = _raw_bytes(texts[i:j])
        pw, _ = _powers(int(np.diff(offs).max()) + 2)
        kernel_mod.keys_kernel(buf, offs, _JIT_TABLE, pw, kind == "char", 3 if kind == "word" else 5, k,
                               np.uint64(64 - (k.bit_length() - 1)), seedmix, _SEQ_T[k], b, r, keys[:, i:j],
                               exact[i:j])
        i = j
    return keys, exact


def lsh_candidates_keys(keys: np.ndarray, rows: np.ndarray | None = None, jit: bool | None = None) -> np.ndarray:
    """Unique candidate pairs ``(i, j)``, ``i < j``, among columns ``rows`` of the band keys
    ``keys`` (b, n) of :func:`lsh_keys_of`: the same pairs as :func:`lsh_candidates` on
    the signatures."""
    ids = np.arange(keys.shape[1], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    mod = _jit_module() if jit is not False else None
    if mod is not None:
        return unique_pairs(mod.bucket_pairs(keys, ids, ids, 32))
    parts = [_pairs_from_keys(keys[band, ids], ids) for band in range(keys.shape[0])]
    return unique_pairs(np.concatenate(parts)) if parts else np.zeros((0, 2), np.int64)


def jaccard_estimate(sig: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """Fraction of equal bins between rows ``a[i]`` and ``b[i]``: the MinHash estimate of
    their Jaccard (unbiased, spread ≈ √(J(1−J)/k)); verification uses the exact Jaccard."""
    out = np.empty(len(a), np.float32)
    for i in range(0, len(a), chunk):
        out[i : i + chunk] = (sig[a[i : i + chunk]] == sig[b[i : i + chunk]]).mean(axis=1)
    return out


# --------------------------------------------------------------------------- LSH parameters
def _integrate(f, a: float, b: float, n: int = 2001) -> float:
    x = np.linspace(a, b, n)
    y = f(x)
    return float(np.sum((y[1:] + y[:-1]) * 0.5 * np.diff(x)))


def false_positive_probability(threshold: float, b: int, r: int) -> float:
    """∫_0^t 1-(1-s^r)^b ds: area of the collision curve below the threshold."""
    return _integrate(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)


def false_negative_probability(threshold: float, b: int, r: int) -> float:
    """∫_t^1 (1-s^r)^b ds: area of the miss curve above the threshold."""
    return _integrate(lambda s: (1 - s ** float(r)) ** float(b), threshold, 1.0)


def optimal_params(threshold: float, num_perm: int = 128, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(bands b, rows r) with b·r ≤ num_perm minimising w_fp·FP + w_fn·FN (datasketch's rule,
    kept for the datasketch baseline and comparison; the near detector uses :func:`lsh_params`)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"Jaccard threshold must be in (0, 1), got {threshold}")
    best, opt = float("inf"), (1, num_perm)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = weights[0] * false_positive_probability(threshold, b, r) + weights[1] * false_negative_probability(threshold, b, r)
            if err < best:
                best, opt = err, (b, r)
    return opt


def candidate_probability(s: float, b: int, r: int) -> float:
    """P(s) = 1-(1-s^r)^b: chance that a pair of Jaccard ``s`` shares at least one band."""
    return 1.0 - (1.0 - float(s) ** r) ** b


def lsh_params(threshold: float, num_perm: int = 128, min_candidate: float = 0.99) -> tuple[int, int]:
    """(bands b, rows r) used by ``curate dedup/leakage --near``: among b·r ≤ num_perm with
    candidate probability ``P(threshold) ≥ min_candidate``, the one with the smallest
    false-positive area ``∫_0^t P(s) ds`` (fewest candidates below the threshold, which
    exact verification then rejects). At fixed r that is the smallest b reaching
    ``min_candidate``, so only one b per r is tried. t = 0.8, 128 perms → (16, 6):
    P(0.8) = 0.992. If no (b, r) reaches ``min_candidate`` (very low thresholds), the one
    with the highest P(threshold) is returned."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"Jaccard threshold must be in (0, 1), got {threshold}")
    if not 0.0 < min_candidate < 1.0:
        raise ValueError(f"min_candidate must be in (0, 1), got {min_candidate}")
    best, opt = float("inf"), None
    for r in range(1, num_perm + 1):
        hit = threshold ** r  # one band agrees with probability t^r
        if hit <= 0.0:
            break
        b = max(1, int(math.ceil(math.log(1.0 - min_candidate) / math.log1p(-hit) - 1e-9)))
        if candidate_probability(threshold, b, r) < min_candidate:
            b += 1
        if b * r > num_perm:
            continue
        fp = false_positive_probability(threshold, b, r)
        if fp < best:
            best, opt = fp, (b, r)
    if opt is None:
        opt = max(((num_perm // r, r) for r in range(1, num_perm + 1)),
                  key=lambda br: candidate_probability(threshold, *br))
    return opt


# --------------------------------------------------------------------------- LSH candidates
def _pairs_from_keys(keys: np.ndarray, ids: np.ndarray, full_pairs_upto: int = 32) -> np.ndarray:
    """Candidate pairs among rows sharing a band key: all pairs in buckets of ≤ 32,
    a star (first member to each other) plus a chain (consecutive members) in larger ones."""
    if len(keys) < 2:
        return np.zeros((0, 2), np.int64)
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    ids_sorted = ids[order]
    new = np.concatenate([[True], ks[1:] != ks[:-1]])
    run_start = np.flatnonzero(new)
    run_len = np.diff(np.concatenate([run_start, [len(ks)]]))
    multi = run_len >= 2
    if not multi.any():
        return np.zeros((0, 2), np.int64)
    out = []
    # pairs: size-2 buckets (the common case), vectorised
    two = run_start[run_len == 2]
    if len(two):
        out.append(np.stack([ids_sorted[two], ids_sorted[two + 1]], axis=1))
    for s, ln in zip(run_start[run_len > 2], run_len[run_len > 2]):
        members = ids_sorted[s : s + ln]
        if ln <= full_pairs_upto:
            iu, ju = np.triu_indices(ln, 1)
            out.append(np.stack([members[iu], members[ju]], axis=1))
        else:
            out.append(np.stack([np.full(ln - 1, members[0]), members[1:]], axis=1))
            out.append(np.stack([members[:-1], members[1:]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def band_keys(sig: np.ndarray, band: int, r: int) -> np.ndarray:
    """64-bit key of band ``band`` (values ``band·r … band·r + r − 1``) of each row: the
    values are taken two at a time as one 64-bit word (low, high) and chained through
    the splitmix64 finaliser, starting from ``(band + 1)·golden``."""
    cols = sig[:, band * r : (band + 1) * r].astype(U64)
    with np.errstate(over="ignore"):
        h = np.full(len(sig), U64(band + 1) * U64(0x9E3779B97F4A7C15), dtype=U64)
        for c in range(0, cols.shape[1], 2):
            x = cols[:, c] | (cols[:, c + 1] << U64(32)) if c + 1 < cols.shape[1] else cols[:, c]
            h = _mix64(h ^ x)
    return h


def lsh_candidates(sig: np.ndarray, b: int, r: int, rows: np.ndarray | None = None,
                   jit: bool | None = None) -> np.ndarray:
    """Unique candidate pairs ``(i, j)`` with ``i < j`` (row indices of ``sig``) sharing a band.

    Compiled with numba when available (``jit=False`` forces the numpy sort path; both
    give the same pairs)."""
    if b * r > sig.shape[1]:
        raise ValueError(f"b·r = {b * r} exceeds the signature length {sig.shape[1]}")
    if rows is not None and len(rows) == len(sig):  # all rows: no copy of the signature matrix
        rows = None
    ids = np.arange(len(sig), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    mod = _jit_module() if jit is not False else None
    if mod is not None:  # same pairs, one hash table per band instead of a sort
        return unique_pairs(mod.band_pairs(np.ascontiguousarray(sig), ids, b, r, 32))
    sub = sig if rows is None else sig[rows]
    parts = [_pairs_from_keys(band_keys(sub, band, r), ids) for band in range(b)]
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    return unique_pairs(pairs)


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy ≥ 2.3 hashes integers for ``np.unique``, which
    misses the cache on every element of a large array; a sort streams through it)."""
    x = np.sort(x)
    if len(x) > 1:
        keep = np.empty(len(x), bool)
        keep[0] = True
        np.not_equal(x[1:], x[:-1], out=keep[1:])
        x = x[keep]
    return x


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Distinct pairs ``(i, j)``, ``i < j``, sorted (self-pairs dropped); ids < 2³²."""
    if not len(pairs):
        return np.zeros((0, 2), np.int64)
    a, c = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    keep = a != c
    key = sorted_unique((a[keep].astype(np.uint64) << np.uint64(32)) | c[keep].astype(np.uint64))
    out = np.empty((len(key), 2), np.int64)
    out[:, 0] = key >> np.uint64(32)
    out[:, 1] = key & MASK32
    return out


TextSource = Union[Sequence[str], Callable[[np.ndarray], Sequence[str]]]


def _texts_of(texts: TextSource, rows: np.ndarray) -> Sequence[str]:
    if callable(texts):
        got = texts(rows)
        if len(got) != len(rows):
            raise ValueError(f"text source returned {len(got)} texts for {len(rows)} rows")
        return got
    return [texts[i] for i in rows.tolist()]


def shingle_hashes(texts: Sequence[str], kind: str = "word", jit: bool | None = None,
                   chunk: int = JIT_CHUNK, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of each text: text ``d`` has ``hashes[offs[d]:offs[d+1]]`` (uint64,
    the shingles its signature is made of, repeats kept; none for a text without words).
    Used to verify LSH candidates by exact Jaccard (:func:`jaccard_sets`).

    Compiled path: the kernel writes every chunk straight into one array (``out`` when it
    is large enough, e.g. the buffer of the previous call; grown when a chunk would not
    fit) and ``hashes`` is a view of it, so no chunk is copied and a reused ``out`` is
    already mapped and in cache (a fresh upper-bound scratch per call, then copies of
    each chunk, cost more than the shingling of 100-word texts)."""
    if kind not in ("word", "char"):
        raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")
    n = len(texts)
    mod = _jit_module() if jit is not False else None
    if mod is None:
        sh = shingle(texts, kind)
        return sh.hashes, np.searchsorted(sh.doc, np.arange(n + 1)).astype(np.int64)
    ng = 3 if kind == "word" else 5
    offs = np.zeros(n + 1, np.int64)
    if out is None:
        out = np.empty(0, U64)
    base = 0
    for i in range(0, n, chunk):
        buf, o = _raw_bytes(texts[i : i + chunk])
        m = len(o) - 1
        if len(out) < base + len(buf) + m + 1:  # the kernel's bound: ≤ one shingle per byte, +1 per text
            bigger = np.empty(max(2 * len(out), base + len(buf) + m + 1, (base + len(buf) + m + 1) * n // (i + m)), U64)
            bigger[:base] = out[:base]
            out = bigger
        pw, _ = _powers(int(np.diff(o).max()) + 2 if m else 2)
        used = mod.shingle_hashes(buf, o, _JIT_TABLE, pw, kind == "char", ng, out[base:], offs[i : i + m + 1])
        offs[i : i + m + 1] += base
        base += used
    return out[:base], offs


def jaccard_sets(hashes: np.ndarray, offs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Jaccard |A∩B| / |A∪B| (float64) of the shingle sets of rows ``a[p]`` and
    ``b[p]`` of :func:`shingle_hashes` (repeats count once; two empty sets: 0)."""
    a = np.ascontiguousarray(a, np.int64)
    b = np.ascontiguousarray(b, np.int64)
    inter = np.zeros(len(a), np.int64)
    union = np.zeros(len(a), np.int64)
    mod = _jit_module()
    if mod is not None and len(a):
        mod.jaccard_pairs(hashes, offs, a, b, inter, union)
    else:
        for p, (i, j) in enumerate(zip(a.tolist(), b.tolist())):
            x, y = np.unique(hashes[offs[i] : offs[i + 1]]), np.unique(hashes[offs[j] : offs[j + 1]])
            inter[p] = len(np.intersect1d(x, y, assume_unique=True))
            union[p] = len(x) + len(y) - inter[p]
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def verify_pairs(cand: np.ndarray, texts: TextSource, kind: str, threshold: float,
                 block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs whose *exact* shingle Jaccard is ≥ ``threshold``, and that Jaccard.

    ``texts``: the texts by row (a sequence indexed by the row numbers in ``cand``, or a
    function rows → texts, e.g. fetching them from the store). Shingle hashes are
    computed only for the rows of ``block`` candidate pairs at a time (≤ 2·block rows,
    ~13 MB at 100-word texts), so memory is bounded by the block, not the corpus, and
    is reused from block to block instead of faulting in fresh pages; a row in pairs of
    two blocks is shingled twice (≈ 10 % more shingling on the benchmark corpus)."""
    cand = np.asarray(cand, np.int64).reshape(-1, 2)
    keep_p, keep_s = [], []
    buf = None  # shingle buffer reused from block to block
    for i in range(0, len(cand), block):
        blk = cand[i : i + block]
        rows = sorted_unique(blk.reshape(-1))
        hs, offs = shingle_hashes(_texts_of(texts, rows), kind, out=buf)
        buf = hs.base if hs.base is not None else hs
        j = jaccard_sets(hs, offs, np.searchsorted(rows, blk[:, 0]), np.searchsorted(rows, blk[:, 1]))
        ok = j >= threshold - 1e-12
        keep_p.append(blk[ok])
        keep_s.append(j[ok].astype(np.float32))
    if not keep_p:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return np.concatenate(keep_p), np.concatenate(keep_s)


def near_pairs(sig: np.ndarray, threshold: float, b: int, r: int, texts: TextSource, kind: str,
               candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate pairs: LSH candidates (or ``candidates``) whose exact shingle
    Jaccard is ≥ ``threshold`` (:func:`verify_pairs`), and that Jaccard."""
    cand = lsh_candidates(sig, b, r, np.flatnonzero(nonempty(sig))) if candidates is None else candidates
    return verify_pairs(cand, texts, kind, threshold)


def exact_pairs(exact: np.ndarray) -> np.ndarray:
    """Pairs (star per group: first to each other) of rows with the same non-zero exact hash."""
    ids = np.flatnonzero(exact != 0)
    keys = exact[ids]
    order = np.argsort(keys, kind="stable")
    ks, idx = keys[order], ids[order]
    new = np.concatenate([[True], ks[1:] != ks[:-1]]) if len(ks) else np.zeros(0, bool)
    group_first = idx[np.flatnonzero(new)][np.cumsum(new) - 1] if len(ks) else idx
    m = ~new
    return np.stack([group_first[m], idx[m]], axis=1).astype(np.int64) if m.any() else np.zeros((0, 2), np.int64)


# --------------------------------------------------------------------------- union-find
class UnionFind:
    """Disjoint sets over ``0..n-1`` (arrays, path halving, union by size)."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return int(x)

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return int(ra)

    def union_pairs(self, pairs: Iterable[tuple[int, int]] | np.ndarray) -> None:
        mod = _jit_module() if isinstance(pairs, np.ndarray) and len(pairs) else None
        if mod is not None:  # the same unions in the same order, compiled
            p = np.ascontiguousarray(pairs, dtype=np.int64).reshape(-1, 2)
            if len(p) and (p.min() < 0 or p.max() >= len(self.parent)):
                raise IndexError(f"pair index out of range for {len(self.parent)} elements")
            mod.union_pairs(self.parent, self.size, p)
            return
        for a, b in (pairs.tolist() if isinstance(pairs, np.ndarray) else pairs):
            self.union(a, b)

    def groups(self, members: Iterable[int] | None = None) -> dict[int, list[int]]:
        """root → sorted members, only for sets of two or more."""
        idx = range(len(self.parent)) if members is None else members
        out: dict[int, list[int]] = {}
        for i in idx:
            out.setdefault(self.find(i), []).append(int(i))
        return {r: sorted(m) for r, m in out.items() if len(m) > 1}


# --------------------------------------------------------------------------- Redis-backed LSH (datasketch)
def datasketch_lsh(b: int, r: int, k: int, storage_config: dict | None = None):
    """A datasketch ``MinHashLSH`` with our (b, r); ``storage_config`` e.g.
    ``{"type": "redis", "basename": b"wb", "redis": {"host": "127.0.0.1", "port": 6379}}``."""
    from datasketch import MinHashLSH

    return MinHashLSH(num_perm=k, params=(b, r), storage_config=storage_config)


def _lean(row: np.ndarray):
    from datasketch import LeanMinHash

    m = LeanMinHash.__new__(LeanMinHash)
    m._initialize_slots(1, row.astype(np.uint64))
    return m


def datasketch_insert(lsh, keys: Sequence[str], sig: np.ndarray) -> None:
    """Insert signature rows under ``keys`` (one session: batched round-trips on Redis)."""
    with lsh.insertion_session(buffer_size=5000) as s:
        for key, row in zip(keys, sig):
            if row[0] != EMPTY:
                s.insert(key, _lean(row), check_duplication=False)


def datasketch_query(lsh, sig: np.ndarray) -> list[list]:
    """For each row, the keys sharing a band with it (itself included)."""
    return [lsh.query(_lean(row)) if row[0] != EMPTY else [] for row in sig]


def redis_storage_config(url: str, basename: str = "workbench-lsh") -> dict:
    """``redis://host:port[/db]`` → datasketch storage_config."""
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("redis", "") or not u.hostname:
        raise ValueError(f"--redis-url must look like redis://HOST:PORT[/DB], got {url!r}")
    cfg: dict = {"host": u.hostname, "port": u.port or 6379}
    if u.path and u.path.strip("/"):
        cfg["db"] = int(u.path.strip("/"))
    if u.password:
        cfg["password"] = u.password
    return {"type": "redis", "basename": basename.encode(), "redis": cfg}
