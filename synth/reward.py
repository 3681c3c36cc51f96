"""Reward filtering: the LLM-judge rubric, its robust parsing, and the heuristics.

Every candidate gets, before it may enter the store:

* ``judge``: the backend grades the example 1-5 with ``prompts/judge.txt``.
  The score is read from the model's next-token probabilities over "1".."5"
  right where the score goes (:func:`judge_result`: local backend always; an
  OpenAI-compatible server through ``logprobs``/``top_logprobs``), so every
  candidate gets a score.  When a server returns no logprobs,
  :func:`parse_judge` reads the text: JSON (``{"score": 4, "rationale": …}``), then
  ``Score: 4`` / ``4/5`` / ``rating: 4`` forms; anything else is *unparseable*
  and handled per ``RewardConfig.on_unparseable`` (keep, flagged, or reject).
* heuristics (:func:`heuristics`): length bounds, refusal/boilerplate phrases,
  an English-word ratio (language), token-set Jaccard with the seed (copy) and
  with ANY held-out record (:class:`HeldoutIndex`; a hit is a leak, rejected).

:func:`decide` turns both into ``(keep, reason)``; the reasons are data (the
synth log keeps them).

The judge alone does not discriminate on the embedded 135M model (it gives ~3.9-4.0 to
everything), so every candidate also gets ONE combined reward in [0, 1]
(:func:`combine`, documented in docs/synth.md)::

    reward = format × novelty × label × judge

* ``format`` (:func:`format_signal`): 1 for a well-formed message; 0 when empty, with role
  markers / chat-template tokens, JSON or markup, not text, or talking about the task ("the
  customer …"); ``n/min_words`` when too short, ``max_words/n`` when too long; × 0.25 when it ends
  on a dangling word (cut off).
* ``novelty`` (:func:`novelty_factor`): 1 while the largest of the text's cosine to its seed(s), its
  cosine to the nearest existing train record and its character similarity to the seed(s) is
  ≤ ``novelty_lo``, 0 at ≥ ``novelty_hi``, linear between (a copied seed teaches nothing).
* ``label``: p(label | text) from an embedding classifier (all-MiniLM-L6-v2 vectors +
  scikit-learn ``LogisticRegression``, plus each label's name as one more row) fitted on the
  workspace's HUMAN train records only (:class:`RewardModel`); its rank among the labels is stored too.
* ``judge``: (judge score − 1) / 4.

A factor that does not apply (no label, no judge, no embedder) counts 1.  The product is the
chance that every aspect is fine if they were independent: one failed aspect sinks the
candidate, whatever the others say (a fluent, novel text with the wrong label is still wrong).
Below ``min_reward`` the candidate is rejected (``reward-low``); since the judge factor is at
most 1, a candidate whose ``format × novelty × label`` is already below it is rejected before
the judge is called.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .strategies import conversation_text, render

_WORD = re.compile(r"[a-z0-9']+")


def tokens(text: str) -> set[str]:
    return set(_WORD.findall((text or "").lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class HeldoutIndex:
    """Token inverted index over held-out record texts; :meth:`max_similarity` = best Jaccard."""

    def __init__(self, texts: Iterable[tuple[str, str]]):
        self.ids: list[str] = []
        self.sets: list[set[str]] = []
        self.exact: dict[str, str] = {}
        self.post: dict[str, list[int]] = defaultdict(list)
        for rid, text in texts:
            s = tokens(text)
            i = len(self.ids)
            self.ids.append(rid)
            self.sets.append(s)
            self.exact.setdefault(" ".join((text or "").lower().split()), rid)
            for t in s:
                self.post[t].append(i)

    @classmethod
    def from_store(cls, store: Any) -> "HeldoutIndex":
        return cls((e.id, e.user_text or e.text) for e in store.iter_records({"split": "heldout"}))

    def __len__(self) -> int:
        return len(self.ids)

    def max_similarity(self, text: str) -> tuple[float, str | None]:
        key = " ".join((text or "").lower().split())
        if key in self.exact:
            return 1.0, self.exact[key]
        q = tokens(text)
        if not q:
            return 0.0, None
        overlap: dict[int, int] = defaultdict(int)
        for t in q:
            for i in self.post.get(t, ()):
                overlap[i] += 1
        best, best_id = 0.0, None
        for i, inter in overlap.items():
            j = inter / (len(q) + len(self.sets[i]) - inter)
            if j > best:
                best, best_id = j, self.ids[i]
        return best, best_id


# -- judge ---------------------------------------------------------------------
def judge_prompt(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return render("judge", example=conversation_text(messages).replace("Agent:", "Assistant:"))


_SCORE_PATTERNS = [
    re.compile(r"\bscore\"?\s*[:=]\s*\"?([1-5](?:\.\d+)?)", re.I),
    re.compile(r"\b(?:rating|grade)\s*[:=]?\s*([1-5](?:\.\d+)?)\b", re.I),
    re.compile(r"\b([1-5](?:\.\d+)?)\s*(?:/|out of)\s*5\b", re.I),
]


def parse_judge(text: str) -> dict[str, Any]:
    """``{"score": float|None, "rationale": str, "parse": "json"|"pattern"|"unparseable"}``.

    Scores outside 1..5 count as unparseable (a judge that says 7 did not follow the rubric).
    """
    t = (text or "").strip()
    m = re.search(r"\{.*?\}", t, re.S)
    if m:
        try:
            d = json.loads(m.group(0))
        except json.JSONDecodeError:
            d = None
        if isinstance(d, dict):
            s = d.get("score", d.get("rating"))
            try:
                s = float(s)
            except (TypeError, ValueError):
                s = None
            if s is not None and 1 <= s <= 5:
                return {"score": s, "rationale": str(d.get("rationale") or d.get("reason") or "").strip()[:300], "parse": "json"}
    for pat in _SCORE_PATTERNS:
        m = pat.search(t)
        if m:
            s = float(m.group(1))
            if 1 <= s <= 5:
                rest = (t[: m.start()] + " " + t[m.end():]).strip(" \n:.-\"{}")
                rm = re.search(r"rationale\"?\s*[:=]\s*\"?([^\"\n]+)", t, re.I)
                return {"score": s, "rationale": (rm.group(1) if rm else rest).strip()[:300], "parse": "pattern"}
    return {"score": None, "rationale": t[:300], "parse": "unparseable"}


SCORE_CHOICES = ("1", "2", "3", "4", "5")
SCORE_PREFIX = "Score: "


def judge_params(cfg: Any) -> dict[str, Any]:
    """Request parameters of a judge call (greedy; ``score`` makes the backend return score-token probabilities)."""
    return {"max_tokens": int(getattr(cfg, "judge_max_tokens", 24)), "temperature": 0.0,
            "score": {"prefix": SCORE_PREFIX, "choices": list(SCORE_CHOICES), "top_logprobs": 20,
                      "prefill": bool(getattr(cfg, "judge_prefill", False))}}


_SCORE_LEAD = re.compile(r"^\s*(?:score\s*[:=]?\s*)?[1-5](?:\.\d+)?\s*(?:/\s*5)?\s*[.:,;)\-\u2013\u2014]*\s*", re.I)


def judge_result(answer: dict[str, Any] | str | None) -> dict[str, Any]:
    """The judge's verdict from a scoring answer (``{"text", "probs", "via"}``) or plain text.

    With ``probs`` (the next-token probabilities of the score tokens "1".."5" where the score goes) the
    score is their expectation, normalised over the score tokens: ``sum(p_i * i) / sum(p_i)`` — a number
    for every candidate, never a parse failure; ``mass`` = ``sum(p_i)`` says how much of the model's
    probability went to a score at all.  Without probs (a server that returns no logprobs, or an
    answer without a score token) the text is parsed with :func:`parse_judge`.
    """
    if isinstance(answer, dict):
        probs = answer.get("probs") or {}
        mass = float(sum(probs.values()))
        text = str(answer.get("text") or "")
        if mass > 0:
            score = sum(p * float(c) for c, p in probs.items()) / mass
            return {"score": round(score, 3), "rationale": _SCORE_LEAD.sub("", text, count=1).strip()[:300],
                    "parse": "logprobs", "probs": {c: round(p / mass, 4) for c, p in probs.items()},
                    "mass": round(mass, 4)}
        return parse_judge(text)
    return parse_judge(answer or "")


# -- heuristics ----------------------------------------------------------------
REFUSAL = re.compile(
    r"\b(as an ai|as a language model|i(?:'m| am) (?:sorry|unable|not able)|i can(?:not|'t) (?:help|assist|provide|do)"
    r"|i apologi[sz]e|my apologies|language model|openai)\b",
    re.I,
)
BOILERPLATE = re.compile(
    r"(rewrite this customer message|write one new|here are messages customers sent|conversation so far|"
    r"reply with|<the question>|<the answer>|\$text|\$examples)",
    re.I,
)
ENGLISH = frozenset(
    "a an the i you he she it we they me my your our their is are was were be been am do does did have has had "
    "can could will would should may might must not no yes to of in on at for from with by about and or but if "
    "what why how when where which who this that these those there here please help card account money "
    "payment bank transfer order refund get got want need my".split()
)


def english_ratio(text: str) -> float:
    words = _WORD.findall((text or "").lower())
    if not words:
        return 0.0
    return sum(w in ENGLISH for w in words) / len(words)


def heuristics(new_text: str, seed_texts: list[str], heldout: HeldoutIndex | None, cfg: Any,
               also_check: list[str] | None = None) -> dict[str, Any]:
    """Measured facts about the generated text; :func:`decide` applies the thresholds.

    ``also_check``: further texts (e.g. the new user turn alone) compared with held-out records.
    """
    seed_sim = max((jaccard(tokens(new_text), tokens(s)) for s in seed_texts), default=0.0)
    exact_seed = any(" ".join(new_text.lower().split()) == " ".join(s.lower().split()) for s in seed_texts)
    low = new_text.lower()
    phrases = [ph for ph in getattr(cfg, "refusal_phrases", []) if ph and ph.lower() in low]
    h_sim, h_id = 0.0, None
    if heldout is not None and len(heldout):
        for t in [new_text, *(also_check or [])]:
            sim, rid = heldout.max_similarity(t)
            if sim > h_sim:
                h_sim, h_id = sim, rid
    return {
        "chars": len(new_text),
        "refusal": bool(REFUSAL.search(new_text)) or bool(phrases),
        "boilerplate": bool(BOILERPLATE.search(new_text)),
        "english_ratio": round(english_ratio(new_text), 3),
        "seed_similarity": 1.0 if exact_seed else round(seed_sim, 3),
        "heldout_similarity": round(h_sim, 3),
        "heldout_nearest": h_id,
    }


def heuristic_reason(h: dict[str, Any], cfg: Any) -> str | None:
    """First failed check (a held-out leak is reported before anything else)."""
    if h["heldout_similarity"] >= cfg.max_heldout_similarity:
        return f"heldout-similar: Jaccard {h['heldout_similarity']} with held-out record {h['heldout_nearest']} >= {cfg.max_heldout_similarity}"
    if h["chars"] < cfg.min_chars:
        return f"too-short: {h['chars']} chars < min_chars {cfg.min_chars}"
    if h["chars"] > cfg.max_chars:
        return f"too-long: {h['chars']} chars > max_chars {cfg.max_chars}"
    if h["refusal"]:
        return "refusal: the text contains a refusal / AI-disclaimer phrase"
    if h["boilerplate"]:
        return "boilerplate: the text echoes the prompt"
    if cfg.min_english_ratio > 0 and h["english_ratio"] < cfg.min_english_ratio:
        return f"language: english_ratio {h['english_ratio']} < {cfg.min_english_ratio}"
    if h["seed_similarity"] >= cfg.max_seed_similarity:
        return f"copy-of-seed: Jaccard {h['seed_similarity']} with the seed >= {cfg.max_seed_similarity}"
    return None


def decide(h: dict[str, Any], judged: dict[str, Any] | None, cfg: Any,
           signals: dict[str, Any] | None = None) -> str | None:
    """``None`` to keep, else the rejection reason (heuristics first, then the judge, then the combined reward).

    ``signals``: the candidate's reward signals (:meth:`RewardModel.measure`, with ``judge`` filled in);
    the combined reward below ``min_reward`` is a ``reward-low`` rejection.
    """
    r = heuristic_reason(h, cfg)
    if r:
        return r
    if judged is not None:
        if judged["score"] is None:
            if cfg.on_unparseable == "reject":
                return "judge-unparseable: no score in the judge output"
        elif judged["score"] < cfg.min_judge_score:
            return f"judge-low: score {judged['score']} < min_judge_score {cfg.min_judge_score}"
    if signals is not None:
        return reward_reason(signals, cfg)
    return None


# -- combined reward: format × novelty × label × judge --------------------------
REWARD_FACTORS = ("format", "novelty", "label", "judge")
REWARD_FORMULA = "format * novelty * label * judge  (each in [0, 1]; a factor that does not apply counts 1)"

Embedder = Callable[[Sequence[str]], np.ndarray]
"""Texts -> ``(n, dim)`` float32 unit vectors (so a dot product is the cosine)."""

_ROLE = re.compile(
    r"(?:^|\n)\s*(?:user|assistant|system|customer|agent|human|gpt|bot|ai|model)\s*:"
    r"|<\|[^|>\n]{1,40}\|>|\[/?INST\]|</?s>|</?(?:user|assistant|system)>"
    r"|(?:^|\n)\s*#{2,}\s*(?:user|assistant|system|instruction|response)\b",
    re.I,
)
_MARKUP = re.compile(r"^\s*[\[{<]|[\"']\s*:\s*[\"\[{\d]|[}\]>]\s*$|```|\\[nu]|</?[a-z]+>", re.I)
# the model talking about the task instead of writing the customer's message ("This customer message is …",
# "The customer was trying …"): none of BANKING77's 10,003 train queries matches
_META = re.compile(r"\b(?:the customer|customer messages?|this message|the user'?s?|paraphras\w*|rewrit\w*|original message)\b",
                   re.I)
# words a message rarely ends on unless it was cut off (checked only when no punctuation follows:
# 0.2% of BANKING77's 10,003 train queries end like that)
DANGLING = frozenset(
    "a an the my your our their his her its and or but because if than i we could would should will into very "
    "to of with on at is are was were be can does did".split()
)
CUT_OFF_FACTOR = 0.25


def format_signal(text: str, cfg: Any) -> tuple[float, list[str]]:
    """``(F, flags)``: F in [0, 1] says whether ``text`` is one well-formed message.

    0 (``empty`` / ``role-marker`` / ``markup`` / ``non-text`` / ``meta-text``): no letters; chat roles or
    template tokens (``User:``, ``<|im_start|>``, ``[INST]``); JSON, code or HTML; under 60% letters among the
    visible characters; text about the task instead of a message ("the customer", "this customer message",
    "paraphrase", "rewrite").  Otherwise ``n / min_words`` below ``min_words`` words (``too-few-words``),
    ``max_words / n`` above ``max_words`` (``too-many-words``), and × 0.25 when the last word is a
    dangling one (``a``, ``the``, ``my``, ``to``, ``and`` …) with no punctuation after it (``cut-off``).
    """
    t = (text or "").strip()
    words = t.split()
    if not words or not any(ch.isalpha() for ch in t):
        return 0.0, ["empty"]
    flags: list[str] = []
    if _ROLE.search(t):
        flags.append("role-marker")
    if _MARKUP.search(t):
        flags.append("markup")
    visible = sum(not ch.isspace() for ch in t)
    if sum(ch.isalpha() for ch in t) < 0.6 * visible:
        flags.append("non-text")
    if _META.search(t):
        flags.append("meta-text")
    if flags:
        return 0.0, flags
    f = 1.0
    n = len(words)
    lo, hi = int(getattr(cfg, "min_words", 0) or 0), int(getattr(cfg, "max_words", 0) or 0)
    if lo and n < lo:
        flags.append("too-few-words")
        f *= n / lo
    if hi and n > hi:
        flags.append("too-many-words")
        f *= hi / n
    ws = _WORD.findall(t.lower())
    if ws and ws[-1] in DANGLING and t[-1].isalnum():
        flags.append("cut-off")
        f *= CUT_OFF_FACTOR
    return round(f, 4), flags


def novelty_factor(similarity: float | None, lo: float, hi: float) -> float | None:
    """1 at cosine ≤ ``lo``, 0 at ≥ ``hi``, linear between (``None``: not measured)."""
    if similarity is None:
        return None
    if hi <= lo:
        return 0.0 if similarity >= hi else 1.0
    return round(float(min(1.0, max(0.0, (hi - similarity) / (hi - lo)))), 4)


def judge_factor(score: float | None) -> float | None:
    """The judge's 1-5 score on [0, 1]: (score - 1) / 4 (``None``: not judged or unparseable)."""
    if score is None:
        return None
    return round(min(1.0, max(0.0, (float(score) - 1.0) / 4.0)), 4)


def combine(signals: dict[str, Any]) -> float:
    """THE reward of a candidate: ``format × novelty × label × judge`` (see the module doc).

    Each factor is in [0, 1]; one that is ``None`` (does not apply: no label, no judge, no embedder)
    counts 1.  A product, so one failed aspect sinks the candidate whatever the others say."""
    r = 1.0
    for k in REWARD_FACTORS:
        v = signals.get(k)
        if v is not None:
            r *= float(v)
    return round(r, 4)


def reward_reason(signals: dict[str, Any], cfg: Any) -> str | None:
    """``reward-low: …`` when the combined reward is below ``min_reward`` (0 = off), else ``None``."""
    thr = float(getattr(cfg, "min_reward", 0.0) or 0.0)
    r = combine(signals)
    if thr <= 0 or r >= thr:
        return None
    parts = ", ".join(f"{k} {signals[k]}" for k in REWARD_FACTORS if signals.get(k) is not None)
    flags = signals.get("format_flags") or []
    why = f"; format: {', '.join(flags)}" if flags else ""
    if signals.get("label_top") and signals.get("label_rank", 1) != 1:
        why += f"; the classifier's label: {signals['label_top']}"
    return f"reward-low: {r} < min_reward {thr} ({parts}{why})"


def model_embedder(model: str) -> Embedder:
    """Unit vectors from a sentence-transformers model (``curate.embed``'s loader, shared with dedup)."""
    from curate.embed import load_model

    m = load_model(model)

    def encode(texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, int(m.get_sentence_embedding_dimension() or 0)), np.float32)
        with few_threads(len(texts)):
            return m.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False).astype(np.float32)

    return encode


@contextmanager
def few_threads(n_texts: int, small: int = 256):
    """One torch thread while encoding a small batch (a chunk's candidates): on a shared 2-core box two
    spinning OpenMP threads made encoding 12 short texts take 2.2 s instead of 0.08 s (measured)."""
    import torch

    before = torch.get_num_threads()
    if n_texts > small or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _norm_text(t: str) -> str:
    return " ".join((t or "").lower().split())


def label_name(label: str) -> str:
    """``card_arrival`` -> ``card arrival`` (what the label says, as text to embed)."""
    return " ".join(re.split(r"[_\-.:/]+", str(label))).strip()


def char_similarity(a: str, b: str) -> float:
    """Character-level similarity of two texts (difflib ratio of the lower-cased words, punctuation dropped).

    A typo or a filler word moves a sentence embedding more than it moves the characters: a copy with
    one typo had cosine 0.85-0.93 to its seed but a ratio of ~0.97."""
    from difflib import SequenceMatcher

    x, y = " ".join(_WORD.findall((a or "").lower())), " ".join(_WORD.findall((b or "").lower()))
    if not x or not y:
        return 0.0
    return SequenceMatcher(None, x, y, autojunk=False).ratio()


class RewardModel:
    """What the embedding signals need: the existing train records' vectors (novelty) and a label
    classifier fitted on the HUMAN train records only (label consistency).

    Never fitted on held-out or synthetic records.  ``embed=None``: the embedding signals are n/a
    (``novelty`` and ``label`` are ``None``); ``info`` says why.
    """

    def __init__(self, cfg: Any, embed: Embedder | None = None, row_ids: Sequence[str] = (),
                 row_vecs: np.ndarray | None = None,
                 label_vecs: Sequence[np.ndarray] | None = None, labels: Sequence[str] = (),
                 info: dict[str, Any] | None = None):
        """``row_*``: the existing train records (novelty); ``label_vecs``/``labels``: the labelled HUMAN
        train records the classifier is fitted on."""
        self.cfg = cfg
        self.embed = embed
        self.row_ids: list[str] = list(row_ids)
        self.row_vecs = row_vecs if row_vecs is not None else np.zeros((0, 0), np.float32)
        self.row_index = {rid: i for i, rid in enumerate(self.row_ids)}
        self.info: dict[str, Any] = dict(info or {})
        self.info.setdefault("rows", len(self.row_ids))
        self.clf = None
        self.classes: list[str] = []
        labels = list(labels)
        n_labels = len(set(labels))
        self.info.update(label_rows=len(labels), labels=n_labels)
        min_rows = int(getattr(cfg, "label_min_rows", 20))
        if embed is None:
            self.info.setdefault("label_model", "off: no embedder")
        elif n_labels < 2 or len(labels) < min_rows:
            self.info["label_model"] = (f"off: {len(labels)} labelled human train records, {n_labels} label(s); "
                                        f"needs >= {min_rows} records (label_min_rows) and >= 2 labels")
        else:
            from sklearn.linear_model import LogisticRegression

            X = np.asarray(label_vecs, dtype=np.float32)
            y = list(labels)
            names = ""
            if getattr(cfg, "label_names", True):
                # the label's own name (underscores as spaces) is one more row of its label: a prior that
                # matters when a label has 1-3 records (measured: bench/results/reward_filter.json)
                classes = sorted(set(labels))
                X = np.vstack([X, embed([label_name(c) for c in classes])])
                y += classes
                names = f" + {len(classes)} label names"
            self.clf = LogisticRegression(C=float(getattr(cfg, "label_c", 100.0)), max_iter=3000).fit(X, y)
            self.classes = [str(c) for c in self.clf.classes_]
            self.info["label_model"] = (f"logistic regression (C={self.clf.C}) on {len(labels)} human train records"
                                        f"{names}")

    @classmethod
    def from_store(cls, store: Any, cfg: Any, embed: Embedder | None = None) -> "RewardModel":
        """Vectors of every train record (pending or approved; any origin: novelty), the classifier on the
        human ones that carry a label.  Without an injected ``embed``, record vectors go through the
        store's embedding cache (``curate.embed``, field ``user``: shared with ``curate dedup``)."""
        model = str(getattr(cfg, "reward_embedder", "") or "")
        recs = [e for e in store.iter_records({"split": "train", "status": ["pending", "approved"]}) if e.split == "train"]
        if embed is None and model.lower() in ("", "off", "none"):
            return cls(cfg, None, info={"embedder": "off", "rows": len(recs)})
        ids = [e.id for e in recs]
        texts = [e.user_text for e in recs]
        if embed is None:
            try:
                embed = model_embedder(model)
            except Exception as e:  # ModelNotFound, a broken install: the signals are n/a, the run goes on
                return cls(cfg, None, info={"embedder": f"off: {type(e).__name__}: {e}", "rows": len(recs)})
            from curate.embed import embed as cached_embed

            with few_threads(len(texts)):
                vecs = cached_embed(store, ids, texts, model=model, field="user") if recs else None
            name = model
        else:
            vecs = embed(texts) if recs else None
            name = getattr(embed, "label", "injected")
        human = [i for i, e in enumerate(recs) if (e.origin or {}).get("kind", "human") == "human" and e.label]
        return cls(cfg, embed, ids, vecs, [vecs[i] for i in human] if human else [], [recs[i].label for i in human],
                   info={"embedder": name})

    def add_rows(self, ids: Sequence[str], vecs: np.ndarray) -> None:
        """Records stored during the run join the novelty pool (a later candidate copying one is a copy)."""
        keep = [k for k, rid in enumerate(ids) if rid not in self.row_index]
        if not keep or vecs is None or not len(vecs):
            return
        vecs = np.asarray(vecs, np.float32)[keep]
        self.row_vecs = vecs if not self.row_vecs.size else np.vstack([self.row_vecs, vecs])
        for k in keep:
            self.row_index[ids[k]] = len(self.row_ids)
            self.row_ids.append(ids[k])

    def measure(self, texts: Sequence[str], labels: Sequence[str | None], seed_texts: Sequence[Sequence[str]],
                self_ids: Sequence[str | None] | None = None) -> tuple[list[dict[str, Any]], np.ndarray | None]:
        """Every signal but the judge's, for each candidate; and the candidates' vectors.

        ``texts``: what the model wrote (the new user turn(s)); ``labels``: the label the record would
        carry (``None``: no label task); ``seed_texts``: the texts it was generated from; ``self_ids``:
        the candidate's own record id, never counted as its own near-copy (a candidate already stored is
        a duplicate, which the store reports).  Keys: ``format``, ``format_flags``, ``novelty``,
        ``seed_cosine``, ``nearest_cosine``, ``nearest_id``, ``label`` (= p(label | text)), ``label_rank``
        (1 = the classifier's first choice), ``label_top``, ``label_top_p``, ``judge`` (``None`` until judged).
        """
        out: list[dict[str, Any]] = []
        for t in texts:
            f, flags = format_signal(t, self.cfg)
            out.append({"format": f, "format_flags": flags, "novelty": None, "seed_cosine": None,
                        "nearest_cosine": None, "nearest_id": None, "char_similarity": None, "label": None, "label_rank": None,
                        "label_top": None, "label_top_p": None, "judge": None})
        if self.embed is None or not texts:
            return out, None
        flat = [s for ss in seed_texts for s in ss]
        both = self.embed([*texts, *flat])  # one call: a call has a fixed cost
        V, S = both[: len(texts)], both[len(texts):]
        lo, hi = float(self.cfg.novelty_lo), float(self.cfg.novelty_hi)
        k = 0
        near = V @ self.row_vecs.T if self.row_vecs.size else None
        for i, (t, ss) in enumerate(zip(texts, seed_texts)):
            sig = out[i]
            sims = [float(V[i] @ S[k + j]) for j in range(len(ss))] if ss else []
            k += len(ss)
            seed_cos = max(sims) if sims else None
            # characters too: a copy of the seed with a typo or a filler word is far in embedding space,
            # not in characters (against the seed only: other records are compared by cosine)
            chars = [char_similarity(t, s) for s in ss]
            near_cos, near_id = None, None
            if near is not None:
                row = near[i].copy()
                own = self.row_index.get((self_ids or [None] * len(texts))[i] or "")
                if own is not None:
                    row[own] = -1.0
                j = int(row.argmax())
                near_cos, near_id = float(row[j]), self.row_ids[j]
            char_sim = max(chars) if chars else None
            sims = [x for x in (seed_cos, near_cos, char_sim) if x is not None]
            sig.update(seed_cosine=None if seed_cos is None else round(seed_cos, 4),
                       nearest_cosine=None if near_cos is None else round(near_cos, 4), nearest_id=near_id,
                       char_similarity=None if char_sim is None else round(char_sim, 4),
                       novelty=novelty_factor(max(sims), lo, hi) if sims else None)
        if self.clf is not None:
            P = self.clf.predict_proba(V)
            col = {c: j for j, c in enumerate(self.classes)}
            for i, lab in enumerate(labels):
                if lab is None or lab not in col:
                    continue  # no label task, or a label no human train record has: n/a
                p = float(P[i, col[lab]])
                top = int(P[i].argmax())
                out[i].update(label=round(p, 4), label_rank=int((P[i] > p).sum()) + 1,
                              label_top=self.classes[top], label_top_p=round(float(P[i, top]), 4))
        return out, V
