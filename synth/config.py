"""Typed configuration of a synthesis run (``SynthConfig``), loadable from TOML.

Every threshold the reward filter uses lives here, with its meaning.  A TOML
file given with ``--config`` may set any field (top level or under a
``[synth]`` table); command-line flags override the file.  Unknown keys are an
error that names the key and the file.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class SynthConfig:
    # --- backend -----------------------------------------------------------
    backend: str = "local"
    """``local`` (transformers, in process) or ``openai`` (any OpenAI-compatible server)."""
    model: str = "embedded:smollm2-135m-instruct"
    """Model name sent to the server (openai) or a local folder / ``embedded:…`` (local)."""
    base_url: str | None = None
    """Server URL for ``openai``, e.g. ``http://127.0.0.1:8000/v1``; None = the openai package default."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself is never logged)."""
    concurrency: int = 8
    """Requests in flight at once (openai: thread pool size; local: generation batch size)."""
    timeout_s: float = 60.0
    """Per-request timeout in seconds."""
    max_retries: int = 6
    """Retries on 429 / 5xx / timeouts / connection errors, with exponential backoff and jitter."""
    backoff_base_s: float = 0.5
    """First backoff delay; attempt k waits uniform(0, min(cap, base * 2**k)) ("full jitter")."""
    backoff_cap_s: float = 20.0
    """Upper bound of one backoff delay."""
    # --- generation --------------------------------------------------------
    max_new_tokens: int = 64
    """Token budget of every generation call (short keeps CPU runs bearable)."""
    temperature: float = 0.8
    """Sampling temperature of the generation calls (the judge always uses 0)."""
    top_p: float = 0.95
    seed: int = 0
    """Seed of the seed-record shuffle and of each request's sampling seed."""
    system_prompt: str = "You are a helpful customer support assistant."
    """System turn of doc-qa records (paraphrase/self-instruct/multi-turn keep the seed's)."""
    chunk_size: int = 16
    """Candidates processed (generated, scored, written) per step; a crash loses at most one step (and the cache keeps its calls)."""
    fewshot: int = 3
    """self-instruct: how many same-label seeds the prompt shows."""
    # --- reward filter -----------------------------------------------------
    judge_max_tokens: int = 24
    """Token budget of a judge call: the score is read from the first token's probabilities, the rest is a
    short rationale (1 = score only, the cheapest)."""
    judge_prefill: bool = False
    """openai backend: send the ``Score: `` prefix as a final assistant message to continue (vLLM's
    ``continue_final_message``; ``python -m synth serve`` supports it), so the first generated token is the
    score.  Off for servers that do not support it (OpenAI's API): the score is then read at the first score
    token of the answer, or parsed from the text when the server returns no logprobs."""
    judge: bool = True
    """Score candidates with the LLM-judge rubric through the same backend."""
    min_judge_score: float = 3.0
    """Judge score (1-5) below which a candidate is rejected."""
    on_unparseable: str = "keep"
    """What to do when the judge output has no score: ``keep`` (score None, flagged) or ``reject``."""
    min_chars: int = 8
    """Generated text shorter than this is rejected (``too-short``)."""
    max_chars: int = 1200
    """Generated text longer than this is rejected (``too-long``)."""
    min_english_ratio: float = 0.3
    """Minimum share of common English words among the words of the generated text (language check; 0 = off)."""
    max_seed_similarity: float = 0.85
    """Word-set Jaccard with the seed's user text above which a candidate is a useless copy."""
    max_heldout_similarity: float = 0.6
    """Word-set Jaccard with ANY held-out user text above which a candidate is rejected (leak)."""
    # --- combined reward (synth.reward.combine: format × novelty × label × judge) ---------------
    min_reward: float = 0.2
    """Combined reward (0..1) below which a candidate is rejected (``reward-low``); 0 = store the score, reject nothing.
    0.2: where precision x recall (F1) of good vs planted bad candidates peaked (flat over 0.15-0.25) on the dev seed
    of ``bench/reward_filter.py`` with the embedded judge (whose factor is ~0.73 for everything)."""
    reward_embedder: str = "embedded:all-minilm-l6-v2"
    """Sentence embedder of the novelty and label-consistency signals (a local sentence-transformers folder
    works too); ``"off"`` = those two signals do not apply (count 1)."""
    label_c: float = 100.0
    """Inverse regularisation of the label classifier (scikit-learn ``LogisticRegression(C=…)``); weak
    regularisation makes p(label | text) decisive on a few rows per label."""
    label_names: bool = True
    """Add each label's own name (``card_arrival`` -> "card arrival") as one more training row of that label: a
    prior that matters when a label has only a few records; off for opaque label ids."""
    label_min_rows: int = 20
    """Labelled human train records the label classifier needs (and >= 2 labels); fewer: the label signal is off."""
    novelty_lo: float = 0.90
    """Similarity (cosine to the seed or the nearest train record, character similarity to the seed) up to which
    the novelty factor is 1."""
    novelty_hi: float = 0.98
    """Similarity from which the novelty factor is 0 (a copy); linear between ``novelty_lo`` and this."""
    min_words: int = 4
    """A generated message of fewer words gets format factor words/min_words (0 = no lower bound)."""
    max_words: int = 40
    """A generated message of more words gets format factor max_words/words (0 = no upper bound)."""
    refusal_phrases: list[str] = field(default_factory=lambda: [
        "as an ai", "as a language model", "i cannot", "i can't help", "i'm sorry, but", "i am sorry, but",
        "i'm not able to", "i am unable", "cannot assist", "here is a paraphrase", "here's a paraphrase",
        "paraphrased version", "sure, here", "sure! here", "rewritten message", "original message",
    ])
    """Lower-cased phrases that mark a refusal or boilerplate instead of data."""

    def validate(self, where: str = "config") -> "SynthConfig":
        if self.backend not in ("local", "openai"):
            raise ValueError(f"{where}: backend must be 'local' or 'openai', got {self.backend!r}")
        if self.on_unparseable not in ("keep", "reject"):
            raise ValueError(f"{where}: on_unparseable must be 'keep' or 'reject', got {self.on_unparseable!r}")
        if self.concurrency < 1:
            raise ValueError(f"{where}: concurrency must be >= 1, got {self.concurrency}")
        if self.judge_max_tokens < 1:
            raise ValueError(f"{where}: judge_max_tokens must be >= 1, got {self.judge_max_tokens}")
        if not 1 <= self.min_judge_score <= 5:
            raise ValueError(f"{where}: min_judge_score must be within 1..5, got {self.min_judge_score}")
        for name in ("max_seed_similarity", "max_heldout_similarity", "min_english_ratio", "min_reward",
                     "novelty_lo", "novelty_hi"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{where}: {name} must be within 0..1, got {v}")
        if self.novelty_hi < self.novelty_lo:
            raise ValueError(f"{where}: novelty_hi ({self.novelty_hi}) must be >= novelty_lo ({self.novelty_lo})")
        if self.label_c <= 0:
            raise ValueError(f"{where}: label_c must be > 0, got {self.label_c}")
        if self.min_words < 0 or self.max_words < 0 or (self.max_words and self.min_words > self.max_words):
            raise ValueError(f"{where}: need 0 <= min_words <= max_words (0 = no bound), got {self.min_words}, {self.max_words}")
        return self


FIELD_NAMES = {f.name for f in fields(SynthConfig)}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SynthConfig:
    """Defaults < TOML file (``[synth]`` table or top level) < overrides (non-None values)."""
    values: dict[str, Any] = {}
    where = "config"
    if path:
        where = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from e
        data = data.get("synth", data)
        unknown = set(data) - FIELD_NAMES
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(FIELD_NAMES)}")
        values.update(data)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        cfg = SynthConfig(**values)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from e
    return cfg.validate(where)
