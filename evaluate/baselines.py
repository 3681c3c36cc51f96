"""Reference baselines shown beside the base and the tuned model.

Label tasks (every reference is the record's label, a closed set):

* ``majority_class``: always the most frequent label of the snapshot's *train*
  split (ties: the alphabetically first).
* ``embedding_classifier``: scikit-learn ``LogisticRegression`` on sentence
  embeddings of the user turns (the embedded all-MiniLM-L6-v2 by default, any
  local sentence-transformers folder with ``--embedder``), fitted on the train
  split only — never on held-out or eval items.

Any task, when configured: ``reference_model``, the replies of another model
behind an OpenAI-compatible server (``--reference-model`` and
``--reference-base-url``), through synth's client (retries with backoff,
bounded concurrency), greedy (temperature 0).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np

MAJORITY = "majority_class"
EMBEDDING = "embedding_classifier"
REFERENCE = "reference_model"
DESCRIPTIONS = {
    MAJORITY: "the train split's most frequent label, for every item",
    EMBEDDING: "logistic regression on sentence embeddings of the user turns, fitted on the train split",
    REFERENCE: "another model's greedy replies through an OpenAI-compatible server",
}

Embedder = Callable[[list[str]], np.ndarray]


def user_text(messages: Sequence[dict]) -> str:
    """The user turns joined, as ``curate leakage`` reads a prompt (``Example.user_text``)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def majority_label(labels: Sequence[str]) -> str:
    counts = Counter(labels)
    top = max(counts.values())
    return min(lab for lab, c in counts.items() if c == top)


def sentence_embedder(model: str) -> Embedder:
    """Unit-length float32 vectors from a sentence-transformers model (curate.embed's loader and cache of models)."""
    from curate.embed import load_model

    m = load_model(model)

    def encode(texts: list[str]) -> np.ndarray:
        return m.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False).astype(np.float32)

    return encode


class EmbeddingClassifier:
    """Logistic regression on embeddings; ``fit`` on train texts and labels, then ``predict`` any texts."""

    def __init__(self, embed: Embedder, C: float = 1.0):
        self.embed = embed
        self.C = C
        self.clf = None

    def fit(self, texts: list[str], labels: list[str]) -> "EmbeddingClassifier":
        from sklearn.linear_model import LogisticRegression

        if len(set(labels)) < 2:
            raise ValueError(f"the train split has {len(set(labels))} label(s); a classifier needs two or more")
        self.clf = LogisticRegression(C=self.C, max_iter=2000).fit(self.embed(texts), labels)
        return self

    def predict(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        return [str(x) for x in self.clf.predict(self.embed(texts))]


def reference_replies(prompts: list[list[dict]], model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY",
                      max_tokens: int = 64, concurrency: int = 4, timeout_s: float = 60.0) -> tuple[list[str], list[str]]:
    """The reference model's greedy replies (``""`` for an item whose request failed) and the failures' errors."""
    from synth.backends import OpenAIBackend, Request, run_requests

    backend = OpenAIBackend(model, base_url, api_key_env, timeout_s)
    params = {"max_tokens": max_tokens, "temperature": 0.0}
    res = run_requests(backend, [Request(list(p), params) for p in prompts], concurrency=concurrency)
    return [(r.text or "").strip() for r in res], [r.error or "no text" for r in res if r.text is None]
