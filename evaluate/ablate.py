"""``python -m evaluate ablate --snapshot S``: what did the curation buy?

Trains the same recipe on variants of an approved snapshot ``S`` that differ only in their train rows, for K
seeds each, scores every run on S's held-out items (the same ids in every variant) and writes one table
(``ablation.md`` + ``ablation.json``) and one plot (``ablation.png``) into ``--out``.

Variants (train rows; the held-out split is S's, row for row, in every variant):

``raw``
    every human train-split record the review had approved when S was created (verdicts as of S's
    ``created_at``), with the **dedup gate ignored**: exact, near and semantic duplicates come back.
    Still removed, so that the held-out items stay unseen: records with a ``leakage`` signal (the leakage
    gate is kept) and the held-out check below.
``gated``
    S's own human train rows (review and both gates applied), as frozen in S. The reference.
``gated+synthetic``
    ``gated`` plus the synthetic train records in the store (the reward filter let every one of them in),
    pending or approved (not rejected or edited away by a reviewer), minus what the gates block today
    (leakage; ``duplicate_of`` unless a person approved it after the flag), plus any synthetic row S holds.
``gated+synthetic-unfiltered``
    ``gated+synthetic`` plus every candidate the reward filter rejected (``reports/synth-log.jsonl``,
    ``decision: rejected`` with a valid chat) except those rejected as similar to a held-out record.

Held-out check, in every variant: a train row whose id or group is a held-out row's, or whose user turns
equal a held-out row's after the detectors' normalisation (:func:`curate.minhash.normalize`), is dropped
(and counted). A variant with no train rows, or with the same train ids as a variant built before it
(``gated`` first, then the order above), is reported and skipped. Rows the source workspace never approved
(pending synthetic records, reward-rejected candidates) are approved by the rule ``ablate-rule`` *in the
ablation's own workspace* (``--out/workspace``) and listed in each variant manifest's ``ablation`` block; S
and its workspace are only read.

Every run trains ``--steps`` optimizer steps with the same config and seed set, so the variants get the
same compute and bigger variants see each row fewer times. Evaluation reuses :mod:`evaluate`'s generation and
report (``report.json``, ``predictions.jsonl`` per run; the base model's replies are generated once and
shared). The table: per variant and metric the mean over seeds, the per-seed values, and the difference
from ``gated`` with a paired bootstrap 95 % interval over held-out items: each item's score is averaged over
the K seeds first, then items are resampled (1000 times; 300 for macro-F1, which is recomputed per seed on
each resample). The interval is item-sampling noise of the seed-averaged runs; seed-to-seed noise shows in
the per-seed values (and per-seed differences), not in the interval.
"""
from __future__ import annotations

import argparse
import calendar
import json
import os
import shutil
import sys
import textwrap
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .metrics import bootstrap_delta, first_line, macro_f1, metric_kinds, per_example
from .report import read_predictions

VARIANTS = ("raw", "gated", "gated+synthetic", "gated+synthetic-unfiltered")
REFERENCE = "gated"
SYNTHETIC_VARIANTS = ("gated+synthetic", "gated+synthetic-unfiltered")
RULE = "ablate-rule"
SYNTH_LOG = "synth-log.jsonl"
TABLE = "ablation"  # ablation.json / ablation.md / ablation.png


class AblationError(RuntimeError):
    pass


def parse_variants(spec: str) -> list[str]:
    names = [v.strip() for v in spec.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise AblationError(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(VARIANTS)}")
    if not names:
        raise AblationError(f"no variant given; known: {', '.join(VARIANTS)}")
    return [v for v in VARIANTS if v in names]  # canonical order, duplicates dropped


def slug(variant: str) -> str:
    return variant.replace("+", "-")


def snapshot_name(source: str, variant: str) -> str:
    from curate.snapshot import NAME_RE

    name = f"{source}-abl-{slug(variant)}"
    if not NAME_RE.match(name):
        raise AblationError(f"variant snapshot name {name!r} is not a valid snapshot name (max 64 characters)")
    return name


# -- selection -----------------------------------------------------------------------------------------------

class HeldoutGuard:
    """Refuses train rows that are a held-out row by id, by group or by normalised user text."""

    def __init__(self, held_rows: Sequence[dict]):
        from curate.minhash import normalize

        self._norm = normalize
        self.ids = {r["id"] for r in held_rows}
        self.groups = {r["group"] for r in held_rows if r.get("group")}
        self.texts = {self._key(r["messages"]): r["id"] for r in held_rows}

    def _key(self, messages: Sequence[dict]) -> str:
        return self._norm("\n".join(m["content"] for m in messages if m["role"] == "user"))

    def why(self, rid: str, group: str | None, messages: Sequence[dict]) -> str | None:
        if rid in self.ids:
            return "held-out id"
        if group and group in self.groups:
            return "held-out group"
        if self._key(messages) in self.texts:
            return "held-out text"
        return None


@dataclass
class Variant:
    name: str
    rows: list[dict] = field(default_factory=list)  # snapshot rows (curate.snapshot schema), status approved
    rule_approved: dict[str, str] = field(default_factory=dict)  # id -> status in the source workspace
    removed: Counter = field(default_factory=Counter)  # why candidate rows were left out
    added: dict[str, int] = field(default_factory=dict)  # rows over gated, by kind

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(r["id"] for r in self.rows)


@dataclass
class Selection:
    source: str
    workspace: Path
    manifest: dict
    heldout: list[dict]
    variants: dict[str, Variant]
    skipped: dict[str, str]
    notes: list[str]


def _as_rows(examples, source_status: dict[str, str] | None = None) -> list[dict]:
    from curate.snapshot import _rows

    rows = _rows(list(examples))
    for r in rows:
        if source_status is not None and r["status"] != "approved":
            source_status[r["id"]] = r["status"]
        r["status"] = "approved"
    return rows


def _origin(row: dict) -> str:
    o = row.get("origin")
    return (json.loads(o) if isinstance(o, str) else (o or {})).get("kind", "human")


def _approved_as_of(store, cutoff: float) -> set[str]:
    """Ids whose review status, from the events made before ``cutoff`` only, was ``approved``."""
    from curate.status import derive_status

    by_rec: dict[str, list[dict]] = defaultdict(list)
    for ev in store.events():
        if ev["created_at"] < cutoff:
            by_rec[ev["record_id"]].append(ev)
    return {rid for rid, evs in by_rec.items() if derive_status(evs, store.config.min_approvals) == "approved"}


def _keep(guard: HeldoutGuard, v: Variant, rid: str, group: str | None, messages, seen: set[str]) -> bool:
    if rid in seen:
        return False
    why = guard.why(rid, group, messages)
    if why:
        v.removed[why] += 1
        return False
    seen.add(rid)
    return True


def _raw(store, s_man: dict, s_human: list[dict], guard: HeldoutGuard) -> Variant:
    v = Variant("raw")
    seen: set[str] = set()
    v.rows = [r for r in s_human if _keep(guard, v, r["id"], r.get("group"), r["messages"], seen)]
    cutoff = calendar.timegm(time.strptime(s_man["created_at"], "%Y-%m-%dT%H:%M:%SZ")) + 1.0  # stamp is whole seconds
    approved = _approved_as_of(store, cutoff)
    extra, added = [], Counter()
    for e in store.iter_records({"origin": "human", "split": "train"}):
        if e.id in seen or e.id not in approved:
            continue
        if e.signals.get("leakage"):
            v.removed["leakage gate (kept in raw)"] += 1
        elif _keep(guard, v, e.id, e.group, e.messages, seen):
            extra.append(e)
            added["dedup-flagged" if e.signals.get("duplicate_of") else "other approved, not in S"] += 1
    v.rows += _as_rows(extra)
    v.added = dict(added)
    return v


def _synthetic(store, s_synth: list[dict], guard: HeldoutGuard, seen: set[str], v: Variant) -> list[dict]:
    """Synthetic rows that passed the reward filter (S's own, then the store's pending/approved ones the gates
    pass today)."""
    from curate.gates import blocked

    rows = [r for r in s_synth if _keep(guard, v, r["id"], r.get("group"), r["messages"], seen)]
    cands = [e for e in store.iter_records({"origin": "synthetic", "split": "train", "status": ["approved", "pending"]})
             if e.id not in seen]
    gate = blocked(store, cands)
    for why in gate.values():
        v.removed["gate: " + why.split(" ")[0]] += 1
    kept = [e for e in cands if e.id not in gate and _keep(guard, v, e.id, e.group, e.messages, seen)]
    return rows + _as_rows(kept, v.rule_approved)


def _log_label(entry: dict, parents: dict[str, Any]) -> str | None:
    if "label" in entry:
        return entry["label"]
    ps = [parents[p] for p in entry.get("parent_ids") or [] if p in parents]
    labels = {p.label for p in ps}
    if not ps or len(labels) != 1 or entry.get("strategy") not in ("paraphrase", "self-instruct"):
        return None
    if entry["strategy"] == "self-instruct" and any(p.messages[-1]["content"] != entry["messages"][-1]["content"]
                                                     for p in ps):
        return None  # no shared reply: the second call answered it, no label (as synth.generate does)
    return labels.pop()


def reward_rejected(store, guard: HeldoutGuard, seen: set[str], v: Variant) -> list[dict]:
    """The candidates the reward filter rejected, from the synth log, as snapshot rows (never held-out-similar)."""
    from curate.example import Example, MessageError, Source

    path = Path(store.workspace) / "reports" / SYNTH_LOG
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            v.removed["unreadable log line"] += 1
            continue
        if e.get("decision") == "rejected" and e.get("messages"):
            entries.append(e)
    pids = sorted({p for e in entries for p in e.get("parent_ids") or []})
    parents = {p.id: p for p in store.get_many(pids)}
    out = []
    for e in entries:
        reason = e.get("reason") or ""
        if reason.startswith("heldout"):  # a leak into the held-out split: never trained on, in any variant
            v.removed["reward filter: heldout-similar (kept out)"] += 1
            continue
        pid = (e.get("parent_ids") or [""])[0]
        try:
            ex = Example(messages=e["messages"],
                         source=Source("synthetic", file=f"synth:{e.get('strategy')}", loc=f"candidate {e.get('candidate')}",
                                       ref=pid),
                         group=f"synth-doc:{pid}" if e.get("strategy") == "doc-qa" else f"synth:{pid}", split="train",
                         origin={"kind": "synthetic", "parent_ids": list(e.get("parent_ids") or []),
                                 "model": f"{e.get('backend')}:{e.get('model')}", "strategy": e.get("strategy"),
                                 "prompt_hash": e.get("prompt_hash"), "reward_rejected": reason},
                         signals={"synth_log": {k: e.get(k) for k in ("reason", "reward", "judge", "heuristics")}},
                         label=_log_label(e, parents))
        except (MessageError, KeyError, TypeError):
            v.removed["log candidate without a valid chat"] += 1
            continue
        if ex.id in seen:
            v.removed["log candidate equal to a row already in"] += 1
        elif _keep(guard, v, ex.id, ex.group, ex.messages, seen):
            ex.status = "reward-rejected (not in the store)"
            out.append(ex)
    return _as_rows(out, v.rule_approved)


def select(store, source: str, variants: Sequence[str]) -> Selection:
    """The train rows of each requested variant of snapshot ``source`` (plus ``gated``, the reference)."""
    from curate import snapshot as snap

    d = snap.snapshots_dir(store) / source
    if not (d / "manifest.json").exists():
        have = [s["name"] for s in snap.list_snapshots(store)]
        raise AblationError(f"no snapshot named {source!r} in {snap.snapshots_dir(store)} (have: {have or 'none'}); "
                            f"create one with `python -m curate snapshot create NAME`")
    problems = snap.verify(store, source)
    if problems:
        raise AblationError(f"snapshot {source} failed verification: {'; '.join(problems)}")
    s_man = snap.show(store, source)
    s_train = snap.read_rows(d / "train.parquet")
    held = snap.read_rows(d / "heldout.parquet")
    if not held:
        raise AblationError(f"snapshot {source} has no held-out rows: nothing to evaluate the variants on")
    guard = HeldoutGuard(held)
    notes: list[str] = []
    s_human = [r for r in s_train if _origin(r) == "human"]
    s_synth = [r for r in s_train if _origin(r) == "synthetic"]
    wanted = list(variants)
    if REFERENCE not in wanted:
        notes.append(f"{REFERENCE} added: every difference is taken against it")
        wanted = [v for v in VARIANTS if v in wanted or v == REFERENCE]

    gated = Variant(REFERENCE)
    seen: set[str] = set()
    gated.rows = [r for r in s_human if _keep(guard, gated, r["id"], r.get("group"), r["messages"], seen)]
    if gated.removed:
        notes.append(f"warning: {sum(gated.removed.values())} of S's own train rows match a held-out row "
                     f"({dict(gated.removed)}); they are left out of every variant")
    if not gated.rows:
        raise AblationError(f"snapshot {source} has no human train rows: {REFERENCE}, the reference, would be empty")
    built: dict[str, Variant] = {REFERENCE: gated}
    if "raw" in wanted:
        built["raw"] = _raw(store, s_man, s_human, guard)
    if any(v in wanted for v in SYNTHETIC_VARIANTS):
        gs = Variant("gated+synthetic", rows=list(gated.rows))
        seen_s = set(gated.ids)
        synth = _synthetic(store, s_synth, guard, seen_s, gs)
        gs.rows += synth
        gs.added = {"synthetic (passed the reward filter)": len(synth)}
        gu = Variant("gated+synthetic-unfiltered", rows=list(gs.rows), rule_approved=dict(gs.rule_approved),
                     removed=Counter(gs.removed))
        rejected = reward_rejected(store, guard, set(seen_s), gu)
        gu.rows += rejected
        gu.added = {**gs.added, "synthetic (rejected by the reward filter)": len(rejected)}
        if not synth and not rejected:
            log = Path(store.workspace) / "reports" / SYNTH_LOG
            raise AblationError(
                f"no synthetic rows for {', '.join(v for v in SYNTHETIC_VARIANTS if v in wanted)}: the workspace "
                f"has no usable synthetic train record and {log} lists no reward-rejected candidate; run "
                f"`python -m synth generate --workspace {store.workspace} --strategy paraphrase --n 50` first, or drop "
                f"the synthetic variants")
        built.update({"gated+synthetic": gs, "gated+synthetic-unfiltered": gu})

    out: dict[str, Variant] = {}
    skipped: dict[str, str] = {}
    for name in [REFERENCE] + [v for v in VARIANTS if v in wanted and v != REFERENCE]:
        v = built[name]
        same = next((o for o in out.values() if o.ids == v.ids), None)
        if not v.rows:
            skipped[name] = "empty: no train row left"
        elif same is not None:
            skipped[name] = f"identical to {same.name} (the same {len(v.rows)} train rows)"
        else:
            out[name] = v
    return Selection(source, Path(store.workspace), s_man, held, out, skipped, notes)


# -- variant snapshots ---------------------------------------------------------------------------------------

def write_snapshot(ab_store, name: str, sel: Selection, v: Variant) -> Path:
    """Freeze one variant as snapshot ``name`` in the ablation workspace (reused when it holds the same rows)."""
    from curate import snapshot as snap

    d = snap.snapshots_dir(ab_store) / name
    if d.exists():
        problems = snap.verify(ab_store, name)
        old = {r["id"] for r in snap.read_rows(d / "train.parquet", columns=["id"])}
        if problems or old != set(v.ids):
            raise AblationError(f"{d} already exists with other rows or fails verification; use a new --out")
        return d
    tmp = d.with_name(f".{name}.tmp-{os.getpid()}")
    tmp.mkdir()
    rows = {"train.parquet": v.rows, "heldout.parquet": sel.heldout}
    for f, rs in rows.items():
        snap._write_parquet(rs, tmp / f)
    by_status = Counter(v.rule_approved.values())
    manifest = {
        "name": name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {f: {"sha256": snap.sha256_file(tmp / f), "rows": len(rs)} for f, rs in rows.items()},
        "counts": {"records": len(v.rows) + len(sel.heldout),
                   "by_split": {"train": len(v.rows), "heldout": len(sel.heldout)},
                   "by_source_kind": dict(Counter(r["source_kind"] for r in v.rows + sel.heldout)),
                   "by_origin": dict(Counter(_origin(r) for r in v.rows + sel.heldout)),
                   "by_label": dict(sorted(Counter(r.get("label") or "none" for r in v.rows + sel.heldout).items()))},
        "review": {"events_by_reviewer": {RULE: len(v.rule_approved)} if v.rule_approved else {}},
        "gates": {"blocked": sum(v.removed.values()), "blocked_by_reason": dict(v.removed), "reports": {},
                  "blocked_ids": []},
        "config": sel.manifest.get("config", {}), "code_version": snap.code_version(), "parent": None,
        "note": f"ablation variant {v.name} of snapshot {sel.source} ({sel.workspace})",
        "ablation": {"source_snapshot": sel.source, "source_workspace": str(sel.workspace.resolve()),
                     "source_manifest_sha256": snap.sha256_file(sel.workspace / "snapshots" / sel.source / "manifest.json"),
                     "variant": v.name, "added_over_gated": v.added, "removed": dict(v.removed),
                     "rule_approved": {"reviewer": RULE, "rows": len(v.rule_approved), "by_source_status": dict(by_status),
                                       "ids": sorted(v.rule_approved)[:1000]}},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for f in (*rows, "manifest.json"):
        os.chmod(tmp / f, 0o444)
    os.rename(tmp, d)
    ab_store.meta_put(f"snapshot:{name}", {"manifest_sha256": snap.sha256_file(d / "manifest.json"),
                                           "created_at": manifest["created_at"]})
    return d


# -- training and evaluation ---------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[ablate] {msg}", file=sys.stderr, flush=True)


def train_runs(plan: dict[str, str], cfg, seeds: Sequence[int], ab_ws: Path, out: Path) -> dict[str, dict[int, Path]]:
    """Train every (variant, seed) with ``cfg`` (its ``max_steps`` and ``seed`` set per run); a finished run of the
    same snapshot, steps and seed in ``out`` is reused, an unfinished one is started again."""
    from train.recipe import TrainError, train

    runs: dict[str, dict[int, Path]] = {}
    todo = [(v, s) for v in plan for s in seeds]
    for k, (variant, seed) in enumerate(todo, 1):
        run = out / "runs" / f"{slug(variant)}-seed{seed}"
        runs.setdefault(variant, {})[seed] = run
        man_p = run / "manifest.json"
        if man_p.exists():
            man = json.loads(man_p.read_text())
            if (man["snapshot"]["name"], man["seed"], man["config"]["max_steps"]) == (plan[variant], seed, cfg.max_steps):
                log(f"({k}/{len(todo)}) {variant} seed {seed}: reusing the finished run {run}")
                continue
            raise AblationError(f"{run} holds another run (snapshot {man['snapshot']['name']}, seed {man['seed']}); "
                                f"use a new --out")
        if run.exists():
            shutil.rmtree(run)  # an interrupted run of this ablation: start it again
        log(f"({k}/{len(todo)}) training {variant} seed {seed}: {cfg.max_steps} steps on snapshot {plan[variant]}")
        t0 = time.time()
        try:
            train(plan[variant], replace(cfg, seed=seed, output_dir=str(run)).validate(), str(ab_ws))
        except TrainError as e:
            raise AblationError(f"training {variant} seed {seed} failed: {e}") from None
        log(f"({k}/{len(todo)}) {variant} seed {seed} trained in {time.time() - t0:.0f} s")
    return runs


def evaluate_runs(runs: Sequence[Path], batch_size: int = 16, max_new_tokens: int | None = None, limit: int | None = None,
                  embedder: str | None = None) -> None:
    """Score every run on its held-out split (the same items in all): the base model's replies once, each
    run's adapter in turn on the same loaded base; each run gets report.json/md/png and predictions.jsonl."""
    from peft import PeftModel

    from train.card import write_card

    from .__main__ import base_model_path, baseline_predictions, build_report, generate, load_base, prepare

    todo = [r for r in runs if not ((r / "report.json").exists() and (r / "predictions.jsonl").exists())]
    if not todo:
        log("every run is evaluated already")
        return
    prepared = {r: prepare(r, limit) for r in todo}
    man0, _, sets0, _ = prepared[todo[0]]
    items = [(it.id, it.reference) for it in sets0[0].items]
    for r, (man, _, sets, _) in prepared.items():
        if [(it.id, it.reference) for it in sets[0].items] != items:
            raise AblationError(f"{r}'s held-out items differ from {todo[0]}'s: the variants must share S's held-out")
        if base_model_path(man) != base_model_path(man0):
            raise AblationError(f"{r} was trained on another base model than {todo[0]}")
    first = todo[0]
    tok, model = load_base(first, man0)
    model.eval()
    prompts = [it.prompt for it in sets0[0].items]
    mnt = max_new_tokens or min(256, max(len(tok(ref, add_special_tokens=False)["input_ids"]) for _, ref in items) + 4)
    t0 = time.time()
    base = generate(model, tok, prompts, mnt, batch_size, "base (once)")
    base_s = time.time() - t0
    peft, prev = None, None
    for k, run in enumerate(todo, 1):
        man, _, sets, train_rows = prepared[run]
        if (run / man.get("chat_template", "chat_template.jinja")).read_text() != tok.chat_template:
            raise AblationError(f"{run} was trained with another chat template than {first}")
        name = f"run{k}"
        if peft is None:
            peft = PeftModel.from_pretrained(model, run / man.get("adapter", "adapter"), adapter_name=name)
        else:
            peft.load_adapter(run / man.get("adapter", "adapter"), adapter_name=name)
            peft.set_adapter(name)
            peft.delete_adapter(prev)
        peft.eval()
        prev = name
        t1 = time.time()
        tuned = generate(peft, tok, prompts, mnt, batch_size, f"tuned {k}/{len(todo)} {run.name}")
        preds = {"heldout": {"base": base, "tuned": tuned}}
        extra, info, skipped = baseline_predictions(sets, train_rows, embedder, max_tokens={"heldout": mnt})
        preds["heldout"].update(extra["heldout"])
        build_report(run, man, sets, preds, info, skipped, {"heldout": mnt}, base_s + time.time() - t1)
        write_card(run)


# -- the table -------------------------------------------------------------------------------------------------

def _per_seed_f1(preds: dict[int, list[str]], refs: list[str], idx: Sequence[int] | None = None) -> dict[int, float]:
    idx = range(len(refs)) if idx is None else idx
    return {s: macro_f1([first_line(p[i]) for i in idx], [refs[i].strip() for i in idx]) for s, p in preds.items()}


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _scores(kind: str, preds: dict[int, list[str]], refs: list[str]) -> tuple[dict[int, float], list[float] | None]:
    """Per-seed value of one metric, and the per-item values averaged over seeds (None for macro-F1)."""
    if kind == "macro_f1":
        return _per_seed_f1(preds, refs), None
    vecs = {s: per_example(kind, p, refs) for s, p in preds.items()}
    return {s: _mean(x) for s, x in vecs.items()}, [_mean(x[i] for x in vecs.values()) for i in range(len(refs))]


def summarize(runs: dict[str, dict[int, Path]], reference: str = REFERENCE, n_boot: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """The ablation table from the runs' stored ``predictions.jsonl`` (held-out set; tuned predictions)."""
    if reference not in runs:
        raise AblationError(f"no {reference} runs: the table is taken against {reference}")
    stored = {v: {s: {r["id"]: r for r in read_predictions(p) if r["set"] == "heldout"} for s, p in by_seed.items()}
              for v, by_seed in runs.items()}
    ref_seeds = sorted(stored[reference])
    first = stored[reference][ref_seeds[0]]
    ids = sorted(first)
    refs = [first[i]["reference"] for i in ids]
    for v, by_seed in stored.items():
        if sorted(by_seed) != ref_seeds:
            raise AblationError(f"{v} has seeds {sorted(by_seed)}, {reference} {ref_seeds}: the seed sets must match")
        for s, got in by_seed.items():
            if sorted(got) != ids or [got[i]["reference"] for i in ids] != refs:
                raise AblationError(f"{v} seed {s} scored other held-out items than {reference}")
    closed = all(first[i].get("label") and first[i]["reference"].strip() == first[i]["label"] for i in ids)
    kinds = metric_kinds(refs, closed) + (["macro_f1"] if closed else [])
    order = [reference] + [v for v in runs if v != reference]
    tuned = {v: {s: [stored[v][s][i]["predictions"]["tuned"] for i in ids] for s in ref_seeds} for v in order}
    stats = {v: {k: _scores(k, tuned[v], refs) for k in kinds} for v in order}
    base = {s: [first[i]["predictions"].get("base", "") for i in ids] for s in ref_seeds[:1]}
    n, nb = len(ids), min(n_boot, 300)
    out: dict[str, Any] = {"n": n, "seeds": ref_seeds, "closed_label_set": closed, "reference": reference,
                           "primary_metric": "label_accuracy" if closed else "rouge_l", "ci95": CI_METHOD,
                           "base": {k: _mean(_scores(k, base, refs)[0].values()) for k in kinds}, "variants": {}}

    def f1_mean(v: str):
        return lambda idx: _mean(_per_seed_f1(tuned[v], refs, idx).values())

    for v in order:
        ms: dict[str, Any] = {}
        for k in kinds:
            (per_seed, avg), (ref_seed, ref_avg) = stats[v][k], stats[reference][k]
            mean = _mean(per_seed.values())
            if avg is None:  # macro-F1: recomputed per seed on each resample
                stat, ref_stat = f1_mean(v), f1_mean(reference)
                ci = bootstrap_delta(refs, refs, stat=stat, n=nb, seed=seed)
                dci = bootstrap_delta(refs, refs, stat=lambda idx: stat(idx) - ref_stat(idx), n=nb, seed=seed)
            else:
                ci = bootstrap_delta([0.0] * n, avg, n=n_boot, seed=seed)
                dci = bootstrap_delta(ref_avg, avg, n=n_boot, seed=seed)
            is_ref = v == reference
            ms[k] = {"mean": mean, "per_seed": {str(s): x for s, x in per_seed.items()}, "ci95": list(ci),
                     "delta": None if is_ref else mean - _mean(ref_seed.values()),
                     "delta_ci95": None if is_ref else list(dci),
                     "delta_per_seed": None if is_ref else {str(s): per_seed[s] - ref_seed[s] for s in per_seed}}
        out["variants"][v] = {"runs": {str(s): str(p) for s, p in runs[v].items()}, "metrics": ms}
    return out


CI_METHOD = ("paired bootstrap over held-out items, 95 %: each item's score is averaged over the seeds first, "
             "then the same resampled items score both variants (1000 resamples; macro-F1: 300, recomputed per seed "
             "on each resample and averaged). It measures which items happened to be held out, not seed noise: "
             "see per_seed / delta_per_seed for that")


def render(res: dict[str, Any]) -> str:
    ref = res["reference"]
    seeds = ", ".join(str(s) for s in res["seeds"])
    L = [f"# Ablation of snapshot `{res.get('snapshot', '?')}`", "",
         f"{res['n']} held-out items (the same in every variant), seeds {seeds}, "
         f"{res.get('settings', {}).get('steps', '?')} steps per run. Δ = variant − {ref}; 95 % CI: "
         f"{res['ci95']}.", ""]
    for name, why in (res.get("skipped") or {}).items():
        L.append(f"- {name}: skipped ({why})")
    for note in res.get("notes") or []:
        L.append(f"- {note}")
    if res.get("skipped") or res.get("notes"):
        L.append("")
    sel = res.get("selection", {})
    order = [res["primary_metric"]] + [k for k in res["base"] if k != res["primary_metric"]]
    for k in order:
        L += [f"## {k}", "", f"| variant | train rows | mean over seeds | per seed | 95% CI | Δ vs {ref} | 95% CI of Δ "
                            "| Δ per seed |", "|---|---|---|---|---|---|---|---|",
              f"| base model (no adapter) | — | {res['base'][k]:.3f} | — | — | — | — | — |"]
        for v, d in res["variants"].items():
            m = d["metrics"][k]
            per = ", ".join(f"{x:.3f}" for x in m["per_seed"].values())
            rows = sel.get(v, {}).get("train_rows", "?")
            if m["delta"] is None:
                dcells = "— | — | —"
            else:
                dcells = (f"{m['delta']:+.3f} | [{m['delta_ci95'][0]:+.3f}, {m['delta_ci95'][1]:+.3f}] | "
                          + ", ".join(f"{x:+.3f}" for x in m["delta_per_seed"].values()))
            L.append(f"| {v} | {rows} | {m['mean']:.3f} | {per} | [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] | {dcells} |")
        L.append("")
    if sel:
        L += ["## Variants", "", "| variant | snapshot | train rows | added over gated | left out (why) | rule-approved |",
              "|---|---|---|---|---|---|"]
        def fmt(d: dict) -> str:
            return ", ".join(f"{a} {b}" for a, b in d.items()) or "—"

        for v, s in sel.items():
            L.append(f"| {v} | `{s['snapshot']}` | {s['train_rows']} | {fmt(s['added_over_gated'])} | "
                     f"{fmt(s['removed'])} | {s['rule_approved']} |")
        L.append("")
    return "\n".join(L)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [res["primary_metric"]] + [k for k in res["base"] if k != res["primary_metric"]]
    names = list(res["variants"])
    fig, axes = plt.subplots(1, len(order), figsize=(3.6 * len(order) + 1, 4.4), squeeze=False)
    for ax, k in zip(axes[0], order):
        ms = [res["variants"][v]["metrics"][k] for v in names]
        xs = list(range(len(names)))
        means = [m["mean"] for m in ms]
        err = [[m["mean"] - m["ci95"][0] for m in ms], [m["ci95"][1] - m["mean"] for m in ms]]
        ax.bar(xs, means, 0.6, yerr=err, capsize=4, color=["#4c72b0" if v == res["reference"] else "#8da0cb" for v in names])
        for x, m in zip(xs, ms):
            ax.plot([x] * len(m["per_seed"]), list(m["per_seed"].values()), "k.", ms=5)
            if m["delta"] is not None:
                ax.annotate(f"Δ {m['delta']:+.3f}\n[{m['delta_ci95'][0]:+.2f}, {m['delta_ci95'][1]:+.2f}]",
                            (x, min(1.0, m["ci95"][1]) + 0.02), ha="center", fontsize=6)
        ax.axhline(res["base"][k], ls="--", color="grey", lw=1, label="base model")
        ax.set_xticks(xs, [v.replace("+", "+\n") for v in names], fontsize=6.5)
        ax.set_ylim(0, 1.12)
        ax.set_title(k, fontsize=9)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"ablation of {res.get('snapshot', '?')}: n={res['n']} held-out, seeds {res['seeds']}, "
                 f"bars = mean over seeds with 95% item-bootstrap CI, dots = seeds", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(res: dict[str, Any], out: Path) -> dict[str, str]:
    files = {"json": out / f"{TABLE}.json", "md": out / f"{TABLE}.md", "png": out / f"{TABLE}.png"}
    res["files"] = {k: str(p) for k, p in files.items()}
    files["json"].write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    files["md"].write_text(render(res), encoding="utf-8")
    plot(res, files["png"])
    return res["files"]


# -- the command -----------------------------------------------------------------------------------------------

def selection_summary(sel: Selection, names: dict[str, str]) -> dict[str, Any]:
    return {v.name: {"snapshot": names[v.name], "train_rows": len(v.rows), "added_over_gated": v.added,
                     "removed": dict(v.removed), "rule_approved": len(v.rule_approved)} for v in sel.variants.values()}


def build_variants(workspace: str | None, source: str, variants: Sequence[str], out: Path
                   ) -> tuple[Selection, dict[str, str], Path]:
    """Select the variants of ``source`` and freeze each as its own snapshot in ``out/workspace``; returns the
    selection, variant → snapshot name, and the ablation workspace."""
    from curate.store import open_store

    store = open_store(workspace)
    try:
        sel = select(store, source, variants)
    finally:
        store.close()
    ab_ws = out / "workspace"
    ab = open_store(ab_ws)
    try:
        names = {v: snapshot_name(source, v) for v in sel.variants}
        for v, var in sel.variants.items():
            write_snapshot(ab, names[v], sel, var)
    finally:
        ab.close()
    return sel, names, ab_ws


def run_ablation(source: str, variants: Sequence[str], *, steps: int, seeds: int, workspace: str | None, out: Path,
                 train_config: str | None = None, train_overrides: dict[str, str] | None = None, batch_size: int = 16,
                 max_new_tokens: int | None = None, limit: int | None = None, embedder: str | None = None,
                 dry_run: bool = False) -> dict[str, Any]:
    from train.config import load

    if steps < 1 or seeds < 1:
        raise AblationError("--steps and --seeds must be >= 1")
    try:
        cfg = load(train_config, {**(train_overrides or {}), "max_steps": steps})
    except ValueError as e:
        raise AblationError(str(e)) from None
    seed_list = [cfg.seed + i for i in range(seeds)]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sel, names, ab_ws = build_variants(workspace, source, variants, out)
    for v, why in sel.skipped.items():
        log(f"skipping {v}: {why}")
    for note in sel.notes:
        log(note)
    summary = selection_summary(sel, names)
    for v, s in summary.items():
        log(f"{v}: {s['train_rows']} train rows (snapshot {s['snapshot']}), {len(sel.heldout)} held-out")
    res: dict[str, Any] = {"snapshot": source, "workspace": str(sel.workspace), "ablation_workspace": str(ab_ws),
                           "selection": summary, "skipped": sel.skipped, "notes": sel.notes,
                           "settings": {"steps": steps, "seeds": seed_list, "train_config": cfg.to_dict(),
                                        "eval": {"batch_size": batch_size, "max_new_tokens": max_new_tokens,
                                                 "limit": limit, "embedder": embedder or "none"}}}
    if dry_run:
        return res
    runs = train_runs(names, cfg, seed_list, ab_ws, out)
    t1 = time.time()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    evaluate_runs([p for by_seed in runs.values() for p in by_seed.values()], batch_size, max_new_tokens, limit, embedder)
    t2 = time.time()
    res.update(summarize(runs))
    res["settings"]["seconds"] = {"select_and_train": round(t1 - t0, 1), "evaluate": round(t2 - t1, 1)}
    write_outputs(res, out)
    return res


def _overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise AblationError(f"--train {it!r}: expected KEY=VALUE (a `python -m train` config field)")
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate ablate", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=textwrap.fill(
        "Train the same recipe on variants of snapshot S that differ only in their train rows (raw: the dedup gate "
        "ignored; gated: S's human rows; gated+synthetic: plus the synthetic rows the reward filter passed; "
        "gated+synthetic-unfiltered: plus the candidates it rejected), K seeds each, score every run on S's "
        "held-out items, and write ablation.md / .json / .png (mean over seeds, per-seed values, difference from "
        "gated with a paired bootstrap 95% CI over items) into --out. Each variant is frozen as its own snapshot "
        "S-abl-<variant> in --out/workspace; S and its workspace are only read.", 100),
        epilog="Variant rules, the interval and the outputs: docs/evaluate.md (Ablations)")
    p.add_argument("--snapshot", required=True, metavar="S", help="the approved snapshot to ablate")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma list of {', '.join(VARIANTS)} (default: all; gated is always built, it is the reference)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run, the same for every variant (default 20)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per variant: the train config's seed, seed+1, … (default 2)")
    p.add_argument("--workspace", metavar="W", help="S's workspace (default: $WORKBENCH_HOME or data/workspace)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/ablate-<S>-<time>); rerunning into the "
                                                "same folder reuses finished snapshots, runs and evaluations")
    p.add_argument("--config", metavar="FILE.toml", help="`python -m train` config file for every run")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="a `python -m train` config field for every run, e.g. --train lora_layers=8 (repeatable)")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size (16)")
    p.add_argument("--max-new-tokens", type=int, help="default: the longest held-out reference + 4 tokens (max 256)")
    p.add_argument("--limit", type=int, help="score only the first N held-out items (by id)")
    p.add_argument("--embedder", default="none", metavar="MODEL",
                   help="embedding-classifier baseline in each run's report (default none: off; the table does not "
                        "use it)")
    p.add_argument("--dry-run", action="store_true", help="select and freeze the variant snapshots, print the plan, "
                                                          "train nothing")
    p.add_argument("--json", action="store_true", help="print the result JSON instead of the markdown table")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    out = Path(a.out or f"runs/ablate-{a.snapshot}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        res = run_ablation(a.snapshot, parse_variants(a.variants), steps=a.steps, seeds=a.seeds, workspace=a.workspace,
                           out=out, train_config=a.config, train_overrides=_overrides(a.train), batch_size=a.batch_size,
                           max_new_tokens=a.max_new_tokens, limit=a.limit,
                           embedder=None if a.embedder in ("", "none") else a.embedder, dry_run=a.dry_run)
    except AblationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json or a.dry_run:
        print(json.dumps(res, indent=2, ensure_ascii=False))
    else:
        print(render(res))
        print(f"written: {', '.join(res['files'].values())}")
    return 0
