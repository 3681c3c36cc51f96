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
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any, Iterable

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


def decide(h: dict[str, Any], judged: dict[str, Any] | None, cfg: Any) -> str | None:
    """``None`` to keep, else the rejection reason (heuristics first, then the judge)."""
    r = heuristic_reason(h, cfg)
    if r:
        return r
    if judged is None:
        return None
    if judged["score"] is None:
        return "judge-unparseable: no score in the judge output" if cfg.on_unparseable == "reject" else None
    if judged["score"] < cfg.min_judge_score:
        return f"judge-low: score {judged['score']} < min_judge_score {cfg.min_judge_score}"
    return None
