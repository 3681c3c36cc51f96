"""Strategies: which seeds a candidate comes from, the prompts it needs, and how output becomes a chat.

Prompts are readable template files in ``synth/prompts/`` (``### system`` and
``### user`` sections, ``$name`` placeholders, :class:`string.Template`).

Seeds come ONLY from ``train``-split records (:func:`load_seeds` forces
``split=train`` and refuses a ``split`` seed filter), or from document chunks
for ``doc-qa``. Held-out text therefore never reaches a prompt.

Every candidate is planned as a :class:`Candidate` with a first prompt; some
strategies need a second call (the assistant's reply):

==============  =========================================  ==========================================
strategy        first call                                  result
==============  =========================================  ==========================================
paraphrase      rewrite the seed's (last) user turn         seed with that user turn replaced; label kept
self-instruct   k same-label seeds -> one new user message  + the seeds' shared reply (label kept), else
                                                            a second call answers it
doc-qa          one chunk -> ``Question:``/``Answer:``       [user: question, assistant: answer]
multi-turn      seed chat -> the customer's next message    seed + that message + a second call's reply
==============  =========================================  ==========================================
"""
from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.example import Example

STRATEGIES = ("paraphrase", "self-instruct", "doc-qa", "multi-turn")
PROMPT_DIR = Path(__file__).with_name("prompts")
Messages = list[dict[str, str]]


class TemplateError(ValueError):
    pass


def load_template(name: str, prompt_dir: Path | None = None) -> tuple[str, str]:
    """Return (system, user) template strings of ``prompts/<name>.txt``."""
    p = (prompt_dir or PROMPT_DIR) / f"{name}.txt"
    text = p.read_text(encoding="utf-8")
    parts: dict[str, list[str]] = {}
    cur = None
    for ln in text.splitlines():
        m = re.fullmatch(r"###\s*(system|user)\s*", ln.strip())
        if m:
            cur = m.group(1)
            parts[cur] = []
        elif cur is not None:
            parts[cur].append(ln)
        elif ln.strip():
            raise TemplateError(f"{p}: text before the first '### system' / '### user' header: {ln!r}")
    if "user" not in parts:
        raise TemplateError(f"{p}: no '### user' section")
    return "\n".join(parts.get("system", [])).strip(), "\n".join(parts["user"]).strip()


def render(name: str, prompt_dir: Path | None = None, **values: str) -> Messages:
    """Fill a template; a missing placeholder is an error naming the file and the key."""
    system, user = load_template(name, prompt_dir)
    out: Messages = []
    try:
        s = string.Template(system).substitute(values) if system else ""
        u = string.Template(user).substitute(values)
    except KeyError as e:
        raise TemplateError(f"{(prompt_dir or PROMPT_DIR) / (name + '.txt')}: no value for placeholder ${e.args[0]}") from None
    if s.strip():
        out.append({"role": "system", "content": s})
    out.append({"role": "user", "content": u})
    return out


@dataclass
class Candidate:
    """One candidate on its way through generation, judging and filtering."""

    index: int
    strategy: str
    parent_ids: list[str]
    seed_texts: list[str]
    prompt: Messages
    label: str | None = None
    base: Messages = field(default_factory=list)  # seed messages the result builds on
    shared_reply: str | None = None  # self-instruct: the seeds' common assistant turn
    answer_prompt: Messages | None = None  # second call, if any
    raw: list[str] = field(default_factory=list)  # raw backend outputs, in call order
    messages: Messages | None = None
    error: str | None = None  # why it was rejected before judging
    prompt_hashes: list[str] = field(default_factory=list)


# -- seeds ---------------------------------------------------------------------
def parse_seed_filters(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> store filters; ``split`` may not be set (seeds are train only)."""
    from curate.store import FILTER_KEYS

    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--seed-filter {it!r}: expected key=value (keys: label, origin, source_kind, status)")
        k, v = (s.strip() for s in it.split("=", 1))
        if k == "split":
            raise ValueError("--seed-filter split=…: seeds always come from the train split; held-out is never used")
        if k not in FILTER_KEYS or k in ("ids", "has_duplicate", "has_leak", "low_reward"):
            raise ValueError(f"--seed-filter {k!r}: unknown key (known: label, origin, source_kind, status)")
        out.setdefault(k, []).append(v)
    return out


def load_seeds(store: Any, filters: dict[str, Any] | None = None) -> list[Example]:
    """Train-split records matching ``filters`` (default: human, pending or approved)."""
    f = dict(filters or {})
    f.setdefault("origin", "human")
    f.setdefault("status", ["pending", "approved"])
    f["split"] = "train"
    seeds = [e for e in store.iter_records(f) if e.split == "train"]
    return seeds


def sample_seed(base_seed: int, strategy: str, index: int) -> int:
    h = hashlib.sha256(f"{base_seed}:{strategy}:{index}".encode()).digest()
    return int.from_bytes(h[:4], "big")


def _last_user(messages: Messages) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "user")


def conversation_text(messages: Messages) -> str:
    names = {"user": "Customer", "assistant": "Agent"}
    return "\n".join(f"{names[m['role']]}: {m['content']}" for m in messages if m["role"] != "system")


def plan(strategy: str, n: int, seeds: list[Example], chunks: list[dict[str, Any]], fewshot: int = 3,
         seed: int = 0, prompt_dir: Path | None = None, doc_system: str = "") -> list[Candidate]:
    """Plan ``n`` candidates (deterministic for a given seed list and ``seed``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    rng = random.Random(seed)
    out: list[Candidate] = []
    if strategy == "doc-qa":
        if not chunks:
            raise ValueError("doc-qa needs document chunks: ingest documents first (e.g. python -m curate ingest data/abcd)")
        order = list(range(len(chunks)))
        rng.shuffle(order)
        for i in range(n):
            ch = chunks[order[i % len(order)]]
            out.append(Candidate(i, strategy, [ch["id"]], [ch["text"]],
                                 render("doc_qa", prompt_dir, title=ch.get("title") or ch["file"], text=ch["text"]),
                                 base=[{"role": "system", "content": doc_system}] if doc_system.strip() else []))
        return out
    if not seeds:
        raise ValueError("no seed records: the train split has no records matching the seed filters")
    if strategy == "paraphrase":
        order = list(seeds)
        rng.shuffle(order)
        for i in range(n):
            s = order[i % len(order)]
            u = s.messages[_last_user(s.messages)]["content"]
            out.append(Candidate(i, strategy, [s.id], [u], render("paraphrase", prompt_dir, text=u), label=s.label,
                                 base=s.messages))
        return out
    if strategy == "self-instruct":
        by_label: dict[str, list[Example]] = {}
        for s in seeds:
            by_label.setdefault(s.label or "", []).append(s)
        labels = sorted(by_label)
        rng.shuffle(labels)
        for i in range(n):
            group = by_label[labels[i % len(labels)]]
            picked = rng.sample(group, min(fewshot, len(group)))
            users = [p.messages[_last_user(p.messages)]["content"] for p in picked]
            examples = "\n".join(f"- {u}" for u in users)
            replies = {p.messages[-1]["content"] for p in picked}
            systems = {p.messages[0]["content"] if p.messages[0]["role"] == "system" else "" for p in picked}
            shared = replies.pop() if len(replies) == 1 and len(systems) == 1 else None
            sys_msg = [m for m in picked[0].messages[:1] if m["role"] == "system"] if len(systems) == 1 else []
            out.append(Candidate(i, strategy, [p.id for p in picked], users,
                                 render("self_instruct", prompt_dir, examples=examples),
                                 label=picked[0].label if shared is not None else None,
                                 base=sys_msg, shared_reply=shared))
        return out
    # multi-turn
    order = list(seeds)
    rng.shuffle(order)
    for i in range(n):
        s = order[i % len(order)]
        out.append(Candidate(i, strategy, [s.id], [s.user_text],
                             render("multi_turn", prompt_dir, conversation=conversation_text(s.messages)), base=s.messages))
    return out


# -- output -> chat ------------------------------------------------------------
_PREFIX = re.compile(
    r"^\s*(sure[,!.]?|okay[,!.]?|certainly[,!.]?|here(?:'s| is)[^:\n]*:|(?:rewritten|new|customer(?:'s)?|next)"
    r"(?: customer)?(?: message| version| question)?\s*:|message\s*:|customer\s*:)\s*",
    re.I,
)


def clean_output(text: str) -> str:
    """Strip chat boilerplate a small model wraps its answer in (lead-ins, quotes, trailing chatter)."""
    t = (text or "").strip()
    for _ in range(3):
        t2 = _PREFIX.sub("", t, count=1).strip()
        if t2 == t:
            break
        t = t2
    t = t.split("\n\n")[0].strip() if "\n\n" in t else t
    if len(t) >= 2 and t[0] in "\"'“" and t[-1] in "\"'”":
        t = t[1:-1].strip()
    return t


_QA = re.compile(r"question\s*[:\-]\s*(?P<q>.+?)\s+(?:\**\s*)answer\s*[:\-]\s*(?P<a>.+)", re.I | re.S)


def parse_qa(text: str) -> tuple[str, str] | None:
    m = _QA.search(text or "")
    if not m:
        return None
    q = m.group("q").strip().strip("*").strip()
    a = re.split(r"\n\n|\bquestion\s*:", m.group("a").strip(), maxsplit=1, flags=re.I)[0].strip().strip("*").strip()
    return (q, a) if q and a else None


def after_first_call(c: Candidate, text: str) -> None:
    """Turn the first answer into messages, or set ``answer_prompt`` for a second call, or ``error``."""
    c.raw.append(text)
    if c.strategy == "doc-qa":
        qa = parse_qa(text)
        if qa is None:
            c.error = "unparseable-output: no 'Question: … Answer: …' in the model output"
            return
        c.messages = [*c.base, {"role": "user", "content": qa[0]}, {"role": "assistant", "content": qa[1]}]
        return
    new_user = clean_output(text)
    if not new_user:
        c.error = "empty-output"
        return
    if c.strategy == "paraphrase":
        msgs = [dict(m) for m in c.base]
        msgs[_last_user(msgs)]["content"] = new_user
        c.messages = msgs
    elif c.strategy == "self-instruct":
        if c.shared_reply is not None:
            c.messages = [*c.base, {"role": "user", "content": new_user}, {"role": "assistant", "content": c.shared_reply}]
        else:
            c.answer_prompt = [*c.base, {"role": "user", "content": new_user}]
    else:  # multi-turn
        c.answer_prompt = [*c.base, {"role": "user", "content": new_user}]


def after_second_call(c: Candidate, text: str) -> None:
    c.raw.append(text)
    reply = (text or "").strip()
    if not reply:
        c.error = "empty-output: the reply call returned nothing"
        return
    c.messages = [*(c.answer_prompt or []), {"role": "assistant", "content": reply}]


def new_turns_text(c: Candidate) -> str:
    """The text the model wrote for this candidate (what heuristics judge)."""
    if not c.messages:
        return ""
    n_base = len(c.base) if c.strategy in ("multi-turn",) else 0
    if c.strategy == "paraphrase":
        return c.messages[_last_user(c.messages)]["content"]
    if c.strategy == "self-instruct":
        return "\n".join(m["content"] for m in c.messages if m["role"] == "user") + (
            "" if c.shared_reply is not None else "\n" + c.messages[-1]["content"])
    return "\n".join(m["content"] for m in c.messages[n_base:] if m["role"] != "system")
