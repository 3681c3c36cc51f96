"""Fast tier: prompt templates, output cleaning/parsing, judge parsing (incl. garbage), heuristics."""
from __future__ import annotations

import pytest

from synth import reward as rw
from synth.config import SynthConfig
from synth.strategies import PROMPT_DIR, TemplateError, clean_output, load_template, parse_qa, render


def test_every_template_renders_and_names_missing_placeholders(tmp_path):
    names = sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))
    assert {"paraphrase", "self_instruct", "doc_qa", "multi_turn", "judge"} <= set(names)
    msgs = render("paraphrase", text="where is my card?")
    assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
    assert "where is my card?" in msgs[-1]["content"] and "$" not in msgs[-1]["content"]
    with pytest.raises(TemplateError, match=r"paraphrase.txt: no value for placeholder \$text"):
        render("paraphrase")
    (tmp_path / "bad.txt").write_text("stray line\n### user\nhi\n")
    with pytest.raises(TemplateError, match="before the first"):
        load_template("bad", tmp_path)
    (tmp_path / "nouser.txt").write_text("### system\nhi\n")
    with pytest.raises(TemplateError, match="no '### user'"):
        load_template("nouser", tmp_path)


def test_judge_prompt_shows_the_example():
    p = rw.judge_prompt([{"role": "user", "content": "my card is lost"}, {"role": "assistant", "content": "lost_card"}])
    assert "Customer: my card is lost" in p[-1]["content"] and "Assistant: lost_card" in p[-1]["content"]


@pytest.mark.parametrize("text,score,how", [
    ('{"score": 4, "rationale": "clear"}', 4.0, "json"),
    ('Sure. {"score": "5", "rationale": "great"} done', 5.0, "json"),
    ("Score: 3\nRationale: a bit vague", 3.0, "pattern"),
    ("I'd rate it 2/5 because the reply is wrong", 2.0, "pattern"),
    ("rating 4", 4.0, "pattern"),
    ('{"score": 9, "rationale": "off scale"}', None, "unparseable"),
    ("banana", None, "unparseable"),
    ("", None, "unparseable"),
    ("{not json at all", None, "unparseable"),
    ("The example is good.", None, "unparseable"),
])
def test_parse_judge(text, score, how):
    j = rw.parse_judge(text)
    assert j["score"] == score and j["parse"] == how
    if how == "pattern" and "Rationale" in text:
        assert j["rationale"] == "a bit vague"


def test_clean_output_and_parse_qa():
    assert clean_output('Sure! Here is the rewritten message: "Where is my card?"') == "Where is my card?"
    assert clean_output("Rewritten message: I lost my card.\n\nHope this helps!") == "I lost my card."
    assert clean_output("  ") == ""
    assert parse_qa("Question: How do I reset?\nAnswer: Open settings.") == ("How do I reset?", "Open settings.")
    assert parse_qa("**Question:** Why?\n**Answer:** Because.") == ("Why?", "Because.")
    assert parse_qa("just some text") is None
    assert parse_qa("Question: Can I pay? Answer: Yes, by card. Question: again? Answer: x") == ("Can I pay?", "Yes, by card.")
    assert parse_qa("Question: only a question, no answer") is None


def test_heuristics_and_decide():
    cfg = SynthConfig()
    idx = rw.HeldoutIndex([("h1", "how long does a transfer from abroad take"), ("h2", "my card got declined at the shop")])
    ok = rw.heuristics("Could you tell me why my top up failed today?", ["why did my top-up fail"], idx, cfg)
    assert rw.decide(ok, {"score": 4.0, "rationale": "", "parse": "json"}, cfg) is None
    assert rw.decide(ok, {"score": 2.0, "rationale": "", "parse": "json"}, cfg).startswith("judge-low")
    assert rw.decide(ok, {"score": None, "rationale": "", "parse": "unparseable"}, cfg) is None
    assert rw.decide(ok, {"score": None, "rationale": "", "parse": "unparseable"},
                     SynthConfig(on_unparseable="reject")).startswith("judge-unparseable")

    def reason(text, seeds=("unrelated words here",)):
        return rw.heuristic_reason(rw.heuristics(text, list(seeds), idx, cfg), cfg) or ""

    assert reason("hi").startswith("too-short")
    assert reason("word " * 400).startswith("too-long")
    assert reason("As an AI language model, I cannot help with that.").startswith("refusal")
    assert reason("Rewrite this customer message in different words: my card").startswith("boilerplate")
    assert reason("Mi tarjeta fue rechazada en la tienda ayer por la tarde").startswith("language")
    assert reason("How long does a transfer from abroad take?").startswith("heldout-similar")
    assert reason("My card got declined at the shop!!").startswith("heldout-similar")
    assert reason("why did my top-up fail", seeds=["Why did my top-up fail?"]).startswith("copy-of-seed")
    sim, rid = idx.max_similarity("how long does a transfer take")
    assert rid == "h1" and 0.5 < sim < 1


def test_config_toml_errors_name_file_and_key(tmp_path):
    from synth.config import load_config

    p = tmp_path / "synth.toml"
    p.write_text("min_judge_score = 4\nmax_heldout_similarity = 0.5\n")
    cfg = load_config(p, {"concurrency": 2})
    assert cfg.min_judge_score == 4 and cfg.max_heldout_similarity == 0.5 and cfg.concurrency == 2
    p.write_text("min_judge_scor = 4\n")
    with pytest.raises(ValueError, match="synth.toml.*min_judge_scor"):
        load_config(p)


def test_judge_score_from_probabilities_and_text_fallback():
    d = rw.judge_result({"text": "Score: 4. Clear and realistic.", "probs": {"1": 0.1, "2": 0.0, "3": 0.0, "4": 0.2, "5": 0.1},
                         "via": "logprobs"})
    assert d["parse"] == "logprobs" and d["score"] == pytest.approx(3.5) and d["mass"] == pytest.approx(0.4)
    assert d["probs"]["4"] == pytest.approx(0.5) and d["rationale"] == "Clear and realistic."
    # no logprobs from the server, or no probability on any score token: the text is parsed
    assert rw.judge_result({"text": "Score: 2 - vague", "probs": None, "via": "text"})["score"] == 2.0
    assert rw.judge_result({"text": "Rating 5", "probs": {c: 0.0 for c in "12345"}})["parse"] == "pattern"
    assert rw.judge_result({"text": "Yes, it is clear.", "probs": None})["parse"] == "unparseable"
    assert rw.judge_result("Score: 3")["score"] == 3.0
    p = rw.judge_params(SynthConfig(judge_max_tokens=1, judge_prefill=True))
    assert p["max_tokens"] == 1 and p["temperature"] == 0.0
    assert p["score"]["choices"] == ["1", "2", "3", "4", "5"] and p["score"]["prefill"] is True
    with pytest.raises(ValueError, match="judge_max_tokens"):
        SynthConfig(judge_max_tokens=0).validate()
