"""Fast tier: reference baselines, eval-file clearance and run comparison on a hand-made fixture.

6 train / 4 held-out label rows with fixed 2-d embeddings (an injected embedder: no model is loaded),
fake base/tuned predictions (no generation), every number checked against a value computed by hand."""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from curate import dedup, leakage, snapshot
from curate.example import Example, Source
from curate.review import decide
from evaluate.__main__ import baseline_predictions, build_report, main as evaluate_main, prepare
from evaluate.baselines import EmbeddingClassifier, majority_label
from evaluate.compare import CompareError, compare_predictions, compare_runs, main as compare_main, render
from evaluate.metrics import binom_two_sided, sign_test

SYS = {"role": "system", "content": "Reply with the intent label only."}
TRAIN = [("my card has not arrived", "card"), ("card stolen on the bus", "card"), ("new card please", "card"),
         ("card is blocked", "card"), ("send money to my sister", "transfer"), ("wire money abroad", "transfer")]
HELD = [("card never came", "card"), ("card eaten by the atm", "card"), ("money sent twice", "transfer"),
        ("where is my refund", "card")]
EVAL = [("card got lost in the mail", "card"), ("money transfer is pending", "transfer")]
C, T = [1.0, 0.0], [0.0, 1.0]
VEC = {**{t: (C if lab == "card" else T) for t, lab in TRAIN}, "card never came": C, "card eaten by the atm": C,
       "money sent twice": T, "where is my refund": T,  # the last one is a "card" item that looks like a transfer
       "card got lost in the mail": C, "money transfer is pending": T}


class FakeEmbedder:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([VEC[t] for t in texts], dtype=np.float32)  # KeyError on any unexpected text


def _ex(text: str, label: str, split: str, origin: str = "human") -> Example:
    return Example([SYS, {"role": "user", "content": text}, {"role": "assistant", "content": label}],
                   Source("ticket" if origin == "human" else "synthetic", "t.csv", text[:8]), split=split, label=label,
                   origin={"kind": origin})


@pytest.fixture
def clock(monkeypatch):
    """UTC stamps that advance 5 s per call, so reports and snapshots made in one test second stay ordered."""
    real, t = time.gmtime, [time.time() + 5]

    def gmtime(secs=None):
        if secs is not None:
            return real(secs)
        t[0] += 5
        return real(t[0])

    monkeypatch.setattr(time, "gmtime", gmtime)


@pytest.fixture
def fixture_run(store, workspace, tmp_path, clock):
    """Snapshot v1 (6 train / 4 held-out), an eval CSV cleared by the leakage run that gated v1, a run folder."""
    store.add_examples([_ex(t, lab, "train") for t, lab in TRAIN] + [_ex(t, lab, "heldout") for t, lab in HELD])
    decide(store, [e.id for e in store.query()], "approve", "alice")
    ev = tmp_path / "eval.csv"
    with ev.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(EVAL)
        w.writerow(["", "card"])  # no text: listed as skipped
    cfg = dedup.DedupConfig(detectors=("exact", "near"), shingle="char")
    leakage.run(store, cfg, [str(ev)], None)
    snapshot.create(store, "v1")
    return _run_dir(tmp_path / "runA", workspace / "snapshots" / "v1"), ev, store, cfg


def _run_dir(run: Path, sdir: Path) -> Path:
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"snapshot": {"name": sdir.name, "path": str(sdir)},
                                                   "config": {"base_model": "fake-base"}}))
    return run


def _evaluate(run: Path, eval_files: list[str], tuned: dict[str, list[str]], emb: FakeEmbedder | None = None) -> dict:
    man, _, sets, train = prepare(run, eval_files=eval_files)
    preds = {es.name: {"base": ["I do not know"] * len(es.items), "tuned": tuned[es.name]} for es in sets}
    extra, info, skipped = baseline_predictions(sets, train, embed_fn=emb or FakeEmbedder())
    for name, p in extra.items():
        preds[name].update(p)
    return build_report(run, man, sets, preds, info, skipped, {es.name: 8 for es in sets})


def test_baselines_by_hand():
    assert majority_label(["b", "a", "b", "a", "c"]) == "a"  # tie: alphabetically first
    emb = FakeEmbedder()
    clf = EmbeddingClassifier(emb).fit([t for t, _ in TRAIN], [lab for _, lab in TRAIN])
    assert clf.predict([t for t, _ in HELD]) == ["card", "card", "transfer", "transfer"]
    assert emb.calls[0] == [t for t, _ in TRAIN]  # fitted on the train texts only
    with pytest.raises(ValueError, match="two or more"):
        EmbeddingClassifier(emb).fit(["card is blocked"], ["card"])


def test_report_baselines_eval_file_and_predictions(fixture_run):
    run, ev, _, _ = fixture_run
    emb = FakeEmbedder()
    held_ids = [r["id"] for r in sorted(snapshot.load(run.parent / "ws" / "snapshots" / "v1", split="heldout"),
                                        key=lambda r: r["id"])]
    by_id = {_ex(t, lab, "heldout").id: lab for t, lab in HELD}
    rep = _evaluate(run, [str(ev)], {"heldout": [by_id[i] for i in held_ids], str(ev): ["card", "card"]}, emb)
    # the classifier saw the train split's user turns and nothing else before predicting
    assert sorted(emb.calls[0]) == sorted(t for t, _ in TRAIN)

    # held-out: refs card, card, transfer, card (sorted by id); majority "card" → 3/4 right;
    # embedding classifier → card, card, transfer, transfer → 3/4; tuned (all right) → 1.0; base → 0.
    assert rep["closed_label_set"] and rep["n"] == 4 and rep["metrics"]["label_accuracy"]["tuned"] == 1.0
    maj, emc = rep["baselines"]["majority_class"], rep["baselines"]["embedding_classifier"]
    assert maj["label"] == "card" and maj["train_rows"] == 6 and emc["train_rows"] == 6
    for b in (maj, emc):
        m = b["metrics"]["label_accuracy"]
        assert m["value"] == 0.75 and m["tuned"] == 1.0 and m["delta"] == 0.25 and m["ci95"][0] <= 0.25 <= m["ci95"][1]
        assert b["metrics"]["exact_match"]["value"] == 0.75 and b["metrics"]["rouge_l"]["value"] == 0.75
    # macro-F1 over {card, transfer}: majority: F1(card) = 2·3/(2·3+1) = 6/7, F1(transfer) = 0;
    # embedding: F1(card) = 2·2/(2·2+0+1) = 4/5, F1(transfer) = 2·1/(2·1+1+0) = 2/3
    assert maj["metrics"]["macro_f1"]["value"] == pytest.approx((6 / 7) / 2)
    assert emc["metrics"]["macro_f1"]["value"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert rep["baselines_skipped"] == {}

    # the eval file: reported on its own, with the clearing report and the skipped row
    (ef,) = rep["eval_files"]
    assert ef["path"] == str(ev) and ef["n"] == 2 and ef["closed_label_set"]
    assert Path(ef["leakage_report"]).name.startswith("leakage-") and ef["sha256"] == snapshot.sha256_file(ev)
    assert ef["skipped_rows"][0]["source"] == f"{ev}:4"
    assert ef["metrics"]["label_accuracy"]["tuned"] == 0.5
    assert ef["baselines"]["majority_class"]["metrics"]["label_accuracy"]["value"] == 0.5
    assert ef["baselines"]["embedding_classifier"]["metrics"]["label_accuracy"]["value"] == 1.0
    assert ef["baselines"]["embedding_classifier"]["metrics"]["label_accuracy"]["delta"] == -0.5

    # every prediction stored; report.md / report.png written
    rows = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["set"] for r in rows} == {"heldout", str(ev)}
    assert set(rows[0]["predictions"]) == {"base", "tuned", "majority_class", "embedding_classifier"}
    md = (run / "report.md").read_text()
    assert "| label_accuracy |" in md and "| label_accuracy | 0.750 | +0.250 [" in md and str(ev) in md
    assert (run / "report.png").stat().st_size > 0


def test_open_ended_sets_skip_label_baselines(fixture_run):
    run, _, _, _ = fixture_run
    man, _, sets, train = prepare(run)
    for it in sets[0].items:
        it.label = None  # as if the replies were free text
    preds, info, skipped = baseline_predictions(sets, train, embed_fn=FakeEmbedder())
    assert preds == {"heldout": {}} and set(skipped["heldout"]) == {"majority_class", "embedding_classifier"}


def test_reference_model_baseline_through_an_openai_compatible_server(fixture_run):
    import threading

    from synth.server import serve

    class Upper:
        name, model, max_batch = "fake", "ref", 4

        def complete_many(self, convs, params):
            return ["card" for _ in convs]

        def complete(self, messages, params):
            return "card"

    run, _, _, _ = fixture_run
    srv, _ = serve("127.0.0.1", 0, model="ref", max_batch=4, batch_wait_s=0.01, backend=Upper())
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        man, _, sets, train = prepare(run)
        ref = {"model": "ref", "base_url": f"http://127.0.0.1:{srv.server_address[1]}/v1", "timeout_s": 10}
        preds, info, _ = baseline_predictions(sets, train, embedder="none", reference=ref)
    finally:
        srv.shutdown()
        srv.server_close()
    assert preds["heldout"]["reference_model"] == ["card"] * 4 and info["reference_model"]["errors"] == 0


def test_uncleared_eval_files_are_refused(fixture_run, tmp_path, capsys):
    run, ev, store, cfg = fixture_run
    never = tmp_path / "never.csv"
    never.write_text("text,label\nbrand new question,card\n")
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--run", str(run), "--eval", str(never)])
    msg = str(e.value.code)
    assert "not cleared" in msg and "no leakage report" in msg
    assert f"python -m curate leakage --workspace {run.parent / 'ws'} --against {never}" in msg
    assert str(run.parent / "ws" / "reports" / "leakage-") in msg

    # the cleared file, modified after the report that read it: refused
    later = time.time() + 3600
    os.utime(ev, (later, later))
    with pytest.raises(SystemExit, match="modified after that report"):
        prepare(run, eval_files=[str(ev)])

    # a leakage run after the snapshot that finds a snapshot train record in the file: refused for good
    leaky = tmp_path / "leaky.csv"
    leaky.write_text("text,label\nsend money to my sister,transfer\n")
    leakage.run(store, cfg, [str(leaky)], None)
    with pytest.raises(SystemExit, match="1 train record\\(s\\) of snapshot v1 leaking"):
        prepare(run, eval_files=[str(leaky)])
    # a clean file checked after the snapshot is cleared
    clean = tmp_path / "clean.csv"
    clean.write_text("text,label\nmoney transfer is pending,transfer\n")
    leakage.run(store, cfg, [str(clean)], None)
    assert [es.name for es in prepare(run, eval_files=[str(clean)])[2]] == ["heldout", str(clean)]


def test_sign_test_and_compare_by_hand():
    assert binom_two_sided(1, 7) == pytest.approx(2 * (1 + 7) / 128)
    assert binom_two_sided(0, 0) == 1.0 and binom_two_sided(3, 6) == 1.0
    assert sign_test([0, 1, 0.5], [1, 1, 0.2]) == {"b_wins": 1, "a_wins": 1, "ties": 1, "p": 1.0}
    # 10 items: A right on 3, B right on 8; B wins 6, A wins 1, ties 3 → p = 2·(C(7,0)+C(7,1))/2^7 = 0.125
    a_ok = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    b_ok = [1, 1, 0, 1, 1, 1, 1, 1, 1, 0]
    mk = lambda ok: {str(i): {"reference": "x", "label": "x", "predictions": {"tuned": "x" if o else "y"}}  # noqa: E731
                     for i, o in enumerate(ok)}
    res = compare_predictions(mk(a_ok), mk(b_ok))
    m = res["metrics"]["label_accuracy"]
    assert (m["a"], m["b"], m["delta"]) == (0.3, 0.8, pytest.approx(0.5))
    assert m["sign_test"] == {"b_wins": 6, "a_wins": 1, "ties": 3, "p": pytest.approx(0.125)}
    assert res["verdict"] == "no detectable difference"  # the interval may clear 0, the sign test does not
    res = compare_predictions(mk([0] * 10), mk([1] * 10))  # 10 wins of 10: p = 2/1024
    assert res["verdict"] == "B better" and res["metrics"]["label_accuracy"]["sign_test"]["p"] == pytest.approx(2 / 1024)
    assert compare_predictions(mk([1] * 10), mk([0] * 10))["verdict"] == "A better"
    with pytest.raises(CompareError, match="differ entirely"):
        compare_predictions(mk(a_ok), {"other": mk(b_ok)["0"]})


def test_compare_two_runs_from_stored_predictions(fixture_run, tmp_path, workspace, capsys):
    run_a, ev, store, _ = fixture_run
    held = sorted(snapshot.load(workspace / "snapshots" / "v1", split="heldout"), key=lambda r: r["id"])
    refs = [r["messages"][-1]["content"] for r in held]
    _evaluate(run_a, [str(ev)], {"heldout": ["transfer"] * 4, str(ev): ["card", "card"]})
    # B: one synthetic train record more, approved by bob, and a better tuned model
    syn = _ex("card stuck in the machine", "card", "train", origin="synthetic")
    VEC[syn.user_text] = C
    store.add_examples([syn])
    decide(store, [syn.id], "approve", "bob")
    snapshot.create(store, "v2")
    run_b = _run_dir(tmp_path / "runB", workspace / "snapshots" / "v2")
    _evaluate(run_b, [str(ev)], {"heldout": refs, str(ev): ["card", "transfer"]})

    res = compare_runs(run_a, run_b)
    acc_a = sum(r == "transfer" for r in refs) / 4  # A always said "transfer": right on the one transfer item
    m = res["metrics"]["label_accuracy"]
    assert res["n"] == 4 and m["a"] == acc_a == 0.25 and m["b"] == 1.0 and m["delta"] == 0.75
    assert m["sign_test"] == {"b_wins": 3, "a_wins": 0, "ties": 1, "p": pytest.approx(0.25)}
    assert res["verdict"] == "no detectable difference" and res["primary_metric"] == "label_accuracy"
    d = res["snapshot_diff"]
    assert (d["a"], d["b"], d["same"]) == ("v1", "v2", False)
    assert d["train"]["added"] == 1 and d["train"]["removed"] == 0 and d["train"]["kept"] == 6
    assert d["train"]["added_by"] == {"origin": {"synthetic": 1}, "gate": {"none": 1}, "reviewer": {"bob": 1}}
    assert d["heldout"] == {"added": 0, "removed": 0, "kept": 4, "added_by": {"origin": {}, "gate": {}, "reviewer": {}},
                            "removed_by": {"origin": {}, "gate": {}, "reviewer": {}}}

    # on the eval file (matched by content), through the CLI, JSON and markdown
    assert compare_main([str(run_a), str(run_b), "--eval", str(ev), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["set"] == str(ev) and out["n"] == 2 and out["metrics"]["label_accuracy"]["delta"] == 0.5
    assert evaluate_main(["compare", str(run_a), str(run_b), "--out", str(tmp_path / "cmp.md")]) == 0
    text = capsys.readouterr().out
    assert "verdict: no detectable difference (label_accuracy +0.750" in text and "synthetic 1" in text
    assert (tmp_path / "cmp.json").exists() and render(res) == (tmp_path / "cmp.md").read_text()
    # a run that never scored the file, and a run without predictions
    other = tmp_path / "other.csv"
    other.write_text("text,label\nx,card\n")
    assert compare_main([str(run_a), str(run_b), "--eval", str(other)]) == 2
    assert "did not score" in capsys.readouterr().err
    (run_b / "predictions.jsonl").unlink()
    assert compare_main([str(run_a), str(run_b)]) == 2
    assert "no predictions.jsonl" in capsys.readouterr().err
