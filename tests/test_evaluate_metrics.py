"""Scoring with known answers: label accuracy, macro-F1, exact match, ROUGE-L, JSON validity, paired bootstrap."""
from __future__ import annotations

import pytest

from evaluate.metrics import bootstrap_delta, macro_f1, rouge_l, score


def test_label_metrics_known_values():
    refs = ["a", "a", "b", "c"]
    base = ["x", "a\nbecause", "x", "x"]          # 1/4 right (first line counts)
    tuned = ["a", "a", "b", "b"]                  # 3/4 right
    m = score(base, tuned, refs, closed_labels=True, n_boot=200)
    assert m["label_accuracy"]["base"] == 0.25 and m["label_accuracy"]["tuned"] == 0.75
    assert m["label_accuracy"]["delta"] == 0.5
    lo, hi = m["label_accuracy"]["ci95"]
    assert -1 <= lo <= 0.5 <= hi <= 1
    # macro-F1 over the reference labels a, b, c: tuned F1(a)=1, F1(b)=2/3, F1(c)=0
    assert m["macro_f1"]["tuned"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert macro_f1(["x"] * 4, refs) == 0.0
    assert m["exact_match"]["base"] == 0.0  # "a\nbecause" is not an exact match
    assert set(m) == {"label_accuracy", "exact_match", "rouge_l", "macro_f1"}


def test_open_answers_rouge_and_json():
    assert rouge_l("the card arrived today", "the card arrived") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert rouge_l("", "x") == 0.0
    refs = ['{"a": 1}', '{"b": 2}']
    m = score(['{"a": 1}', "nope"], ['{"a": 1}', '{"b": 2}'], refs, closed_labels=False, n_boot=100)
    assert "label_accuracy" not in m and m["json_valid"]["base"] == 0.5 and m["json_valid"]["tuned"] == 1.0
    assert m["exact_match"]["tuned"] == 1.0


def test_bootstrap_is_paired_and_deterministic():
    base, tuned = [0, 1] * 50, [1, 1] * 50
    ci = bootstrap_delta(base, tuned, n=500, seed=1)
    assert ci == bootstrap_delta(base, tuned, n=500, seed=1)
    assert 0.35 < ci[0] <= 0.5 <= ci[1] < 0.65
    assert bootstrap_delta([1, 1], [1, 1]) == (0.0, 0.0)  # identical models: no spread at all
