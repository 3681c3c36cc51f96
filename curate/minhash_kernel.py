"""Compiled (numba) kernels for :mod:`curate.minhash`.

Module-level so numba's on-disk cache (``cache=True``) works across processes.
The arithmetic mirrors the numpy paths in :mod:`curate.minhash` exactly (see its
docstring for the maths); ``tests/test_minhash.py`` checks they agree bit for
bit. Importing this module requires numba.

Why the code looks the way it does (measured on 100-word texts, see
``docs/dedup.md``): the signature kernel reads the raw UTF-8 of a whole batch
once, with the ASCII lower-case/punctuation table applied per byte (no
translated copy of the batch, no separators: documents are given by byte offsets;
each document is translated into a small scratch that stays in L1); word hashes
are computed 8 bytes at a time (:func:`word_hashes`: no branch on the word
length); bins are updated with a branch-free ``min``; densification works on a compacted list of
the empty bins, one pass per step of the borrowing sequence, instead of one
unpredictable branch per bin and step. LSH banding computes all band keys of a row at
once and finds shared keys with cache-sized open-addressing hash tables per band
(8-byte entries, :func:`bucket_pairs`) instead of sorting the band keys.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

P, GOLD = np.uint64(0x100000001B3), np.uint64(0x9E3779B97F4A7C15)
C1, C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
S30, S27, S31, S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
ONE, ZERO, FIVES, M32 = np.uint64(1), np.uint64(0), np.uint64(0x5555), np.uint64(0xFFFFFFFF)
CAP, EMP = np.uint32(0xFFFFFFFE), np.uint32(0xFFFFFFFF)
SPACE = np.uint8(32)
PART = 2048  # LSH bucket partition size (see bucket_pairs)
FREE = np.uint64(0xFFFFFFFFFFFFFFFF)  # free slot of a bucket_pairs table (positions < 2^31: never an entry)
SP8, LO8, HI8 = np.uint64(0x2020202020202020), np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)
FF = np.uint64(0xFF)
PAD = 16  # spaces after a document in the translated scratch (8-byte loads never leave it)


@intrinsic
def load_u64(typingctx, arr, idx):
    """The 8 bytes ``arr[idx:idx+8]`` of a uint8 array as one little-endian uint64 (one unaligned load)."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)
    return types.uint64(arr, idx), codegen


@numba.njit(inline="always")
def mix(x):
    x = x ^ (x >> S30)
    x = x * C1
    x = x ^ (x >> S27)
    x = x * C2
    return x ^ (x >> S31)


@numba.njit(inline="always")
def put(row, h, seedmix, shift):
    v = mix(h ^ seedmix)
    b = np.int64(v >> shift)
    row[b] = min(row[b], min(np.uint32(v & M32), CAP))


@numba.njit(inline="always")
def word_hashes(buf, s, e, table, pw_tab, tb, pw8, spw, wh):
    """Word hashes of document ``buf[s:e]`` into ``wh[:count]``; returns count. A word is a
    run of bytes whose normal form (``table``) is not a space; its hash is
    ``mix(Σ (c_i+1)·P^i)`` over its normalised bytes ``c_i``. The document is first
    translated into ``tb`` (followed by ``PAD`` spaces); each word is then read 8 bytes at
    a time: its length is the first space byte of an unaligned 8-byte load (SWAR zero-byte
    test on ``x ^ 0x20…20``, exact for the lowest byte), and ``Σ c_i·P^i`` over the masked
    load is 8 independent multiplies by ``pw8[k] = P^k``, plus ``spw[len] = Σ_{i<len} P^i``. No branch depends on the
    word length (words ≥ 8 bytes continue byte by byte), unlike a per-byte loop that
    mispredicts at almost every word end. Same sums as the per-byte loop, bit for bit."""
    ln = e - s
    for i in range(ln):
        tb[i] = table[buf[s + i]]
    for i in range(ln, ln + PAD):
        tb[i] = SPACE
    nw = 0
    i = 0
    while True:
        while i < ln and tb[i] == SPACE:
            i += 1
        if i >= ln:
            break
        x = load_u64(tb, i)
        y = x ^ SP8
        t = (y - LO8) & ~y & HI8
        if t != ZERO:
            wl = np.int64(trailing_zeros(t)) >> 3
            x &= (ONE << np.uint64(8 * wl)) - ONE
        else:
            wl = 8
        # Σ_{k<wl} (c_k + 1)·P^k = Σ_k c_k·P^k (bytes ≥ wl are 0) + Σ_{k<wl} P^k
        h = spw[wl]
        for k in range(8):
            h += ((x >> np.uint64(8 * k)) & FF) * pw8[k]
        i += wl
        if wl == 8:  # long word: the rest byte by byte (the scratch ends in spaces)
            while tb[i] != SPACE:
                h += (np.uint64(tb[i]) + ONE) * pw_tab[wl]
                wl += 1
                i += 1
        wh[nw] = mix(h)
        nw += 1
    return nw


@numba.njit(inline="always")
def doc_shingles(buf, s, e, table, pw_tab, char_mode, n, wh, nb, out, tb, pw8, spw):
    """Shingle hashes of document ``buf[s:e]`` into ``out[:count]`` (in text order, may
    repeat); returns ``(count, exact hash)``. ``wh``/``nb``/``out``: scratch of at least
    ``e - s + 2`` entries, ``tb`` of ``e - s + PAD``, ``pw8``/``spw`` from :func:`_pow8`; ``pw_tab[i] = P^i`` for ``i ≤ e - s``.
    Shared by :func:`kernel` (signatures) and :func:`shingle_hashes` (exact
    verification), so both see the same shingles."""
    # words (runs of non-space bytes): polynomial hash Σ (b_i+1)·P^(i-start), then mix;
    # in char mode also the normal form with single spaces between words (nb[:dl])
    nw = 0
    dl = 0
    if not char_mode:
        nw = word_hashes(buf, s, e, table, pw_tab, tb, pw8, spw, wh)
    else:
        i = s
        while i < e:
            c = table[buf[i]]
            if c == SPACE:
                i += 1
                continue
            if dl > 0:
                nb[dl] = SPACE
                dl += 1
            h = ZERO
            ws = i
            while i < e:
                c = table[buf[i]]
                if c == SPACE:
                    break
                nb[dl] = c
                dl += 1
                h += (np.uint64(c) + ONE) * pw_tab[i - ws]
                i += 1
            wh[nw] = mix(h)
            nw += 1
    if nw == 0:
        return 0, ZERO
    ex = ZERO
    for j in range(nw):  # Σ wh_j·P^j, P^j from the table (no serial multiply chain)
        ex += wh[j] * pw_tab[j]
    ex = mix(ex + np.uint64(nw))
    cnt = 0
    if not char_mode:
        if nw >= n:
            if n == 3:  # ((w0·G + w1)·G + w2) = w0·G² + w1·G + w2: independent multiplies
                g2 = GOLD * GOLD
                for j in range(nw - 2):
                    out[j] = wh[j] * g2 + wh[j + 1] * GOLD + wh[j + 2]
                cnt = nw - 2
            else:
                for j in range(nw - n + 1):
                    h = ZERO
                    for t in range(n):
                        h = h * GOLD + wh[j + t]
                    out[cnt] = h
                    cnt += 1
        else:
            out[0] = mix(ex ^ FIVES)
            cnt = 1
    else:
        if dl >= n:
            for s0 in range(dl - n + 1):
                h = ZERO
                pw = ONE
                for t in range(n):
                    h += (np.uint64(nb[s0 + t]) + ONE) * pw
                    pw *= P
                out[cnt] = h
                cnt += 1
        else:
            out[0] = mix(ex ^ FIVES)
            cnt = 1
    return cnt, ex


@numba.njit(inline="always")
def doc_signature(sh, cnt, row, orig, idx, seq_t, seedmix, shift, k, kd):
    """OPH signature of the shingle hashes ``sh[:cnt]`` into ``row`` (pre-filled with EMP):
    minimum per bin, then optimal densification of bins ``< kd`` (``kd = k``: all; the
    band-key kernel needs only the first ``b·r``, and a densified bin depends only on
    the bins before densification, so the others are not needed)."""
    for j in range(cnt):
        put(row, sh[j], seedmix, shift)
    # optimal densification: empty bin c takes orig[seq[c, t]] for the first t where
    # that bin is non-empty; the still-empty bins are kept compacted in idx[:m]
    m = 0
    for c in range(k):
        orig[c] = row[c]
    for c in range(kd):
        idx[m] = c
        m += orig[c] == EMP
    t = 0
    steps = seq_t.shape[0]
    while m > 0 and t < steps:
        st = seq_t[t]
        m2 = 0
        for j in range(m):
            c = idx[j]
            v = orig[st[c]]
            row[c] = v
            idx[m2] = c
            m2 += v == EMP
        m = m2
        t += 1
    for j in range(m):  # astronomically rare: first non-empty bin to the right
        c = idx[j]
        for off in range(1, k):
            v = orig[(c + off) % k]
            if v != EMP:
                row[c] = v
                break


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _pow8():
    """``P^k`` for k < 8 and ``Σ_{i<k} P^i`` for k ≤ 8 (the 8-byte word hash of :func:`word_hashes`)."""
    pw8 = np.empty(8, np.uint64)
    spw = np.empty(9, np.uint64)
    p = ONE
    spw[0] = ZERO
    for q in range(8):
        pw8[q] = p
        spw[q + 1] = spw[q] + p
        p *= P
    return pw8, spw


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _scratch(offs, k):
    """Per-call scratch of the kernels: word hashes, word lengths and shingle hashes sized for the
    longest document of ``offs``, and the k-entry buffers of :func:`doc_signature`."""
    longest = 0
    for d in range(offs.shape[0] - 1):
        longest = max(longest, offs[d + 1] - offs[d])
    return (np.empty(longest + 2, np.uint64), np.empty(longest + 2, np.uint8), np.empty(longest + 2, np.uint64),
            np.empty(k, np.uint32), np.empty(k, np.int64), np.empty(longest + PAD, np.uint8))


@numba.njit(cache=True, nogil=True, boundscheck=False)
def kernel(buf, offs, table, pw_tab, char_mode, n, k, shift, seedmix, seq_t, sig, exact):
    """Signatures (rows of ``sig``, pre-filled with EMP) and exact hashes of documents
    ``buf[offs[d]:offs[d+1]]``. ``buf``: UTF-8; texts with non-ASCII characters must
    already be normalised. ``table`` maps each byte to its normal form (ASCII lower
    case, other ASCII non-alphanumerics → space, bytes ≥ 128 unchanged).
    ``pw_tab[i] = P^i`` for i up to the longest document (no multiply chain per byte).
    ``seq_t[t, c]``: the bin that empty bin ``c`` borrows from at step ``t``."""
    n_docs = offs.shape[0] - 1
    wh, nb, sh, orig, idx, tb = _scratch(offs, k)
    pw8, spw = _pow8()
    for d in range(n_docs):
        cnt, ex = doc_shingles(buf, offs[d], offs[d + 1], table, pw_tab, char_mode, n, wh, nb, sh, tb, pw8, spw)
        exact[d] = ex
        if cnt == 0:
            continue
        doc_signature(sh, cnt, sig[d], orig, idx, seq_t, seedmix, shift, k, k)


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _row_band_keys(row, b, r, hb):
    """The ``b`` band keys of one signature row into ``hb``: all bands at once, b independent chains
    (the key of :func:`curate.minhash.band_keys`)."""
    for band in range(b):
        hb[band] = np.uint64(band + 1) * GOLD
    for c in range(0, r, 2):  # two values per 64-bit word (see curate.minhash.band_keys)
        for band in range(b):
            x = np.uint64(row[band * r + c])
            if c + 1 < r:
                x |= np.uint64(row[band * r + c + 1]) << S32
            hb[band] = mix(hb[band] ^ x)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def keys_kernel(buf, offs, table, pw_tab, char_mode, n, k, shift, seedmix, seq_t, b, r, keys, exact):
    """Like :func:`kernel`, but each signature lives only in a k-entry scratch row and
    what is written is its ``b`` LSH band keys (``keys[band, d]``, the key of
    :func:`band_keys`; left untouched for empty documents, whose exact hash is 0): the
    (n, k) signature matrix is never materialised (b·8 bytes a record instead of k·4)."""
    n_docs = offs.shape[0] - 1
    wh, nb, sh, orig, idx, tb = _scratch(offs, k)
    pw8, spw = _pow8()
    row = np.empty(k, np.uint32)
    hb = np.empty(b, np.uint64)
    for d in range(n_docs):
        cnt, ex = doc_shingles(buf, offs[d], offs[d + 1], table, pw_tab, char_mode, n, wh, nb, sh, tb, pw8, spw)
        exact[d] = ex
        if cnt == 0:
            continue
        row[:] = EMP
        doc_signature(sh, cnt, row, orig, idx, seq_t, seedmix, shift, k, b * r)
        _row_band_keys(row, b, r, hb)
        for band in range(b):
            keys[band, d] = hb[band]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def band_keys(sig, rows, b, r):
    """``(b, len(rows))`` band keys of ``sig[rows]`` (the key of
    :func:`curate.minhash.band_keys`): all bands of a row at once, b independent chains."""
    n = rows.shape[0]
    keys = np.empty((b, n), np.uint64)
    hb = np.empty(b, np.uint64)
    for i in range(n):
        row = sig[rows[i]]
        _row_band_keys(row, b, r, hb)
        for band in range(b):
            keys[band, i] = hb[band]
    return keys


@numba.njit(cache=True, nogil=True, boundscheck=False)
def band_pairs(sig, rows, b, r, full_upto):
    """Candidate pairs (row ids, unsorted, may repeat) of ``sig[rows]`` sharing a band key."""
    return bucket_pairs(band_keys(sig, rows, b, r), np.arange(rows.shape[0]), rows, full_upto)


# long: one numba-compiled kernel: calls out of the jitted loop would cost its speed (bench/results/dedup_quiet.json)
@numba.njit(cache=True, nogil=True, boundscheck=False)
def bucket_pairs(keys, cols, rows, full_upto):
    """Candidate pairs (ids from ``rows``, unsorted, may repeat) of positions sharing a key
    in some band (position ``i`` has key ``keys[band, cols[i]]`` and id ``rows[i]``).
    Per band, members of a bucket are in the order of ``rows``; buckets of ≤ ``full_upto`` members give all pairs, larger ones a
    star (first member to each other) plus a chain (consecutive members).

    Per band, cache-sized work: positions are first scattered (stably) into ``2^p``
    partitions by the top ``p`` bits of their key, ≈ ``PART`` positions each, as one
    8-byte entry ``(low 32 bits of the key) << 32 | position``; one partition's
    open-addressing table of those entries (4 slots per entry: 64 KB, in L2, and a short
    probe, so the occupied-slot branch is rarely taken) is built per partition; a single
    table over a million keys would miss the cache on every probe. When the 32-bit part
    matches, the full keys are compared (``keys[band]``); a position whose key is already
    in the table is recorded as ``(first position, position)`` and only those few
    records are grouped (stable sort) into buckets."""
    b = keys.shape[0]
    n = cols.shape[0]
    # all columns in order (the usual case): read keys[band] directly, not through cols
    ident = n == keys.shape[1] and (n == 0 or (cols[0] == 0 and cols[n - 1] == n - 1))
    pbits = 0
    while (n >> pbits) > PART:
        pbits += 1
    n_part = 1 << pbits
    pshift = np.uint64(64 - pbits) if pbits > 0 else np.uint64(0)
    start = np.empty(n_part + 1, np.int64)
    cur = np.empty(n_part, np.int64)
    pe = np.empty(n, np.uint64)  # (low 32 bits of the key) << 32 | position (< 2^31 records per call)
    table = np.empty(16, np.uint64)
    dup_first = np.empty(n, np.int64)
    dup_pos = np.empty(n, np.int64)
    members = np.empty(n, np.int64)
    out = np.empty((max(n, 16), 2), np.int64)
    n_out = 0
    for band in range(b):
        kb = keys[band]
        if pbits > 0:
            start[:] = 0
            for i in range(n):
                start[np.int64((kb[i] if ident else kb[cols[i]]) >> pshift) + 1] += 1
            for q in range(n_part):
                start[q + 1] += start[q]
                cur[q] = start[q]
            for i in range(n):
                h = kb[i] if ident else kb[cols[i]]
                q = np.int64(h >> pshift)
                j = cur[q]
                pe[j] = (h << S32) | np.uint64(i)
                cur[q] = j + 1
        else:
            start[0] = 0
            start[1] = n
            for i in range(n):
                pe[i] = ((kb[i] if ident else kb[cols[i]]) << S32) | np.uint64(i)
        nd = 0
        for q in range(n_part):
            lo = start[q]
            hi = start[q + 1]
            if hi - lo < 2:
                continue
            cap = 16
            while cap < 4 * (hi - lo):
                cap *= 2
            if cap > table.shape[0]:
                table = np.empty(cap, np.uint64)
            mask = cap - 1
            table[:cap] = FREE
            for j in range(lo, hi):
                e = pe[j]
                fp = e >> S32
                s = np.int64(fp & np.uint64(mask))
                while True:
                    occ = table[s]
                    if occ == FREE:
                        table[s] = e
                        break
                    if (occ >> S32) == fp:
                        p0 = np.int64(occ & M32)
                        p1 = np.int64(e & M32)
                        if (kb[p0] == kb[p1]) if ident else (kb[cols[p0]] == kb[cols[p1]]):
                            dup_first[nd] = p0
                            dup_pos[nd] = p1
                            nd += 1
                            break
                    s = (s + 1) & mask
        if nd == 0:
            continue
        order = np.argsort(dup_first[:nd], kind="mergesort")  # stable: positions stay in order
        g = 0
        while g < nd:
            first = dup_first[order[g]]
            members[0] = rows[first]
            ln = 1
            while g < nd and dup_first[order[g]] == first:
                members[ln] = rows[dup_pos[order[g]]]
                ln += 1
                g += 1
            need = ln * (ln - 1) // 2 if ln <= full_upto else 2 * (ln - 1)
            if n_out + need > out.shape[0]:
                bigger = np.empty((max(2 * out.shape[0], n_out + need), 2), np.int64)
                bigger[:n_out] = out[:n_out]
                out = bigger
            if ln <= full_upto:
                for a in range(ln):
                    for c in range(a + 1, ln):
                        out[n_out, 0] = members[a]
                        out[n_out, 1] = members[c]
                        n_out += 1
            else:
                for c in range(1, ln):
                    out[n_out, 0] = members[0]
                    out[n_out, 1] = members[c]
                    n_out += 1
                for c in range(1, ln):
                    out[n_out, 0] = members[c - 1]
                    out[n_out, 1] = members[c]
                    n_out += 1
    return out[:n_out]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def shingle_hashes(buf, offs, table, pw_tab, char_mode, n, out, out_offs):
    """Shingle hashes of each document ``buf[offs[d]:offs[d+1]]`` (the shingles
    :func:`kernel` bins, in text order, repeats kept) into ``out[out_offs[d]:out_offs[d+1]]``;
    ``out`` must hold ``len(buf) + n_docs`` entries. Returns the number of entries used."""
    n_docs = offs.shape[0] - 1
    longest = 0
    for d in range(n_docs):
        longest = max(longest, offs[d + 1] - offs[d])
    wh = np.empty(longest + 2, np.uint64)
    nb = np.empty(longest + 2, np.uint8)
    tb = np.empty(longest + PAD, np.uint8)
    pw8, spw = _pow8()
    pos = 0
    out_offs[0] = 0
    for d in range(n_docs):
        cnt, ex = doc_shingles(buf, offs[d], offs[d + 1], table, pw_tab, char_mode, n, wh, nb, out[pos:], tb, pw8, spw)
        pos += cnt
        out_offs[d + 1] = pos
    return pos


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _slot(key, stamp, g, x, sh, mask):
    """Slot of ``x`` in the open-addressing table of pair ``g``; inserts it when absent.
    Returns (slot, True when it was absent)."""
    s = np.int64((x * GOLD) >> sh)
    while True:
        if stamp[s] != g:
            stamp[s] = g
            key[s] = x
            return s, True
        if key[s] == x:
            return s, False
        s = (s + 1) & mask


@numba.njit(cache=True, nogil=True, boundscheck=False)
def jaccard_pairs(hs, offs, a, b, inter, union):
    """|A∩B| and |A∪B| of the shingle sets ``A = set(hs[offs[a[p]]:offs[a[p]+1]])`` and
    ``B`` (same for ``b[p]``) of each pair: A goes into a small open-addressing table
    (slots stamped with the pair number, so it is never cleared), then B is looked up;
    repeats inside a document count once. No sorting; the table stays in L1/L2."""
    m = a.shape[0]
    longest = 0
    for p in range(m):
        longest = max(longest, offs[a[p] + 1] - offs[a[p]] + offs[b[p] + 1] - offs[b[p]])
    bits = 4
    while (1 << bits) < 2 * longest:
        bits += 1
    cap = 1 << bits
    mask = cap - 1
    sh = np.uint64(64 - bits)
    key = np.empty(cap, np.uint64)
    stamp = np.zeros(cap, np.int64)
    side = np.empty(cap, np.uint8)
    for p in range(m):
        g = p + 1
        da = 0
        for i in range(offs[a[p]], offs[a[p] + 1]):
            slot, new = _slot(key, stamp, g, hs[i], sh, mask)
            if new:
                side[slot] = 1
                da += 1
        c = 0
        db = 0
        for j in range(offs[b[p]], offs[b[p] + 1]):
            slot, new = _slot(key, stamp, g, hs[j], sh, mask)
            if new:
                side[slot] = 2
                db += 1
            elif side[slot] == 1:
                side[slot] = 3
                c += 1
        inter[p] = c
        union[p] = da + db


@numba.njit(cache=True, nogil=True, boundscheck=False)
def union_pairs(parent, size, pairs):
    """:meth:`curate.minhash.UnionFind.union` over each pair, in order (same roots)."""
    for p in range(pairs.shape[0]):
        a = pairs[p, 0]
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        c = pairs[p, 1]
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        if a == c:
            continue
        if size[a] < size[c]:
            a, c = c, a
        parent[c] = a
        size[a] += size[c]
