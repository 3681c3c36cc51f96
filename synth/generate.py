"""The ``generate`` run: plan candidates, call the backend (cached), filter, store or log.

Each candidate ends in exactly one place:

* the store, as a ``pending`` record with ``origin={"kind": "synthetic", "parent_ids",
  "model", "strategy", "prompt_hash"}``, ``source=Source("synthetic", …)``,
  ``split="train"`` (synthetic records are never held out: they would grade the
  model on text that a model wrote from training seeds) and
  ``signals["reward"] = {"score", "rationale", "judge_model", "heuristics", "combined", "signals"}``
  (``score``: the judge's 1-5 as before; ``combined``: the filter's reward in [0, 1],
  :func:`synth.reward.combine`; ``signals``: each factor and what it was measured from);
* or the synth log ``<workspace>/reports/synth-log.jsonl`` with its scores and the
  reason (rejected by a filter, unparseable, a backend error after retries, or
  already in the store).

Accepted candidates are logged too (``decision: "accepted"``), so the log alone
accounts for every candidate of every run. Work is done in chunks; each chunk's
records are written in one transaction, and every model answer is cached the
moment it arrives, so a crashed run resumed with the same arguments repeats no call.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from curate.example import Example, MessageError, Source

from . import reward as rw
from .backends import Request, RunStats, run_requests
from .config import SynthConfig
from .strategies import Candidate, after_first_call, after_second_call, load_seeds, new_turns_text, plan, sample_seed

LOG_NAME = "synth-log.jsonl"


def prompt_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def log_path(store: Any) -> Path:
    p = Path(store.workspace) / "reports"
    p.mkdir(parents=True, exist_ok=True)
    return p / LOG_NAME


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="candidate", file=sys.stderr, dynamic_ncols=True)


def generate(
    store: Any,
    backend: Any,
    strategy: str,
    n: int,
    cfg: SynthConfig | None = None,
    seed_filters: dict[str, Any] | None = None,
    progress: bool = False,
    chunk: int = 0,
    sleep: Callable[[float], None] = time.sleep,
    embedder: rw.Embedder | None = None,
) -> dict[str, Any]:
    """Generate ``n`` candidates with ``strategy``; return the run's counters.

    ``embedder``: texts -> unit vectors for the novelty and label signals (default: ``cfg.reward_embedder``)."""
    cfg = cfg or SynthConfig()
    seeds = load_seeds(store, seed_filters) if strategy != "doc-qa" else []
    chunks = store.chunks() if strategy == "doc-qa" else []
    cands = plan(strategy, n, seeds, chunks, getattr(cfg, "fewshot", 3), cfg.seed,
                 doc_system=cfg.system_prompt)
    heldout = rw.HeldoutIndex.from_store(store)
    reward_model = rw.RewardModel.from_store(store, cfg, embed=embedder)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    counts: dict[str, Any] = {"run_id": run_id, "strategy": strategy, "backend": backend.name, "model": backend.model,
                              "requested": n, "seeds": len(seeds) if strategy != "doc-qa" else len(chunks),
                              "heldout_indexed": len(heldout), "reward_model": reward_model.info,
                              "min_reward": cfg.min_reward,
                              "accepted": 0, "rejected": 0, "duplicate": 0, "error": 0, "reasons": {},
                              "judge_parse": {"logprobs": 0, "json": 0, "pattern": 0, "unparseable": 0}, "calls": 0,
                              "cache_hits": 0, "retries": 0, "failed": 0}
    stats = RunStats()
    rng = random.Random(cfg.seed)

    def gen_params(i: int) -> dict[str, Any]:
        return {"max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "seed": sample_seed(cfg.seed, strategy, i)}

    judge_params = rw.judge_params(cfg)

    def call(reqs: list[tuple[list, dict]]) -> list[str | Exception]:
        res = run_requests(backend, [Request(m, p) for m, p in reqs], store=store, concurrency=cfg.concurrency,
                           max_retries=cfg.max_retries, base=cfg.backoff_base_s, cap=cfg.backoff_cap_s,
                           stats=stats, sleep=sleep, rng=rng)
        return [(r.data if r.data is not None else r.text) if r.error is None and r.text is not None
                else RuntimeError(r.error or "no answer") for r in res]

    chunk = chunk or getattr(cfg, "chunk_size", 16)
    bar = _progress(n, progress, f"synth {strategy}")
    t0 = time.time()
    with open(log_path(store), "a", encoding="utf-8") as log:
        for s in range(0, len(cands), chunk):
            part = cands[s : s + chunk]
            _run_chunk(part, store, backend, cfg, heldout, call, gen_params, judge_params, bar, log, counts, run_id,
                       reward_model)
    if bar is not None:
        bar.close()
    counts.update(calls=stats.calls, cache_hits=stats.cache_hits, retries=stats.retries, failed=stats.errors)
    counts["seconds"] = round(time.time() - t0, 2)
    counts["log"] = str(log_path(store))
    _save_counters(store, counts)
    return counts


# long: one chunk's pipeline in order (heuristics, signals, judge, combine, store, log); to be split into steps
def _run_chunk(part: list[Candidate], store: Any, backend: Any, cfg: SynthConfig, heldout: rw.HeldoutIndex,
               call: Any, gen_params: Any, judge_params: dict, bar: Any, log: Any, counts: dict, run_id: str,
               reward_model: rw.RewardModel) -> None:
    for c in part:
        c.prompt_hashes.append(prompt_hash(c.prompt))
    answers = call([(c.prompt, gen_params(c.index)) for c in part])
    for c, a in zip(part, answers):
        if isinstance(a, Exception):
            c.error = f"backend-error: {a}"
        else:
            after_first_call(c, a)
    second = [c for c in part if c.error is None and c.answer_prompt is not None]
    if second:
        for c in second:
            c.prompt_hashes.append(prompt_hash(c.answer_prompt))
        answers = call([(c.answer_prompt, gen_params(c.index + 1_000_000)) for c in second])
        for c, a in zip(second, answers):
            if isinstance(a, Exception):
                c.error = f"backend-error: {a}"
            else:
                after_second_call(c, a)
    # heuristics (and message validation) before the judge: no judge call for a sure reject
    heur: dict[int, dict] = {}
    examples: dict[int, Example] = {}
    written: dict[int, str] = {}  # the text the model wrote: new user turn(s), else all new turns
    for c in part:
        if c.error is not None or not c.messages:
            c.error = c.error or "no-output"
            continue
        new_users = [m["content"] for m in c.messages[len(c.base):] if m["role"] == "user"]
        h = rw.heuristics(new_turns_text(c), c.seed_texts, heldout, cfg, new_users)
        heur[c.index] = h
        written[c.index] = "\n".join(new_users) or new_turns_text(c)
        reason = rw.heuristic_reason(h, cfg)
        if reason:
            c.error = reason
            continue
        try:
            examples[c.index] = _example(c, store, backend)
        except MessageError as e:
            c.error = f"invalid-chat: {e}"
    # reward signals (format, novelty, label) before the judge: the judge factor is at most 1, so a
    # candidate already below min_reward without it is a sure reject and costs no judge call
    sigs: dict[int, dict] = {}
    vecs: dict[int, Any] = {}
    measured = [c for c in part if c.index in examples]
    if measured:
        ms, V = reward_model.measure([written[c.index] for c in measured], [examples[c.index].label for c in measured],
                                     [c.seed_texts for c in measured], [examples[c.index].id for c in measured])
        for k, (c, sg) in enumerate(zip(measured, ms)):
            sigs[c.index] = sg
            if V is not None:
                vecs[c.index] = V[k]
            reason = rw.reward_reason(sg, cfg)
            if reason:
                c.error = reason
                del examples[c.index]
    judged: dict[int, dict] = {}
    to_judge = [c for c in part if c.index in examples]
    if cfg.judge and to_judge:
        outs = call([(rw.judge_prompt(examples[c.index].messages), judge_params) for c in to_judge])
        for c, o in zip(to_judge, outs):
            if isinstance(o, Exception):
                c.error = f"backend-error (judge): {o}"
                del examples[c.index]
            else:
                judged[c.index] = rw.judge_result(o)
                counts["judge_parse"][judged[c.index]["parse"]] += 1
    keep: list[Example] = []
    for c in part:
        if c.index not in examples:
            continue
        j = judged.get(c.index)
        sg = sigs[c.index]
        sg["judge"] = rw.judge_factor(j["score"]) if j else None
        reason = rw.decide(heur[c.index], j, cfg, sg)
        if reason:
            c.error = reason
            del examples[c.index]
            continue
        ex = examples[c.index]
        ex.signals["reward"] = {
            "score": j["score"] if j else None,
            "rationale": j["rationale"] if j else "",
            "judge_model": f"{backend.name}:{backend.model}" if j else None,
            "judge_parse": j["parse"] if j else "off",
            "judge_probs": j.get("probs") if j else None,
            "judge_mass": j.get("mass") if j else None,
            "heuristics": heur[c.index],
            "combined": rw.combine(sg),  # the filter's reward, 0..1: format × novelty × label × judge
            "min_reward": cfg.min_reward,
            "signals": sg,
        }
        keep.append(ex)
    added, present = store.add_examples(keep, occurrences=False) if keep else ([], [])
    added_set = set(added)
    new = [c.index for c in part if c.index in examples and examples[c.index].id in added_set and c.index in vecs]
    if new:
        reward_model.add_rows([examples[i].id for i in new], np.stack([vecs[i] for i in new]))
    for c in part:
        ex = examples.get(c.index)
        if ex is not None:
            decision, reason = ("accepted", None) if ex.id in added_set else ("duplicate", f"duplicate: already in the store as {ex.id}")
        else:
            decision = "error" if (c.error or "").startswith(("backend-error", "no-output")) else "rejected"
            reason = c.error
        counts[decision] += 1
        if reason:
            key = reason.split(":")[0]
            counts["reasons"][key] = counts["reasons"].get(key, 0) + 1
        j = judged.get(c.index)
        log.write(json.dumps({
            "run_id": run_id, "at": time.time(), "decision": decision, "reason": reason, "strategy": c.strategy,
            "candidate": c.index, "parent_ids": c.parent_ids, "record_id": ex.id if ex is not None else None,
            "messages": c.messages, "raw": c.raw, "judge": j, "heuristics": heur.get(c.index),
            "reward": ({"combined": rw.combine(sigs[c.index]), "signals": sigs[c.index]} if c.index in sigs else None),
            "backend": backend.name, "model": backend.model, "prompt_hash": c.prompt_hashes[0] if c.prompt_hashes else None,
        }, ensure_ascii=False) + "\n")
    log.flush()
    if bar is not None:
        bar.update(len(part))


def _example(c: Candidate, store: Any, backend: Any) -> Example:
    group = ""
    if c.strategy == "doc-qa":
        group = f"synth-doc:{c.parent_ids[0]}"
    else:
        group = f"synth:{c.parent_ids[0]}"
    return Example(
        messages=c.messages or [],
        source=Source("synthetic", file=f"synth:{c.strategy}", loc=f"candidate {c.index}", ref=c.parent_ids[0]),
        group=group,
        split="train",
        origin={"kind": "synthetic", "parent_ids": list(c.parent_ids), "model": f"{backend.name}:{backend.model}",
                "strategy": c.strategy, "prompt_hash": ":".join(c.prompt_hashes)},
        label=c.label if c.strategy in ("paraphrase", "self-instruct") else None,
    )


def _save_counters(store: Any, run: dict[str, Any]) -> None:
    prev = store.meta_get("synth_counters") or {}
    tot = dict(prev.get("totals") or {})
    for k in ("requested", "accepted", "rejected", "duplicate", "error", "calls", "cache_hits", "retries"):
        tot[k] = tot.get(k, 0) + int(run.get(k, 0))
    reasons = dict(tot.get("reasons") or {})
    for k, v in run["reasons"].items():
        reasons[k] = reasons.get(k, 0) + v
    tot["reasons"] = reasons
    store.meta_put("synth_counters", {"totals": tot, "runs": int(prev.get("runs", 0)) + 1,
                                      "last_run": {k: v for k, v in run.items()}})
