"""Fast tier: the confusion matrix of a label task (counting, and confusion.png / report.json / report.md)."""
from __future__ import annotations

import json
from pathlib import Path

from evaluate.report import INVALID, OTHER_LABELS, confusion_counts

# seven items, labels by frequency: c 3, a 2, b 1, d 1
REFS = ["a", "a", "b", "c", "c", "c", "d"]
PREDS = ["a", "b", "b\nbecause the card is blocked", "c", "zzz", "", " a "]


def test_counts_equal_hand_computed_with_pooled_labels():
    conf = confusion_counts(REFS, PREDS, top=2)
    assert conf["rows"] == ["c", "a", OTHER_LABELS]
    assert conf["columns"] == ["c", "a", OTHER_LABELS, INVALID]
    # a→a, a→b (pooled), b→b (pooled→pooled; first line read), c→c, c→zzz (invalid), c→"" (invalid), d→a
    assert conf["counts"] == [[1, 0, 0, 2],
                              [0, 1, 1, 0],
                              [0, 1, 1, 0]]
    assert (conf["n"], conf["correct"], conf["invalid"], conf["pooled_labels"]) == (7, 3, 2, 2)


def test_counts_equal_hand_computed_every_label_shown():
    conf = confusion_counts(REFS, PREDS)
    assert conf["rows"] == ["c", "a", "b", "d"]  # by frequency, ties alphabetical
    assert conf["columns"] == ["c", "a", "b", "d", INVALID]
    assert conf["counts"] == [[1, 0, 0, 0, 2],
                              [0, 1, 1, 0, 0],
                              [0, 0, 1, 0, 0],
                              [0, 1, 0, 0, 0]]
    assert conf["pooled_labels"] == 0 and sum(map(sum, conf["counts"])) == 7


def _report(run: Path, refs: list[str], labels: list[str | None]) -> dict:
    from evaluate.__main__ import build_report
    from evaluate.external import EvalSet, Item

    items = [Item(f"id{i}", [{"role": "user", "content": f"q{i}"}], r, lab) for i, (r, lab) in enumerate(zip(refs, labels))]
    preds = {"heldout": {"base": [""] * len(refs), "tuned": PREDS[: len(refs)]}}
    man = {"snapshot": {"name": "s1"}, "config": {"base_model": "tiny"}}
    return build_report(run, man, [EvalSet("heldout", items)], preds, {}, {"heldout": {}}, {"heldout": 8})


def test_label_task_report_has_the_confusion_plot(tmp_path: Path):
    _report(tmp_path, REFS, REFS)
    assert (tmp_path / "confusion.png").stat().st_size > 1000 and (tmp_path / "report.png").exists()
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["plots"] == ["report.png", "confusion.png"]
    assert rep["confusion"]["model"] == "tuned" and rep["confusion"]["set"] == "heldout"
    assert rep["confusion"]["counts"] == confusion_counts(REFS, PREDS)["counts"]
    md = (tmp_path / "report.md").read_text()
    assert "![confusion matrix](confusion.png)" in md and "2 of 7" in md  # the invalid replies


def test_open_ended_report_has_no_confusion(tmp_path: Path):
    _report(tmp_path, ["a long reply", "another one"], [None, None])
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["plots"] == ["report.png"] and "confusion" not in rep
    assert not (tmp_path / "confusion.png").exists()
