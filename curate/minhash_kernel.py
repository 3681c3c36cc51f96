"""Compiled (numba) kernel for :func:`curate.minhash.signatures_of`.

Module-level so numba's on-disk cache (``cache=True``) works across processes.
The arithmetic mirrors the numpy path in :mod:`curate.minhash` exactly; see its
docstring for the maths. Importing this module requires numba.
"""
from __future__ import annotations

import numba
import numpy as np

P, GOLD = np.uint64(0x100000001B3), np.uint64(0x9E3779B97F4A7C15)
C1, C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
S30, S27, S31 = np.uint64(30), np.uint64(27), np.uint64(31)
ONE, ZERO, FIVES, M32 = np.uint64(1), np.uint64(0), np.uint64(0x5555), np.uint64(0xFFFFFFFF)
CAP, EMP = np.uint32(0xFFFFFFFE), np.uint32(0xFFFFFFFF)

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
    val = np.uint32(v & M32)
    if val > CAP:
        val = CAP
    if val < row[b]:
        row[b] = val

@numba.njit(cache=True, nogil=True)
def kernel(buf, n_docs, char_mode, n, k, shift, seedmix, seq, sig, exact):
    # buf: translated bytes (lower-case ASCII letters/digits, other ASCII → space,
    # non-ASCII texts pre-normalised), documents separated by NUL; spaces are
    # collapsed and trimmed here, per document, into nb.
    L = buf.shape[0]
    wh = np.empty(L + 1, np.uint64)
    nb = np.empty(L + 1, np.uint8)
    orig = np.empty(k, np.uint32)
    pos = 0
    for d in range(n_docs):
        dl = 0
        e = pos
        while e < L and buf[e] != 0:
            c = buf[e]
            if c != 32 or (dl > 0 and nb[dl - 1] != 32):
                nb[dl] = c
                dl += 1
            e += 1
        if dl > 0 and nb[dl - 1] == 32:
            dl -= 1
        nw = 0
        i = 0
        while i < dl:
            if nb[i] == 32:
                i += 1
                continue
            h = ZERO
            pw = ONE
            while i < dl and nb[i] != 32:
                h += (np.uint64(nb[i]) + ONE) * pw
                pw *= P
                i += 1
            wh[nw] = mix(h)
            nw += 1
        ex = ZERO
        pp = ONE
        for j in range(nw):
            ex += wh[j] * pp
            pp *= P
        if nw > 0:
            ex = mix(ex + np.uint64(nw))
        exact[d] = ex
        row = sig[d]
        if not char_mode:
            if nw >= n:
                for j in range(nw - n + 1):
                    h = ZERO
                    for t in range(n):
                        h = h * GOLD + wh[j + t]
                    put(row, h, seedmix, shift)
            elif nw > 0:
                put(row, mix(ex ^ FIVES), seedmix, shift)
        else:
            if dl >= n:
                for s0 in range(dl - n + 1):
                    h = ZERO
                    pw = ONE
                    for t in range(n):
                        h += (np.uint64(nb[s0 + t]) + ONE) * pw
                        pw *= P
                    put(row, h, seedmix, shift)
            elif dl > 0:
                put(row, mix(ex ^ FIVES), seedmix, shift)
        n_empty = 0
        for c in range(k):
            orig[c] = row[c]
            if row[c] == EMP:
                n_empty += 1
        if 0 < n_empty < k:
            for c in range(k):
                if orig[c] != EMP:
                    continue
                done = False
                for t in range(seq.shape[1]):
                    v = orig[seq[c, t]]
                    if v != EMP:
                        row[c] = v
                        done = True
                        break
                if not done:
                    for off in range(1, k):
                        v = orig[(c + off) % k]
                        if v != EMP:
                            row[c] = v
                            break
        pos = e + 1

