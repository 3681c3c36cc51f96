"""``python -m evaluate ablate``: which record lands in which variant, the variant snapshots (S untouched, the
same held-out everywhere, identical variants skipped), the table recomputed by hand from stored per-seed
predictions, the CLI's errors; slow tier: the whole ablation on the embedded model."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from curate import snapshot as snap
from curate.example import Example, Source
from evaluate import ablate
from evaluate.ablate import AblationError

SYS = {"role": "system", "content": "Classify the banking query."}


def _ex(text: str, label: str, split: str = "train", origin: str = "human", group: str = "", **kw) -> Example:
    return Example([SYS, {"role": "user", "content": text}, {"role": "assistant", "content": label}],
                   Source("ticket" if origin == "human" else "synthetic", "t.csv", text[:10]), split=split,
                   label=label, group=group, origin={"kind": origin} if origin == "human" else
                   {"kind": "synthetic", "parent_ids": [], "model": "m", "strategy": "paraphrase", "prompt_hash": "h"},
                   **kw)


def _approve(store, exs) -> None:
    for e in exs:
        store.add_event(e.id, "alice", "approve")


def _flag_dup(store, e: Example, keeper: Example) -> None:
    store.update_signals({e.id: {"duplicate_of": keeper.id, "dedup_at": time.time() + 1, "dup_detector": "near"}})


def _flag_leak(store, e: Example) -> None:
    store.update_signals({e.id: {"leakage": [{"detector": "near", "score": 0.9, "other_id": "x", "source": "heldout"}]}})


def _log(workspace: Path, entries: list[dict]) -> None:
    p = workspace / "reports" / "synth-log.jsonl"
    p.parent.mkdir(exist_ok=True)
    p.write_text("".join(json.dumps(e) + "\n" for e in entries))


def _cand(messages, decision="rejected", reason="judge-low: score 2.1 < min_judge_score 3", parents=(), i=0) -> dict:
    return {"run_id": "r1", "decision": decision, "reason": reason, "strategy": "paraphrase", "candidate": i,
            "parent_ids": list(parents), "record_id": None, "messages": messages, "judge": {"score": 2.1},
            "heuristics": {}, "backend": "local", "model": "m", "prompt_hash": "h"}


@pytest.fixture
def ws(store, workspace, monkeypatch):
    """A workspace where every rule has a record to act on; snapshot S made before a late approval."""
    labels = ["card_arrival", "lost_card", "refund"]
    t = [_ex(f"question number {i} about my {labels[i % 3]}", labels[i % 3]) for i in range(10)]
    h = [_ex(f"held out query {i} on {labels[i % 3]}", labels[i % 3], split="heldout") for i in range(4)]
    dup = _ex("question number 1 about my lost_card please", "lost_card")
    leak = _ex("a train text that leaks into held-out", "refund")
    same = _ex("Held-out query 0, on CARD_ARRIVAL!", "card_arrival", group="own-group")  # = h[0] once normalised
    pending = _ex("still waiting for review", "refund")
    rejected = _ex("a reviewer said no", "refund")
    late = _ex("approved after the snapshot", "refund")
    s_ok = _ex("synthetic approved one", "refund", origin="synthetic", signals={"reward": {"score": 4.5}})
    s_pend = _ex("synthetic pending one", "lost_card", origin="synthetic", signals={"reward": {"score": 4.0}})
    s_rej = _ex("synthetic a reviewer rejected", "lost_card", origin="synthetic")
    s_dup = _ex("synthetic duplicate of a human row", "lost_card", origin="synthetic")
    s_leak = _ex("synthetic that leaks", "lost_card", origin="synthetic")
    store.add_examples(t + h + [dup, leak, same, pending, rejected, late, s_ok, s_pend, s_rej, s_dup, s_leak])
    _approve(store, t + h + [dup, leak, same, rejected, s_ok])
    store.add_event(rejected.id, "bob", "reject")
    store.add_event(s_rej.id, "bob", "reject")
    _flag_dup(store, dup, t[1])
    _flag_dup(store, same, t[0])
    _flag_dup(store, s_dup, t[2])
    _flag_leak(store, leak)
    _flag_leak(store, s_leak)
    snap.create(store, "S")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 10)  # the late approval is seconds after S
    _approve(store, [late])
    monkeypatch.setattr(time, "time", real)
    t3 = t[3].messages
    para = [SYS, {"role": "user", "content": "what about my refund, number three"}, t3[2]]
    _log(workspace, [
        _cand(para, parents=[t[3].id], i=0),                                              # judge-low: in unfiltered
        _cand([SYS, {"role": "user", "content": "held out query 1 on lost_card"}, t3[2]],
              reason="heldout-similar: Jaccard 1.0 with held-out record x >= 0.8", parents=[t[3].id], i=1),
        _cand(t[4].messages, reason="copy-of-seed: Jaccard 1.0 with the seed >= 0.9", parents=[t[4].id], i=2),
        _cand([{"role": "assistant", "content": "no user turn"}], parents=[t[5].id], i=3),   # not a valid chat
        _cand(s_pend.messages, decision="accepted", reason=None, parents=[t[6].id], i=4),
        {"decision": "error", "reason": "backend-error: timeout", "messages": None},
    ])
    ids = {k: v.id for k, v in dict(dup=dup, leak=leak, same=same, pending=pending, rejected=rejected, late=late,
                                    s_ok=s_ok, s_pend=s_pend, s_rej=s_rej, s_dup=s_dup, s_leak=s_leak).items()}
    ids["para"] = Example(para, Source("synthetic", "x", "y")).id
    return {"t": [e.id for e in t], "h": [e.id for e in h], **ids}


def _ids(v) -> set[str]:
    return {r["id"] for r in v.rows}


def test_which_record_lands_in_which_variant(store, ws):
    sel = ablate.select(store, "S", ablate.VARIANTS)
    t = set(ws["t"])
    assert sel.skipped == {} and list(sel.variants) == ["gated", "raw", "gated+synthetic", "gated+synthetic-unfiltered"]
    v = sel.variants
    assert _ids(v["gated"]) == t  # S's human rows: the dup, the leak and the held-out twin were gated
    assert _ids(v["raw"]) == t | {ws["dup"]}  # dedup gate ignored; leakage kept; review as of S
    assert v["raw"].removed == {"leakage gate (kept in raw)": 1, "held-out text": 1}
    assert v["raw"].added == {"dedup-flagged": 1}
    assert _ids(v["gated+synthetic"]) == t | {ws["s_ok"], ws["s_pend"]}
    assert v["gated+synthetic"].rule_approved == {ws["s_pend"]: "pending"}
    assert v["gated+synthetic"].removed == {"gate: duplicate": 1, "gate: leakage": 1}
    assert _ids(v["gated+synthetic-unfiltered"]) == t | {ws["s_ok"], ws["s_pend"], ws["para"]}
    u = v["gated+synthetic-unfiltered"]
    assert u.rule_approved == {ws["s_pend"]: "pending", ws["para"]: "reward-rejected (not in the store)"}
    assert u.removed["reward filter: heldout-similar (kept out)"] == 1
    assert u.removed["log candidate without a valid chat"] == 1
    assert u.removed["log candidate equal to a row already in"] == 1
    para = next(r for r in u.rows if r["id"] == ws["para"])
    assert para["label"] == store.get(ws["t"][3]).label and para["status"] == "approved"  # the parent's, as synth sets
    assert json.loads(para["origin"])["reward_rejected"].startswith("judge-low")
    held = set(ws["h"])
    for var in v.values():  # nothing held out, nothing the review had not approved by S (human rows)
        assert not _ids(var) & held
        assert not _ids(var) & {ws["leak"], ws["same"], ws["pending"], ws["rejected"], ws["late"], ws["s_rej"],
                                ws["s_dup"], ws["s_leak"]}


def _tree(d: Path) -> dict[str, tuple[str, float]]:
    return {p.name: (snap.sha256_file(p), p.stat().st_mtime) for p in d.iterdir()}


def test_variant_snapshots_share_heldout_and_leave_s_untouched(store, ws, workspace, tmp_path):
    from train.recipe import check_isolation, load_snapshot

    before, snaps_before = _tree(workspace / "snapshots" / "S"), sorted(p.name for p in (workspace / "snapshots").iterdir())
    meta_before = store.meta_get("snapshot:S")
    out = tmp_path / "abl"
    sel, names, ab_ws = ablate.build_variants(str(workspace), "S", ablate.VARIANTS, out)
    assert names == {"gated": "S-abl-gated", "raw": "S-abl-raw", "gated+synthetic": "S-abl-gated-synthetic",
                     "gated+synthetic-unfiltered": "S-abl-gated-synthetic-unfiltered"}
    assert _tree(workspace / "snapshots" / "S") == before and store.meta_get("snapshot:S") == meta_before
    assert sorted(p.name for p in (workspace / "snapshots").iterdir()) == snaps_before
    s_held = snap.read_rows(workspace / "snapshots" / "S" / "heldout.parquet")
    for v, name in names.items():
        d = ab_ws / "snapshots" / name
        assert snap.read_rows(d / "heldout.parquet") == s_held  # the same items, row for row
        sdir, man, train_rows, held_ids = load_snapshot(name, str(ab_ws))  # what training checks
        check_isolation(train_rows, held_ids)
        assert {r["id"] for r in train_rows} == _ids(sel.variants[v])
        assert man["ablation"]["source_snapshot"] == "S" and man["ablation"]["variant"] == v
        assert man["ablation"]["rule_approved"]["rows"] == len(sel.variants[v].rule_approved)
    # building again into the same folder reuses the frozen snapshots
    assert ablate.build_variants(str(workspace), "S", ablate.VARIANTS, out)[1] == names


def test_identical_variants_are_skipped_and_missing_synthetic_is_an_error(store, workspace):
    rows = [_ex(f"query {i} about cards", f"l{i % 2}") for i in range(6)] + [_ex("held one", "l0", split="heldout")]
    store.add_examples(rows)
    _approve(store, rows)
    snap.create(store, "S")
    sel = ablate.select(store, "S", ["raw"])
    assert list(sel.variants) == ["gated"] and sel.skipped == {"raw": "identical to gated (the same 6 train rows)"}
    assert sel.notes == ["gated added: every difference is taken against it"]
    with pytest.raises(AblationError, match="no synthetic rows for gated[+]synthetic"):
        ablate.select(store, "S", ["gated", "gated+synthetic"])
    # only reward-rejected candidates: gated+synthetic = gated (skipped), the unfiltered variant is built
    _log(workspace, [_cand([SYS, {"role": "user", "content": "a rejected paraphrase"},
                            {"role": "assistant", "content": "l0"}], parents=[rows[0].id])])
    sel = ablate.select(store, "S", ablate.SYNTHETIC_VARIANTS)
    assert sel.skipped == {"gated+synthetic": "identical to gated (the same 6 train rows)"}
    assert len(sel.variants["gated+synthetic-unfiltered"].rows) == 7


def test_reference_cannot_be_empty(store):
    rows = [_ex(f"synthetic {i}", "l0", origin="synthetic") for i in range(3)] + [_ex("held one", "l0", split="heldout")]
    store.add_examples(rows)
    _approve(store, rows)
    snap.create(store, "S")
    with pytest.raises(AblationError, match="no human train rows"):
        ablate.select(store, "S", ["gated"])


# -- the table from stored predictions --------------------------------------------------------------------------

ITEMS = [("i1", "a"), ("i2", "a"), ("i3", "b"), ("i4", "b")]


def _run(tmp_path: Path, name: str, tuned: list[str], base: list[str] = ("x",) * 4) -> Path:
    d = tmp_path / name
    d.mkdir()
    with (d / "predictions.jsonl").open("w") as f:
        for (i, ref), t, b in zip(ITEMS, tuned, base):
            f.write(json.dumps({"set": "heldout", "file_sha256": None, "id": i, "prompt": [], "reference": ref,
                                "label": ref, "predictions": {"base": b, "tuned": t}}) + "\n")
    return d


def test_table_recomputed_from_stored_per_seed_predictions(tmp_path):
    runs = {"gated": {1: _run(tmp_path, "g1", ["a", "b", "b", "b"]), 2: _run(tmp_path, "g2", ["b", "a", "a", "b"])},
            "raw": {1: _run(tmp_path, "r1", ["a", "a", "b", "b"]), 2: _run(tmp_path, "r2", ["a", "a", "b", "a"])}}
    res = ablate.summarize(runs)
    assert res["n"] == 4 and res["seeds"] == [1, 2] and res["closed_label_set"] and res["primary_metric"] == "label_accuracy"
    g, r = res["variants"]["gated"]["metrics"], res["variants"]["raw"]["metrics"]
    # label accuracy by hand: gated seeds 3/4 and 2/4, raw 4/4 and 3/4
    assert g["label_accuracy"]["per_seed"] == {"1": 0.75, "2": 0.5} and g["label_accuracy"]["mean"] == 0.625
    assert r["label_accuracy"]["per_seed"] == {"1": 1.0, "2": 0.75} and r["label_accuracy"]["mean"] == 0.875
    assert r["label_accuracy"]["delta"] == pytest.approx(0.25)
    assert r["label_accuracy"]["delta_per_seed"] == {"1": 0.25, "2": 0.25} and g["label_accuracy"]["delta"] is None
    # seed-averaged per item: gated [1, .5, .5, 1], raw [1, 1, 1, .5]: resamples give deltas in [-.5, +.5]
    lo, hi = r["label_accuracy"]["delta_ci95"]
    assert -0.5 <= lo <= 0.25 <= hi <= 0.5
    lo, hi = g["label_accuracy"]["ci95"]
    assert 0.5 <= lo <= 0.625 <= hi <= 1.0
    # macro-F1 by hand: gated s1 F1(a)=2/3, F1(b)=4/5 → 11/15; s2 F1(a)=F1(b)=1/2
    assert g["macro_f1"]["per_seed"] == {"1": pytest.approx(11 / 15), "2": pytest.approx(0.5)}
    # raw s1 perfect; s2 F1(a)=4/5, F1(b)=2/3 → 11/15
    assert r["macro_f1"]["mean"] == pytest.approx((1 + 11 / 15) / 2)
    assert r["macro_f1"]["delta"] == pytest.approx(0.25)
    assert r["macro_f1"]["delta_per_seed"] == {"1": pytest.approx(4 / 15), "2": pytest.approx(11 / 15 - 0.5)}
    assert res["base"]["label_accuracy"] == 0.0
    files = ablate.write_outputs({**res, "snapshot": "S", "settings": {"steps": 3}}, tmp_path)
    md = Path(files["md"]).read_text()
    assert "| raw | ? | 0.875 | 1.000, 0.750 |" in md and "+0.250 |" in md and Path(files["png"]).stat().st_size > 0
    assert json.loads(Path(files["json"]).read_text())["variants"]["raw"]["metrics"]["label_accuracy"]["mean"] == 0.875


def test_table_refuses_runs_on_other_items_or_seeds(tmp_path):
    g = {1: _run(tmp_path, "g1", ["a"] * 4)}
    other = tmp_path / "o1"
    other.mkdir()
    (other / "predictions.jsonl").write_text(json.dumps({"set": "heldout", "id": "zz", "reference": "a", "label": "a",
                                                         "predictions": {"tuned": "a"}}) + "\n")
    with pytest.raises(AblationError, match="other held-out items"):
        ablate.summarize({"gated": g, "raw": {1: other}})
    with pytest.raises(AblationError, match="seed sets must match"):
        ablate.summarize({"gated": g, "raw": {2: _run(tmp_path, "r2", ["a"] * 4)}})


def test_cli_errors_and_dry_run(store, ws, workspace, tmp_path, capsys):
    from evaluate.__main__ import main

    assert main(["ablate", "--snapshot", "S", "--variants", "raw,curated", "--workspace", str(workspace)]) == 2
    assert "unknown variant(s) curated; known: raw, gated" in capsys.readouterr().err
    assert main(["ablate", "--snapshot", "nope", "--workspace", str(workspace), "--out", str(tmp_path / "a")]) == 2
    assert "no snapshot named 'nope'" in capsys.readouterr().err
    assert main(["ablate", "--snapshot", "S", "--workspace", str(workspace), "--out", str(tmp_path / "b"),
                 "--train", "lora_layers"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["ablate", "--snapshot", "S", "--workspace", str(workspace), "--out", str(tmp_path / "c"),
                 "--train", "lr=1"]) == 2
    assert "unknown config key 'lr'" in capsys.readouterr().err
    assert main(["ablate", "--snapshot", "S", "--workspace", str(workspace), "--out", str(tmp_path / "d"),
                 "--dry-run", "--steps", "3", "--seeds", "2", "--train", "seed=7"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["settings"]["seeds"] == [7, 8] and res["settings"]["train_config"]["max_steps"] == 3
    assert {v: s["train_rows"] for v, s in res["selection"].items()} == {
        "gated": 10, "raw": 11, "gated+synthetic": 12, "gated+synthetic-unfiltered": 13}
    assert not (tmp_path / "d" / "runs").exists()


# -- slow: the whole ablation on the embedded model -------------------------------------------------------------

@pytest.mark.slow
def test_ablate_end_to_end_on_the_embedded_model(store, workspace, tmp_path, capsys):
    import csv

    from evaluate.__main__ import main
    from evaluate.metrics import per_example

    root = Path(__file__).resolve().parent.parent
    with (root / "data" / "banking77_demo" / "banking77_demo.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    intents = sorted({r["category"] for r in rows})[:3]
    picked = [r for r in rows if r["category"] in intents][:24]
    exs = [_ex(r["text"], r["category"]) for r in picked]
    for e, k in zip(exs, range(len(exs))):
        e.split = "heldout" if k % 6 == 5 else "train"
    store.add_examples(exs)
    _approve(store, exs)
    train = [e for e in exs if e.split == "train"]
    _flag_dup(store, train[1], train[0])
    snap.create(store, "S")
    syn = [_ex(f"synthetic: {train[i].user_text}", train[i].label, origin="synthetic") for i in range(3)]
    store.add_examples(syn)
    _log(workspace, [_cand([SYS, {"role": "user", "content": "rejected: " + train[5].user_text},
                            {"role": "assistant", "content": train[5].label}], parents=[train[5].id])])
    out = tmp_path / "abl"
    args = ["ablate", "--snapshot", "S", "--workspace", str(workspace), "--out", str(out), "--steps", "2",
            "--seeds", "2", "--max-new-tokens", "8", "--json"]
    for kv in ("lora_layers=2", "max_length=80", "batch_size=4", "threads=1", "learning_rate=1e-3", "save_steps=50",
               "logging_steps=1", "eval_steps=0"):
        args += ["--train", kv]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res["variants"]) == ["gated", "raw", "gated+synthetic", "gated+synthetic-unfiltered"]
    assert res["n"] == 4 and res["seeds"] == [42, 43]
    assert {v: s["train_rows"] for v, s in res["selection"].items()} == {
        "gated": 19, "raw": 20, "gated+synthetic": 22, "gated+synthetic-unfiltered": 23}
    for f in ("ablation.json", "ablation.md", "ablation.png"):
        assert (out / f).exists()
    for v, d in res["variants"].items():
        for s, run in d["runs"].items():
            man = json.loads((Path(run) / "manifest.json").read_text())
            assert man["steps"] == 2 and man["seed"] == int(s)
            preds = [json.loads(x) for x in (Path(run) / "predictions.jsonl").read_text().splitlines()]
            acc = per_example("label_accuracy", [p["predictions"]["tuned"] for p in preds], [p["reference"] for p in preds])
            assert d["metrics"]["label_accuracy"]["per_seed"][s] == pytest.approx(sum(acc) / len(acc))  # the table reads what was stored
    # adapters swapped on one loaded base give what `python -m evaluate` gives the run on its own
    from evaluate.__main__ import model_predictions, prepare

    last = Path(res["variants"]["gated+synthetic-unfiltered"]["runs"]["43"])
    man, _, sets, _ = prepare(last)
    alone, _ = model_predictions(last, man, sets, 8, 16)
    stored = {p["id"]: p["predictions"] for p in map(json.loads, (last / "predictions.jsonl").read_text().splitlines())}
    assert alone["heldout"]["tuned"] == [stored[it.id]["tuned"] for it in sets[0].items]
    assert alone["heldout"]["base"] == [stored[it.id]["base"] for it in sets[0].items]
    # a second call into the same folder reuses every run and evaluation: same table
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["variants"] == res["variants"]
