"""Near-duplicates of short texts (queries, prompts: up to 32 words) under small edits.

Character or word n-gram Jaccard is the wrong yardstick for a 5–20 word query: one
typo in a 7-word query removes 5 of its ~35 char 5-grams, two swapped words ~8, while a
same-intent query that differs by one *content* word ("… top up my account with a
cheque?" ~ "… with a card?") keeps 80 %. At Jaccard 0.8 the edits are missed and the
different requests are found. This module decides instead by an **edit model over words**
(docs/dedup.md, "Short texts"; measured by bench/leakage_short.py).

Words (:func:`tokens`): :func:`curate.minhash.normalize` (NFKC, lower case, every run of
non-letters/digits → one space) after joining words split by an apostrophe or a hyphen
("didn't" → "didnt", "top-up" → "topup": one word, so swapping or dropping it is one
edit, as a person sees it). A contraction equals its two words ("didnt" = "did not",
"cant" = "cannot" = "can not", "im" = "i am": :func:`contraction`).

Cost (:func:`edit_costs`): the cheapest alignment of the two word sequences (a
Damerau-style dynamic programme over words), in points:

    ==========================================================================  ======
    equal words (case, punctuation, contractions already equal)                     0
    a misspelt word: OSA distance 1, both words ≥ 3 letters ("fnid" ~ "find")       2
    a misspelt word: OSA distance 2, both ≥ 4 letters, one ≥ 5, one of them in
    ≤ RARE_DF texts of the run (two letters off between two common words is
    another word: "blocked" ~ "unlocked")                                           4
    two adjacent blocks of 1–2 words swapped ("know your" ~ "your know")            2
    two words written as one ("top up" ~ "topup"; + 2 with one letter off)          2
    a function word (STOPWORDS, incl. fillers) inserted or dropped                  2
    any other word inserted or dropped                                              3
    both texts keep a non-filler word the other lacks (a word replaced by
    another, or a rewrite), once                                                  + 2
    ==========================================================================  ======

Negations ("not", "no", "never", "isnt" …) are content words. A filler (FILLERS:
"please", "just", "again" …) next to a dropped word does not count as a replacement.

Rule: a pair is a near-duplicate iff its cost is ≤ the budget (:func:`budgets`) of the
word count ``n`` of the longer text: 5 points for 4 ≤ n ≤ 32 (two small edits, or one
dropped content word and one small edit), 4 for n = 3, 2 for n = 2, 0 for one word
(exact copies only, left to the exact detector). So "cheque" → "card" (3 + 3 + 2 = 8)
never passes, nor does "which" → "what" (2 + 2 + 2 = 6), while a typo, a swap, a filler,
a dropped word, or any two of them (≤ 5) do. The score is ``1 − cost / (2·n)`` (one
typo in 10 words: 0.9). ``curate dedup`` / ``curate leakage`` use this rule for pairs
whose longer text has ≤ 20 words (``--edit-words``) and add its pairs of up to 32 words
to the MinHash/Jaccard ones; above that only MinHash/Jaccard decides (curate/dedup.py).

Candidates (:func:`candidate_blocks`), exact, not probabilistic: each text's distinct
words (a contraction as its two words) ranked by document frequency over all texts of
the run (ties: a fixed hash of the word); every pair of its KEY_WORDS = 5 rarest words
is a key (a text of ≤ 4 distinct words also keys on each word). Every change above
costs ≥ 2 points, so a pair within budget 5 has at most 2 words of one text missing from
the other (3 with a merge, which replaces two words for 2 points, or a dropped
contraction, two words for 3); then the two rarest
words of A that B keeps are among A's 5 rarest and, since at most 3 words of B are not in
A, among B's 5 rarest too: the pair shares a key. Rare words make small buckets; texts
with the same words in the same order are verified once (:func:`near_pairs`).
"""
from __future__ import annotations

import os
import re
import unicodedata
from array import array
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from . import minhash as mh

BUDGET = 5  #: points allowed for texts of 4..INDEX_MAX_WORDS words: two small edits, or one dropped content word and one small edit
SHORT_MAX_WORDS = 20  #: pairs whose longer text has at most this many words are decided by the edit rule alone
INDEX_MAX_WORDS = 32  #: texts of more words are left to MinHash/Jaccard (not indexed, not tokenised)

STOPWORDS = frozenset("""
a an the i me my mine myself we us our ours you your yours he him his she her it its they them their theirs
this that these those is am are was were be been being do does did doing done have has had having get got
can could will would shall should may might must to of in on at by for with from into onto about as than then
so and or but if up out off over under again what which who whom whose when where why how there here
all any both each few more most other some such only own same too very just also now please kindly really
actually basically um uh hey hi hello ok okay well still yet even s t d ll m re ve yes
im ive id ill youre youve youd theyre weve pls anyway
""".split())  # negations (not, no, never, isnt, cant …) are content words: dropping one changes the request
#: words people add without meaning: inserted next to a dropped word they do not make a substitution
FILLERS = frozenset("please pls kindly just again actually really basically so also now um uh hey hi hello well ok okay "
                    "anyway".split())

# apostrophes and hyphens inside a word join it ("didn't" → "didnt", "top-up" → "topup"): one word,
# as a person sees it, so swapping or dropping it is one edit ("top up" ~ "topup" is a merge)
_JOIN = re.compile(r"(?<=[^\W_])['\u2019\u02bc`´\-\u2010\u2011](?=[^\W_])")


_NOT = frozenset("do does did is are was were has have had could would should must need might ca wo sha ai".split())
_PRON = {"im": ("i", "am"), "ive": ("i", "have"), "youre": ("you", "are"), "youve": ("you", "have"),
         "theyre": ("they", "are"), "theyve": ("they", "have"), "weve": ("we", "have"), "youll": ("you", "will"),
         "theyll": ("they", "will"), "itll": ("it", "will"), "whats": ("what", "is"), "thats": ("that", "is"),
         "theres": ("there", "is"), "wheres": ("where", "is"), "hows": ("how", "is"), "whos": ("who", "is")}


def contraction(w: str) -> tuple[str, str] | None:
    """The two words a contraction stands for ("didnt" → did not, "cant" → can not, "im" → i am), else None."""
    if w in _PRON:
        return _PRON[w]
    if w == "cannot":
        return "can", "not"
    if len(w) > 3 and w.endswith("nt") and w[:-2] in _NOT:
        return {"ca": "can", "wo": "will", "sha": "shall", "ai": "am"}.get(w[:-2], w[:-2]), "not"
    return None


def tokens(text: str) -> list[str]:
    """Words of ``text`` as the edit rule sees them (see the module docstring)."""
    return mh.normalize(_JOIN.sub("", unicodedata.normalize("NFKC", text))).split()


# --------------------------------------------------------------------------- encoding
@dataclass
class Encoded:
    """Texts as token ids: text ``t`` is ``tok[off[t]:off[t+1]]`` (empty for a text of more
    than ``INDEX_MAX_WORDS`` words, which this rule leaves to MinHash) and has ``nwords[t]``
    words (for a long text: a lower bound > INDEX_MAX_WORDS); word ``w`` has the code points
    ``chars[coff[w]:coff[w+1]]``, ``stop[w]``, ``fill[w]`` and document frequency ``df[w]``."""

    tok: np.ndarray  # int32
    off: np.ndarray  # int64, n + 1
    nwords: np.ndarray  # int64, n
    chars: np.ndarray  # int32 code points
    coff: np.ndarray  # int64, vocab + 1
    stop: np.ndarray  # bool, vocab
    fill: np.ndarray  # bool, vocab (FILLERS)
    df: np.ndarray  # int64, vocab
    exp1: np.ndarray  # int64, vocab: a contraction's two words ("didnt" → "did", "not"), else -1
    exp2: np.ndarray
    excomp: np.ndarray  # bool, vocab: a contraction or one of a contraction's words

    def __len__(self) -> int:
        return len(self.nwords)


class Encoder:
    """Token ids of texts added batch by batch (one vocabulary for all of them, so the
    texts of several corpora — train, held-out, eval files — can be compared)."""

    def __init__(self, max_words: int = INDEX_MAX_WORDS):
        self.max_words = max_words
        self.vocab: dict[str, int] = {}
        self.ids = array("i")
        self.off = array("q", [0])
        self.nwords = array("q")

    def add(self, texts: Sequence[str]) -> None:
        vocab, ids, lim = self.vocab, self.ids, self.max_words
        for t in texts:
            q = len(t.split())  # cheap first look: a text of many more words is long whatever its punctuation
            toks = tokens(t) if q <= lim + 16 else None
            if toks is None or len(toks) > lim:
                self.nwords.append(max(q, lim + 1) if toks is None else len(toks))
            else:
                for w in toks:
                    j = vocab.get(w)
                    if j is None:
                        j = vocab[w] = len(vocab)
                    ids.append(j)
                self.nwords.append(len(toks))
            self.off.append(len(ids))

    def finish(self) -> Encoded:
        vocab = dict(self.vocab)  # + the words of contractions (in no text: document frequency 0)
        pairs = {w: contraction(w) for w in vocab}
        for w, e in pairs.items():
            for x in e or ():
                if x not in vocab:
                    vocab[x] = len(vocab)
        words = list(vocab)
        lens = np.fromiter((len(w) for w in words), np.int64, len(words))
        coff = np.zeros(len(words) + 1, np.int64)
        np.cumsum(lens, out=coff[1:])
        chars = np.frombuffer("".join(words).encode("utf-32-le"), np.int32).copy() if words else np.zeros(0, np.int32)
        stop = np.fromiter((w in STOPWORDS for w in words), bool, len(words))
        fill = np.fromiter((w in FILLERS for w in words), bool, len(words))
        tok = np.frombuffer(self.ids, np.int32).copy() if len(self.ids) else np.zeros(0, np.int32)
        off = np.frombuffer(self.off, np.int64).copy()
        nwords = np.frombuffer(self.nwords, np.int64).copy() if len(self.nwords) else np.zeros(0, np.int64)
        exp1 = np.full(len(words), -1, np.int64)
        exp2 = np.full(len(words), -1, np.int64)
        excomp = np.zeros(len(words), bool)
        for w, e in pairs.items():
            if e:
                exp1[vocab[w]], exp2[vocab[w]] = vocab[e[0]], vocab[e[1]]
                excomp[[vocab[w], vocab[e[0]], vocab[e[1]]]] = True
        df = np.zeros(len(words), np.int64)
        if len(tok):  # each word once per text
            doc = np.repeat(np.arange(len(nwords), dtype=np.int64), np.diff(off))
            key = mh.sorted_unique(doc.astype(np.uint64) << np.uint64(32) | tok.astype(np.uint64))
            df = np.bincount((key & mh.MASK32).astype(np.int64), minlength=len(words)).astype(np.int64)
        return Encoded(tok, off, nwords, chars, coff, stop, fill, df, exp1, exp2, excomp)


def encode(texts: Sequence[str], max_words: int = INDEX_MAX_WORDS) -> Encoded:
    e = Encoder(max_words)
    e.add(texts)
    return e.finish()


# --------------------------------------------------------------------------- kernels (numba when available)
BIG = 1 << 20
RARE_DF = 2  #: a word in at most this many texts of the run may be a misspelling two letters off
SINGLE_KEYS_UPTO = 4  #: texts of at most this many distinct words key on each word too (module docstring)
# costs in points (module docstring)
C_TYPO = 2  #: a misspelt word: OSA distance 1 (both words ≥ 3 letters); distance 2 (see _sub) costs 2·C_TYPO
C_SWAP = 2  #: two adjacent blocks of 1–2 words swapped
C_MERGE = 2  #: two words written as one ("top up" ~ "topup")
C_STOP = 2  #: a function word (STOPWORDS) inserted or dropped
C_CONTENT = 3  #: any other word inserted or dropped
TWO_SIDED = 2  #: both texts have a non-filler word the other lacks (a word replaced, or a rewrite): + this, once
COSTS = {"misspelt_word": C_TYPO, "swap": C_SWAP, "merge_split": C_MERGE, "function_word": C_STOP,
         "content_word": C_CONTENT, "two_sided_change": TWO_SIDED}
MAX_WORD = 24  #: longer words are compared for equality only


def _osa(chars, coff, x, y, cap, scr):
    """Optimal-string-alignment distance of words x and y, or cap + 1 when it exceeds cap
    (``scr``: a (3, MAX_WORD + 1) int64 scratch of rolling rows)."""
    a0, b0 = coff[x], coff[y]
    la, lb = coff[x + 1] - a0, coff[y + 1] - b0
    if abs(la - lb) > cap or la > MAX_WORD or lb > MAX_WORD:
        return cap + 1
    for j in range(lb + 1):
        scr[0, j] = j
    for i in range(1, la + 1):
        cur, prv, pp = i % 3, (i - 1) % 3, (i - 2) % 3
        scr[cur, 0] = i
        rmin = i
        ca = chars[a0 + i - 1]
        for j in range(1, lb + 1):
            cb = chars[b0 + j - 1]
            v = scr[prv, j - 1] + (0 if ca == cb else 1)
            v = min(v, scr[prv, j] + 1, scr[cur, j - 1] + 1)
            if i > 1 and j > 1 and ca == chars[b0 + j - 2] and chars[a0 + i - 2] == cb:
                v = min(v, scr[pp, j - 2] + 1)
            scr[cur, j] = v
            rmin = min(rmin, v)
        if rmin > cap:
            return cap + 1
    return min(scr[la % 3, lb], cap + 1)


def _osa_le1(chars, coff, x, y):
    """OSA distance of different words x, y if it is 1, else 2 (linear scan, no table)."""
    a0, b0 = coff[x], coff[y]
    la, lb = coff[x + 1] - a0, coff[y + 1] - b0
    if la < lb:
        a0, b0, la, lb = b0, a0, lb, la
    if la - lb > 1:
        return 2
    p = 0
    while p < lb and chars[a0 + p] == chars[b0 + p]:
        p += 1
    if la == lb:
        if p == la:
            return 0
        q = p + 1  # one substitution at p, or a transposition of p, p+1
        if q < la and chars[a0 + p] == chars[b0 + q] and chars[a0 + q] == chars[b0 + p]:
            q += 1
        while q < la and chars[a0 + q] == chars[b0 + q]:
            q += 1
        return 1 if q == la else 2
    q = p  # a has one letter more: skip a[p]
    while q < lb and chars[a0 + q + 1] == chars[b0 + q]:
        q += 1
    return 1 if q == lb else 2


def _sub(chars, coff, df, exp1, exp2, x, y, scr):
    """Cost of aligning word x with word y: 0 equal, C_TYPO misspelt (OSA 1, both ≥ 3
    letters), 2·C_TYPO (OSA 2, both ≥ 4 letters and one ≥ 5, one of them in at most RARE_DF
    texts of the run: two letters off between two common words is another word, e.g.
    "blocked" ~ "unlocked"), BIG otherwise. Two contractions of the same words ("cant",
    "cannot") are equal."""
    if x == y or (exp1[x] >= 0 and exp1[x] == exp1[y] and exp2[x] == exp2[y]):
        return 0
    m = min(coff[x + 1] - coff[x], coff[y + 1] - coff[y])
    if m < 3:
        return BIG
    if _osa_le1(chars, coff, x, y) == 1:
        return C_TYPO
    if m >= 4 and max(coff[x + 1] - coff[x], coff[y + 1] - coff[y]) >= 5 and min(df[x], df[y]) <= RARE_DF \
            and _osa(chars, coff, x, y, 2, scr) == 2:
        return 2 * C_TYPO
    return BIG


def _cat(chars, coff, x1, x2, k):
    """Letter k of word x1 followed by word x2."""
    l1 = coff[x1 + 1] - coff[x1]
    return chars[coff[x1] + k] if k < l1 else chars[coff[x2] + k - l1]


def _merge_cost(chars, coff, exp1, exp2, x1, x2, y):
    """Cost of aligning words x1 x2 of one text with word y of the other: 0 when y is a
    contraction of them ("didnt" ~ "did not", CONTRACTIONS), C_MERGE when they spell y
    ("top up" ~ "topup"), C_MERGE + C_TYPO when they spell it with one letter off ("top ups" ~
    "topup", both ≥ 5 letters), else BIG."""
    if exp1[y] == x1 and exp2[y] == x2:
        return 0
    l1, l2 = coff[x1 + 1] - coff[x1], coff[x2 + 1] - coff[x2]
    la, lb = l1 + l2, coff[y + 1] - coff[y]
    if abs(la - lb) > 1:
        return BIG
    y0 = coff[y]
    p = 0
    m = min(la, lb)
    while p < m and _cat(chars, coff, x1, x2, p) == chars[y0 + p]:
        p += 1
    if p == la and la == lb:
        return C_MERGE
    if min(la, lb) < 5:
        return BIG
    if la == lb:
        q = p + 1
        if q < la and _cat(chars, coff, x1, x2, p) == chars[y0 + q] and _cat(chars, coff, x1, x2, q) == chars[y0 + p]:
            q += 1
        while q < la and _cat(chars, coff, x1, x2, q) == chars[y0 + q]:
            q += 1
        return C_MERGE + C_TYPO if q == la else BIG
    if la > lb:  # the pair has one letter more
        q = p
        while q < lb and _cat(chars, coff, x1, x2, q + 1) == chars[y0 + q]:
            q += 1
        return C_MERGE + C_TYPO if q == lb else BIG
    q = p  # y has one letter more
    while q < la and _cat(chars, coff, x1, x2, q) == chars[y0 + q + 1]:
        q += 1
    return C_MERGE + C_TYPO if q == la else BIG


def _blocks_swapped(tok, a0, i, b0, j, k1, k2):
    """a[i-k1-k2 : i-k2] == b[j-k1 : j] and a[i-k2 : i] == b[j-k1-k2 : j-k1]."""
    for t in range(k1):
        if tok[a0 + i - k1 - k2 + t] != tok[b0 + j - k1 + t]:
            return False
    for t in range(k2):
        if tok[a0 + i - k2 + t] != tok[b0 + j - k1 - k2 + t]:
            return False
    return True


def _unmatched(tok, a0, n, b0, m, excomp, flag):
    """Words of a = tok[a0:a0+n] equal to no word of b = tok[b0:b0+m] (contractions and their
    words aside): their count; ``flag[i]`` tells which."""
    count = 0
    for i in range(n):
        x = tok[a0 + i]
        hit = excomp[x]
        if not hit:
            for j in range(m):
                if x == tok[b0 + j]:
                    hit = True
                    break
        flag[i] = not hit
        if not hit:
            count += 1
    return count


def _can_merge(tok, a0, n, b0, m, flag, chars, coff, exp1, exp2):
    """Two adjacent unmatched words of a (``flag``) can be merged into a word of b."""
    for i in range(n - 1):
        if flag[i] and flag[i + 1]:
            for j in range(m):
                if _merge_cost(chars, coff, exp1, exp2, tok[a0 + i], tok[a0 + i + 1], tok[b0 + j]) < BIG:
                    return True
    return False


# long: one dynamic programme (four states, every step kind) in one numba kernel, which keeps its scratch local
def _pair_cost(tok, a0, n, b0, m, chars, coff, stop, fill, df, exp1, exp2, excomp, cap, D, S, rmins, scr, fa_, fb_):
    """Edit cost of token runs a = tok[a0:a0+n] and b = tok[b0:b0+m] (module docstring),
    or cap + 1 once it must exceed cap.

    ``D[f, i, j]``: the cheapest alignment of a[:i] with b[:j] in state ``f = fa + 2·fb``,
    where ``fa`` (``fb``) tells whether a word of a (of b) that is not a filler has been
    left unmatched so far; the step that makes both true pays TWO_SIDED once (each text
    then has a word the other lacks: a rewrite, not an edit). Every step off the diagonal
    costs ≥ 2 but a contraction's (one per contraction), so only cells with
    |i − j| ≤ cap // 2 + contractions are computed. ``D``: (4, ≥ n+1, ≥ m+1),
    ``S`` (cost of aligning a[i-1] with b[j-1]): (≥ n+1, ≥ m+1), ``rmins``: ≥ n+1 int64 scratch;
    ``fa_``, ``fb_``: ≥ n, ≥ m bool scratch."""
    kc = 0  # contractions: each may stand for two words of the other side at no cost
    for i in range(n):
        if exp1[tok[a0 + i]] >= 0:
            kc += 1
    for j in range(m):
        if exp1[tok[b0 + j]] >= 0:
            kc += 1
    if 2 * (abs(n - m) - kc) > cap:
        return cap + 1
    # lower bound from the words of each side that equal no word of the other (contractions and
    # their words aside: "didnt" ~ "did not" costs 0): each such word costs ≥ 2 points (a
    # misspelling pairs one word of each side for 2; a word dropped or inserted ≥ 2), except two
    # such words side by side merged into one word of the other side (2 points for both), so
    # ≥ 2·max(ua, ub) unless such a merge is possible (then ≥ max(ua, ub))
    ua = _unmatched(tok, a0, n, b0, m, excomp, fa_)
    ub = _unmatched(tok, b0, m, a0, n, excomp, fb_)
    lb = max(ua, ub)
    if 2 * lb > cap:
        merge = _can_merge(tok, a0, n, b0, m, fa_, chars, coff, exp1, exp2) or \
            _can_merge(tok, b0, m, a0, n, fb_, chars, coff, exp1, exp2)
        if not merge or lb > cap:
            return cap + 1
    w = cap // 2 + kc
    for i in range(n + 1):
        for j in range(max(0, i - w - 3), min(m, i + w + 3) + 1):
            for f in range(4):
                D[f, i, j] = BIG
        if i > 0:
            for j in range(max(1, i - w - 1), min(m, i + w + 1) + 1):
                S[i, j] = _sub(chars, coff, df, exp1, exp2, tok[a0 + i - 1], tok[b0 + j - 1], scr)
        rmin = BIG
        for j in range(max(0, i - w), min(m, i + w) + 1):
            if i == 0 and j == 0:
                D[0, 0, 0] = 0
                rmin = 0
                continue
            if i > 0:  # cost of leaving a[i-1] unmatched
                x = tok[a0 + i - 1]
                cd = C_STOP if stop[x] else C_CONTENT
                nfa = not fill[x]
            if j > 0:
                y = tok[b0 + j - 1]
                ci = C_STOP if stop[y] else C_CONTENT
                nfb = not fill[y]
            for f in range(4):
                best = BIG
                if i > 0 and j > 0:  # aligned steps keep the state
                    s = S[i, j]
                    if s < BIG:
                        best = D[f, i - 1, j - 1] + s
                    if i > 1 and j > 1:  # two adjacent words swapped (each may be misspelt)
                        s1 = S[i, j - 1]  # a[i-1] ~ b[j-2]
                        s2 = S[i - 1, j]  # a[i-2] ~ b[j-1]
                        if s1 < BIG and s2 < BIG:
                            best = min(best, D[f, i - 2, j - 2] + C_SWAP + s1 + s2)
                    for k1 in range(1, 3):  # adjacent blocks of 1–2 words swapped (exact words)
                        for k2 in range(1, 3):
                            q = k1 + k2
                            if q > 2 and i >= q and j >= q and D[f, i - q, j - q] < BIG \
                                    and _blocks_swapped(tok, a0, i, b0, j, k1, k2):
                                best = min(best, D[f, i - q, j - q] + C_SWAP)
                    if i > 1 and D[f, i - 2, j - 1] < BIG:  # "top up" ~ "topup", "did not" ~ "didnt"
                        best = min(best, D[f, i - 2, j - 1] + _merge_cost(chars, coff, exp1, exp2, tok[a0 + i - 2],
                                                                          tok[a0 + i - 1], tok[b0 + j - 1]))
                    if j > 1 and D[f, i - 1, j - 2] < BIG:
                        best = min(best, D[f, i - 1, j - 2] + _merge_cost(chars, coff, exp1, exp2, tok[b0 + j - 2],
                                                                          tok[b0 + j - 1], tok[a0 + i - 1]))
                fa, fb = f & 1, f >> 1
                if i > 0:  # a[i-1] unmatched, arriving in state f from state g
                    if nfa:
                        if fa == 1:  # from g with fa = 0 or 1
                            g0 = f - 1  # fa was 0
                            v = D[g0, i - 1, j] + cd + (TWO_SIDED if fb == 1 else 0)
                            best = min(best, v, D[f, i - 1, j] + cd)
                    else:
                        best = min(best, D[f, i - 1, j] + cd)
                if j > 0:  # b[j-1] unmatched
                    if nfb:
                        if fb == 1:
                            g0 = f - 2
                            v = D[g0, i, j - 1] + ci + (TWO_SIDED if fa == 1 else 0)
                            best = min(best, v, D[f, i, j - 1] + ci)
                    else:
                        best = min(best, D[f, i, j - 1] + ci)
                D[f, i, j] = best
                rmin = min(rmin, best)
        rmins[i] = rmin
        # a path to (n, m) crosses one of rows i-3..i (the longest step skips 3 rows) and
        # costs never decrease along it: once four rows in a row exceed the cap, so does the result
        if i >= 3 and min(rmins[i], rmins[i - 1], rmins[i - 2], rmins[i - 3]) > cap:
            return cap + 1
    return min(D[0, n, m], D[1, n, m], D[2, n, m], D[3, n, m], cap + 1)


def _costs_loop(tok, off, chars, coff, stop, fill, df, exp1, exp2, excomp, a, b, caps, out, maxlen):
    D = np.empty((4, maxlen + 1, maxlen + 1), np.int64)
    S = np.empty((maxlen + 1, maxlen + 1), np.int64)
    rmins = np.empty(maxlen + 1, np.int64)
    scr = np.empty((3, MAX_WORD + 1), np.int64)
    fa_ = np.empty(maxlen + 1, np.bool_)
    fb_ = np.empty(maxlen + 1, np.bool_)
    for p in range(len(a)):
        i, j = a[p], b[p]
        out[p] = _pair_cost(tok, off[i], off[i + 1] - off[i], off[j], off[j + 1] - off[j], chars, coff, stop, fill,
                            df, exp1, exp2, excomp, caps[p], D, S, rmins, scr, fa_, fb_)


def _keys_loop(tok, off, df, rank_hash, exp1, exp2, rows, ks, out_key, out_row, single):
    """For each row: its distinct words sorted by (df, hash, id); every pair of the ``ks[q]``
    rarest is a key, and in a text of ≤ SINGLE_KEYS_UPTO distinct words every word too
    (tagged ``single``)."""
    n_out = 0
    w = np.empty(64, np.int64)
    for q in range(len(rows)):
        t = rows[q]
        s, e = off[t], off[t + 1]
        if 2 * (e - s) > len(w):
            w = np.empty(2 * (e - s), np.int64)
        cnt = 0
        for p in range(s, e):  # distinct words, a contraction as its two words ("didnt" → did, not)
            x0 = tok[p]
            for h in range(2):
                if exp1[x0] >= 0:
                    x = exp1[x0] if h == 0 else exp2[x0]
                elif h == 0:
                    x = x0
                else:
                    break
                dup = False
                for r in range(cnt):
                    if w[r] == x:
                        dup = True
                        break
                if not dup:
                    w[cnt] = x
                    cnt += 1
        kk = min(ks[q], cnt)
        for r in range(kk):  # partial selection sort: the kk rarest first
            best = r
            for u in range(r + 1, cnt):
                x, y = w[u], w[best]
                if df[x] < df[y] or (df[x] == df[y] and (rank_hash[x] < rank_hash[y] or (rank_hash[x] == rank_hash[y] and x < y))):
                    best = u
            w[r], w[best] = w[best], w[r]
        if cnt <= SINGLE_KEYS_UPTO:  # very short: every word is a key too (tagged)
            for r in range(cnt):
                out_key[n_out] = np.uint64(w[r]) | single
                out_row[n_out] = t
                n_out += 1
        for r in range(kk):
            for u in range(r + 1, kk):
                x, y = min(w[r], w[u]), max(w[r], w[u])
                out_key[n_out] = (np.uint64(x) << np.uint64(32)) | np.uint64(y)
                out_row[n_out] = t
                n_out += 1
    return n_out


def _bucket_pairs(keys, who, cross, out, s0, u0):
    """Pairs of rows sharing a key (``keys`` sorted, ``who`` the row of each key), from key
    position ``s0`` (a bucket's first key) and, inside that bucket, its member ``u0``: all
    pairs of a bucket, or with ``cross`` ≥ 0 only those with left < cross ≤ right. Stops
    when ``out`` (at least as long as the largest bucket) is full; returns (pairs written,
    bucket to continue from, member to continue from), (n, len(keys), 0) at the end."""
    n_out = 0
    s = s0
    while s < len(keys):
        e = s + 1
        while e < len(keys) and keys[e] == keys[s]:
            e += 1
        for u in range(max(u0, s), e):
            if n_out + (e - u - 1) > len(out):
                return n_out, s, u
            for v in range(u + 1, e):
                x, y = who[u], who[v]
                if x == y:
                    continue
                if x > y:
                    x, y = y, x
                if cross >= 0 and not (x < cross and y >= cross):
                    continue
                out[n_out, 0] = x
                out[n_out, 1] = y
                n_out += 1
        u0 = 0
        s = e
    return n_out, s, 0


def _compile() -> bool:
    """Compile the loops above with numba (on-disk cache) unless it is missing or
    ``WORKBENCH_NO_JIT`` is set; the plain-Python functions are the same arithmetic."""
    if os.environ.get("WORKBENCH_NO_JIT"):
        return False
    try:
        import numba
    except ImportError:
        return False
    g = globals()
    for name in ("_osa", "_osa_le1", "_sub", "_cat", "_merge_cost", "_blocks_swapped", "_unmatched", "_can_merge", "_pair_cost",
                 "_costs_loop", "_keys_loop",
                 "_bucket_pairs"):
        g[name] = numba.njit(cache=True, nogil=True)(g[name])
    return True


JIT = _compile()


# --------------------------------------------------------------------------- public API
def budgets(n: np.ndarray | Sequence[int]) -> np.ndarray:
    """Allowed cost (half-points) of pairs whose longer text has ``n`` words (module docstring)."""
    n = np.asarray(n, np.int64)
    out = np.select([n <= 1, n == 2, n == 3], [0, 2, 4], BUDGET)
    return np.where(n > INDEX_MAX_WORDS, -1, out).astype(np.int64)


def budget(n: int) -> int:
    return int(budgets([n])[0])


#: rarest words a text keys on: a pair within budget differs in ≤ BUDGET // 2 words of each side
#: (every change costs ≥ 2 points), + 1 for a merge (3 words for 2 points), + 2 shared
KEY_WORDS = BUDGET // 2 + 1 + 2


def edit_costs(enc: Encoded, pairs: np.ndarray, caps: np.ndarray | int | None = None) -> np.ndarray:
    """Edit cost (half-points) of each row pair ``(i, j)`` of ``enc``, exact up to its cap
    and ``cap + 1`` above it; ``caps`` per pair, default the budget of the pair's length.
    Both texts must be indexed (≤ INDEX_MAX_WORDS words)."""
    pairs = np.ascontiguousarray(np.asarray(pairs, np.int64).reshape(-1, 2))
    if caps is None:
        caps = budgets(np.maximum(enc.nwords[pairs[:, 0]], enc.nwords[pairs[:, 1]]))
    caps = np.ascontiguousarray(np.broadcast_to(np.asarray(caps, np.int64), (len(pairs),)))
    out = np.zeros(len(pairs), np.int64)
    if len(pairs):
        ln = np.diff(enc.off)
        maxlen = int(max(ln[pairs[:, 0]].max(), ln[pairs[:, 1]].max()))
        _costs_loop(enc.tok, enc.off, enc.chars, enc.coff, enc.stop, enc.fill, enc.df, enc.exp1, enc.exp2, enc.excomp, np.ascontiguousarray(pairs[:, 0]),
                    np.ascontiguousarray(pairs[:, 1]), caps, out, maxlen)
    return out


def _rank_hash(enc: Encoded) -> np.ndarray:
    """A fixed pseudo-random tie-break per word, from its characters (word ids depend on
    the order texts were read; the ranking must not)."""
    nv = len(enc.coff) - 1
    if not nv:
        return np.zeros(0, np.uint64)
    with np.errstate(over="ignore"):
        pos = np.arange(len(enc.chars), dtype=np.int64) - np.repeat(enc.coff[:-1], np.diff(enc.coff))
        c = mh._mix64((enc.chars.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) ^ pos.astype(np.uint64))
        h = np.add.reduceat(c, enc.coff[:-1]) if len(c) else np.zeros(nv, np.uint64)
        return mh._mix64(h ^ np.diff(enc.coff).astype(np.uint64))


def candidate_blocks(enc: Encoded, rows: np.ndarray | None = None, cross: int | None = None,
                     block: int = 1 << 21) -> Iterator[np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of ``rows`` (default all; texts of 1..INDEX_MAX_WORDS
    words) sharing a key: a pair of words among the ``KEY_WORDS`` rarest words of each
    (module docstring: every pair within budget is among them). With ``cross``, only pairs
    with ``i < cross ≤ j`` (one side against the other). Yielded in blocks of at most
    ``block`` pairs (or the largest bucket's size; memory is bounded by the block, a large
    bucket is split over several; a pair sharing keys that land in two blocks comes twice)."""
    rows = np.arange(len(enc), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    ln = enc.nwords[rows]
    rows = rows[(ln >= 1) & (ln <= INDEX_MAX_WORDS) & (np.diff(enc.off)[rows] > 0)]
    if not len(rows):
        return
    ks = np.full(len(rows), KEY_WORDS, np.int64)
    cap = int((ks * (ks - 1) // 2 + SINGLE_KEYS_UPTO).sum())
    keys = np.empty(cap, np.uint64)
    who = np.empty(cap, np.int64)
    n = _keys_loop(enc.tok, enc.off, enc.df, _rank_hash(enc), enc.exp1, enc.exp2, rows, ks, keys, who, np.uint64(1) << np.uint64(63))
    order = np.argsort(keys[:n], kind="stable")
    keys, who = np.ascontiguousarray(keys[order]), np.ascontiguousarray(who[order])
    new = np.concatenate([[True], keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, bool)
    largest = int(np.diff(np.append(np.flatnonzero(new), len(keys))).max()) if len(keys) else 0
    out = np.empty((max(block, largest), 2), np.int64)  # a bucket of k rows: k − 1 pairs per member at most
    cr = -1 if cross is None else int(cross)
    s = u = 0
    while s < len(keys):
        m, s, u = _bucket_pairs(keys, who, cr, out, s, u)
        if m:
            yield mh.unique_pairs(out[:m])


def candidate_pairs(enc: Encoded, rows: np.ndarray | None = None, cross: int | None = None) -> np.ndarray:
    """All the pairs of :func:`candidate_blocks`, distinct."""
    parts = list(candidate_blocks(enc, rows, cross))
    return mh.unique_pairs(np.concatenate(parts)) if parts else np.zeros((0, 2), np.int64)


def _seq_hash(enc: Encoded, rows: np.ndarray) -> np.ndarray:
    """64-bit hash of each row's token sequence (equal sequences, equal hashes; 0 for none)."""
    ln = np.diff(enc.off)[rows]
    out = np.zeros(len(rows), np.uint64)
    has = ln > 0
    if not has.any():
        return out
    r = rows[has]
    starts, lens = enc.off[r], ln[has]
    idx = np.repeat(starts - np.cumsum(np.concatenate([[0], lens[:-1]])), lens) + np.arange(int(lens.sum()))
    pos = np.arange(int(lens.sum())) - np.repeat(np.cumsum(np.concatenate([[0], lens[:-1]])), lens)
    with np.errstate(over="ignore"):
        h = mh._mix64((enc.tok[idx].astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) ^ pos.astype(np.uint64))
        seg = np.add.reduceat(h, np.cumsum(np.concatenate([[0], lens[:-1]])))
        out[has] = mh._mix64(seg ^ lens.astype(np.uint64)) | np.uint64(1)
    return out


def _group(enc: Encoded, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with the same token sequence: (representative rows, members sorted by group,
    start of each group in members). The representative is the group's first row."""
    h = _seq_hash(enc, rows)
    order = np.lexsort((rows, h))
    hs, ms = h[order], rows[order]
    new = np.concatenate([[True], hs[1:] != hs[:-1]]) if len(hs) else np.zeros(0, bool)
    starts = np.flatnonzero(new)
    return ms[starts], ms, np.append(starts, len(ms))


def near_pairs(enc: Encoded, rows: np.ndarray | None = None, cross: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within budget: ``(pairs, cost, score)``; score = 1 − cost / (2·n), n the words
    of the longer text.

    Texts with the same words in the same order are verified once: without ``cross`` (one
    corpus) each group of such copies is linked to its first member (cost 0) and pairs
    between groups are given between their first members, enough for clusters; with
    ``cross`` (left rows < cross ≤ right rows) every left copy is paired with every right copy
    of two matching groups, as each left record lists its matches."""
    rows = np.arange(len(enc), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    ln = enc.nwords[rows]
    rows = rows[(ln >= 1) & (ln <= INDEX_MAX_WORDS) & (np.diff(enc.off)[rows] > 0)]
    empty = (np.zeros((0, 2), np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if cross is None:
        reps, members, gstart = _group(enc, rows)
        same = [np.stack([np.repeat(reps, np.diff(gstart) - 1), np.delete(members, gstart[:-1])], axis=1)]
    else:
        left, right = rows[rows < cross], rows[rows >= cross]
        rl, ml, gl = _group(enc, left)
        rr, mr, gr = _group(enc, right)
        reps = np.concatenate([rl, rr])
        same = []
    found, found_cost = [], []
    for cand in candidate_blocks(enc, reps, cross):
        caps = budgets(np.maximum(enc.nwords[cand[:, 0]], enc.nwords[cand[:, 1]]))
        cost = edit_costs(enc, cand, caps)
        ok = cost <= caps
        found.append(cand[ok])
        found_cost.append(cost[ok])
    cand, cost = empty[0], empty[1]
    if found:
        cand = np.concatenate(found)
        cost = np.concatenate(found_cost)
        if len(cand):  # a pair verified in two blocks: once
            key = cand[:, 0].astype(np.uint64) << np.uint64(32) | cand[:, 1].astype(np.uint64)
            _, first = np.unique(key, return_index=True)
            cand, cost = cand[first], cost[first]
    if cross is None:
        pairs = np.concatenate(same + [cand]).astype(np.int64)
        cost = np.concatenate([np.zeros(len(same[0]), np.int64), cost])
        pairs = np.stack([pairs.min(axis=1), pairs.max(axis=1)], axis=1) if len(pairs) else empty[0]
    elif len(cand):  # every left copy × every right copy of each matching pair of groups
        gi_l = _index_of(rl, cand[:, 0])
        gi_r = _index_of(rr, cand[:, 1])
        cl, cr = np.diff(gl)[gi_l], np.diff(gr)[gi_r]
        k = cl * cr
        pair_id = np.repeat(np.arange(len(cand)), k)
        within = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
        li = gl[gi_l][pair_id] + within // cr[pair_id]
        ri = gr[gi_r][pair_id] + within % cr[pair_id]
        pairs = np.stack([ml[li], mr[ri]], axis=1)
        cost = cost[pair_id]
    else:
        return empty
    if not len(pairs):
        return empty
    n = np.maximum(enc.nwords[pairs[:, 0]], enc.nwords[pairs[:, 1]])
    return pairs, cost, (1.0 - cost / (2.0 * n)).astype(np.float32)


def _index_of(sorted_keys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Positions of the values x in the array of their group representatives (not sorted)."""
    order = np.argsort(sorted_keys, kind="stable")
    return order[np.searchsorted(sorted_keys[order], x)]


def both_short(enc: Encoded, pairs: np.ndarray, max_words: int = SHORT_MAX_WORDS) -> np.ndarray:
    """Mask of the pairs that the edit rule alone decides (both texts ≤ max_words words)."""
    if not len(pairs):
        return np.zeros(0, bool)
    return np.maximum(enc.nwords[pairs[:, 0]], enc.nwords[pairs[:, 1]]) <= max_words
