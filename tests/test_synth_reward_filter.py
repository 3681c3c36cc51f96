"""Fast tier: the combined reward (format × novelty × label × judge) on tiny fixtures.

No model is loaded: a bag-of-words hashing embedder stands in for all-MiniLM-L6-v2 (the real one is
measured by ``bench/reward_filter.py``).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading

import numpy as np
import pytest

from curate.example import Example, Source
from synth import reward as rw
from synth.config import SynthConfig
from synth.generate import generate, log_path

SYSTEM = {"role": "system", "content": "Classify the banking query. Reply with its intent label."}
ROWS = {
    "card_arrival": ["my new card has not arrived yet", "when will my card arrive in the post",
                     "still waiting for my card to arrive", "the card you sent never arrived",
                     "card not arrived after two weeks"],
    "card_delivery_estimate": ["how long does card delivery take", "what is the delivery time for a new card",
                               "how many days until a card is delivered", "estimate for card delivery please",
                               "delivery time of the card to spain"],
    "exchange_rate": ["what exchange rate do you use", "how are your exchange rates calculated",
                      "is the exchange rate fixed", "exchange rate for euros to pounds",
                      "where do your exchange rates come from"],
}


def fake_embed(texts):
    """Hashed bag of words, unit length: deterministic and instant (a stand-in for the sentence embedder)."""
    out = np.zeros((len(texts), 256), np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z]+", (t or "").lower()):
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 256] += 1.0
        n = np.linalg.norm(out[i])
        if n:
            out[i] /= n
    return out


def _ex(text, label, split="train", origin=None):
    return Example(messages=[SYSTEM, {"role": "user", "content": text}, {"role": "assistant", "content": label}],
                   source=Source("ticket", "t.csv", text[:20]), split=split, label=label,
                   origin=origin or {"kind": "human"})


def _fill(store):
    store.add_examples([_ex(t, lab) for lab, ts in ROWS.items() for t in ts])
    # neither held-out nor synthetic records may teach the classifier: their labels must not appear
    store.add_examples([_ex("zebra quartz heldout text", "heldout_only", split="heldout"),
                        _ex("synthetic text about llamas", "synthetic_only", origin={"kind": "synthetic"})])


CFG = SynthConfig(label_min_rows=10)


def test_label_signal_ranks_the_right_label_above_a_swapped_near_label(store):
    _fill(store)
    m = rw.RewardModel.from_store(store, CFG, embed=fake_embed)
    assert m.clf is not None and sorted(m.classes) == sorted(ROWS)  # human train rows only
    assert "synthetic_only" not in m.classes and "heldout_only" not in m.classes
    text = "my card still has not arrived"
    (right, swapped), _ = m.measure([text, text], ["card_arrival", "card_delivery_estimate"], [[], []])
    assert right["label"] > swapped["label"] and right["label_rank"] == 1 and swapped["label_rank"] >= 2
    assert swapped["label_top"] == "card_arrival"
    assert rw.combine(right) > rw.combine(swapped)
    # no label task, or too few labelled rows: the label factor does not apply
    (nolab,), _ = m.measure([text], [None], [[]])
    assert nolab["label"] is None and nolab["novelty"] is not None
    few = rw.RewardModel.from_store(store, SynthConfig(label_min_rows=100), embed=fake_embed)
    assert few.clf is None and "label_min_rows" in few.info["label_model"]


def test_combined_score_formula_on_hand_computed_inputs():
    assert rw.combine({"format": 0.5, "novelty": 0.8, "label": 0.9, "judge": 0.75}) == pytest.approx(0.27)
    assert rw.combine({"format": 1.0, "novelty": None, "label": 0.4, "judge": None}) == pytest.approx(0.4)
    assert rw.combine({"format": 0.0, "novelty": 1.0, "label": 1.0, "judge": 1.0}) == 0.0
    assert rw.judge_factor(4.0) == 0.75 and rw.judge_factor(1.0) == 0.0 and rw.judge_factor(None) is None
    assert rw.novelty_factor(0.94, 0.90, 0.98) == pytest.approx(0.5)
    assert rw.novelty_factor(0.5, 0.90, 0.98) == 1.0 and rw.novelty_factor(0.99, 0.90, 0.98) == 0.0
    cfg = SynthConfig(min_words=4, max_words=10)
    assert rw.format_signal("When will my new card arrive?", cfg) == (1.0, [])
    assert rw.format_signal("", cfg) == (0.0, ["empty"])
    assert rw.format_signal("User: where is my card\nAssistant: card_arrival", cfg)[0] == 0.0
    assert "role-marker" in rw.format_signal("<|im_start|>user where is my card<|im_end|>", cfg)[1]
    assert rw.format_signal('{"text": "where is my card", "label": "card_arrival"}', cfg)[1] == ["markup"]
    assert rw.format_signal("card arrived?", cfg) == (0.5, ["too-few-words"])
    assert rw.format_signal(" ".join(["word"] * 20), cfg) == (0.5, ["too-many-words"])
    assert rw.format_signal("I am still waiting for the", cfg) == (0.25, ["cut-off"])
    assert rw.format_signal("Which countries are you in?", cfg) == (1.0, [])
    assert rw.format_signal("The customer was trying to offer a refund but was unable to", cfg)[1] == ["meta-text"]
    # 0.9 * 0.5 * 1 * 0.75 = 0.3375 against min_reward 0.4: rejected, and the reason shows every factor
    sig = {"format": 1.0, "novelty": 0.5, "label": 0.9, "judge": 0.75, "format_flags": [], "label_rank": 1}
    r = rw.reward_reason(sig, SynthConfig(min_reward=0.4))
    assert r.startswith("reward-low: 0.3375 < min_reward 0.4") and "novelty 0.5" in r
    assert rw.reward_reason(sig, SynthConfig(min_reward=0.3)) is None
    assert rw.reward_reason(sig, SynthConfig(min_reward=0.0)) is None
    with pytest.raises(ValueError, match="novelty_hi"):
        SynthConfig(novelty_lo=0.9, novelty_hi=0.8).validate()
    with pytest.raises(ValueError, match="min_reward"):
        SynthConfig(min_reward=1.5).validate()


def test_a_copied_seed_scores_below_a_paraphrase(store):
    _fill(store)
    m = rw.RewardModel.from_store(store, CFG, embed=fake_embed)
    seed = "when will my card arrive in the post"
    texts = [seed, "When will my card arive in the post?", "Hi, when will my card arrive in the post",
             "has the card you posted to me been sent yet, it is not here"]
    sigs, _ = m.measure(texts, ["card_arrival"] * 4, [[seed]] * 4)
    copy, typo, filler, para = (rw.combine(s) for s in sigs)
    assert para > 0.5 and max(copy, typo) < 0.1 * para and filler < 0.5 * para
    assert sigs[0]["novelty"] == 0.0 and sigs[1]["char_similarity"] > 0.95 and sigs[3]["novelty"] == 1.0
    # a copy of ANOTHER existing record (not the seed) is a copy too
    (other,), _ = m.measure(["what exchange rate do you use?"], ["exchange_rate"], [[seed]])
    assert other["novelty"] == 0.0 and other["nearest_cosine"] > 0.99
    # ... but a candidate is never its own near-copy (a stored one is a duplicate, which the store reports)
    rid = _ex("what exchange rate do you use", "exchange_rate").id
    (own,), _ = m.measure(["what exchange rate do you use"], ["exchange_rate"], [[]], [rid])
    assert own["nearest_id"] != rid


class Backend:
    """Paraphrases from a fixed list by seed; the judge always answers 4 (text, no probabilities)."""

    name, model, max_batch = "fake", "fake-1", 1

    def __init__(self, outputs):
        self.outputs = outputs
        self.judged: list[str] = []
        self.lock = threading.Lock()

    def complete(self, messages, params):
        body = messages[-1]["content"]
        if "Rate this example" in body:
            with self.lock:
                self.judged.append(body)
            return "Score: 4"
        for seed_text, out in self.outputs.items():
            if seed_text in body:
                return out
        return "I would like to know more about this please"


def test_synthetic_rows_carry_the_signals_and_wrong_labels_are_rejected(store):
    _fill(store)
    outputs = {  # seed text -> what the "model" writes
        "when will my card arrive in the post": "My card is still not here, when does it arrive?",  # right label
        "how long does card delivery take": "my new card has not arrived yet",  # drifted to card_arrival: wrong
        "is the exchange rate fixed": "User: is the exchange rate fixed for me?\nAssistant: exchange_rate",  # broken
    }
    seeds = [e.id for e in store.query({"split": "train", "origin": "human"}) if e.user_text in outputs]
    be = Backend(outputs)
    counts = generate(store, be, "paraphrase", 3, SynthConfig(label_min_rows=10, min_reward=0.3), {"ids": seeds},
                      embedder=fake_embed)
    assert counts["reward_model"]["label_model"].startswith("logistic regression")
    assert counts["accepted"] == 1 and counts["reasons"] == {"reward-low": 2}, counts
    (rec,) = [e for e in store.query({"origin": "synthetic"}) if e.source.kind == "synthetic"]
    r = rec.signals["reward"]
    assert r["score"] == 4.0 and r["judge_parse"] == "pattern"  # the judge's 1-5 stays where it was
    s = r["signals"]
    assert set(s) >= {"format", "novelty", "label", "label_rank", "label_top", "judge", "seed_cosine", "nearest_cosine"}
    assert s["judge"] == 0.75 and s["label_rank"] == 1 and rec.label == "card_arrival"
    assert r["combined"] == pytest.approx(s["format"] * s["novelty"] * s["label"] * s["judge"], abs=1e-3)
    assert r["combined"] >= r["min_reward"] == 0.3
    log = [json.loads(x) for x in log_path(store).read_text().splitlines()]
    bad = {x["messages"][1]["content"]: x for x in log if x["decision"] == "rejected"}
    wrong = bad["my new card has not arrived yet"]
    assert wrong["reward"]["signals"]["label_top"] == "card_arrival" and "card_arrival" in wrong["reason"]
    assert bad["User: is the exchange rate fixed for me?\nAssistant: exchange_rate"]["reward"]["signals"]["format"] == 0.0
    # sure rejects (format × novelty × label already below min_reward) never reach the judge
    assert len(be.judged) == 1 and "My card is still not here" in be.judged[0]
