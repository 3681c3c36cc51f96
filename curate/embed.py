"""Sentence embeddings of records and texts, cached in the store.

Owns the ``embeddings`` table: one row per ``(record_id, model)`` with the
float32 vector (L2-normalised, so a dot product is the cosine). ``model`` is
``"<model label>#<field>"`` because the same record embeds differently by the
text it is read from (``user`` turns for leakage, all non-system turns for
dedup). Texts without a record (lines of an external eval file) are cached under
``record_id = "text:<sha256 prefix of the text>"``.

A rerun embeds only what is not cached yet; :func:`embed` returns how many
vectors came from the cache. The default model is the embedded
all-MiniLM-L6-v2 (:func:`curate.models.embedder_path`); any local
sentence-transformers folder works (``--model PATH``).
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .models import DEFAULT_EMBED, embedder_path
from .store import Store

_MODELS: dict[str, object] = {}


@dataclass
class EmbedStats:
    cached: int = 0
    computed: int = 0


def model_label(model: str = DEFAULT_EMBED) -> str:
    """The name stored in the cache: the embedded model's name, or the resolved folder path."""
    if model in (DEFAULT_EMBED, "embedded", ""):
        return "all-MiniLM-L6-v2"
    return str(Path(model).resolve())


def text_key(text: str) -> str:
    return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def load_model(model: str = DEFAULT_EMBED):
    key = model_label(model)
    if key not in _MODELS:
        from sentence_transformers import SentenceTransformer

        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:  # pragma: no cover
            device = "cpu"
        _MODELS[key] = SentenceTransformer(str(embedder_path(model)), device=device)
    return _MODELS[key]


def _cached(store: Store, keys: Sequence[str], model_col: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for i in range(0, len(keys), 500):
        chunk = list(keys[i : i + 500])
        q = f"SELECT record_id, vec FROM embeddings WHERE model=? AND record_id IN ({','.join('?' * len(chunk))})"
        for rid, blob in store.conn.execute(q, [model_col, *chunk]):
            out[rid] = np.frombuffer(blob, dtype=np.float32)
    return out


def embed(store: Store, keys: Sequence[str], texts: Sequence[str], *, model: str = DEFAULT_EMBED,
          field: str = "text", batch_size: int = 64, progress: bool = False,
          stats: EmbedStats | None = None) -> np.ndarray:
    """``(len(texts), dim)`` float32 unit vectors; cached by ``(key, model#field)``."""
    if len(keys) != len(texts):
        raise ValueError("embed: keys and texts differ in length")
    stats = stats if stats is not None else EmbedStats()
    model_col = f"{model_label(model)}#{field}"
    have = _cached(store, keys, model_col)
    missing = [i for i, k in enumerate(keys) if k not in have]
    stats.cached += len(keys) - len(missing)
    stats.computed += len(missing)
    if missing:
        m = load_model(model)
        step = max(batch_size * 16, 512)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(missing), desc=f"embedding ({model_label(model)})", unit="text", file=sys.stderr)
        for s in range(0, len(missing), step):
            idx = missing[s : s + step]
            vecs = m.encode([texts[i] for i in idx], batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
            with store.tx() as c:
                c.executemany("INSERT OR REPLACE INTO embeddings (record_id, model, dim, vec) VALUES (?,?,?,?)",
                              [(keys[i], model_col, int(v.shape[0]), v.tobytes()) for i, v in zip(idx, vecs)])
            for i, v in zip(idx, vecs):
                have[keys[i]] = v
            if bar:
                bar.update(len(idx))
        if bar:
            bar.close()
    if not keys:
        return np.zeros((0, 0), np.float32)
    return np.stack([have[k] for k in keys]).astype(np.float32, copy=False)


def cosine_pairs(a: np.ndarray, b: np.ndarray | None, threshold: float, chunk: int = 2048,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pairs with cosine ≥ threshold: within ``a`` (i < j) when ``b`` is None, else ``a``×``b``.

    Exhaustive blocked matrix products: O(n·m·dim), fine up to ~10^5 records on a CPU.
    """
    self_mode = b is None
    other = a if self_mode else b
    pairs, scores = [], []
    rng = range(0, len(a), chunk)
    if progress:
        from tqdm import tqdm

        rng = tqdm(rng, desc="cosine neighbours", unit="block", file=sys.stderr)
    for s in rng:
        sims = a[s : s + chunk] @ other.T
        if self_mode:
            # only j > i
            ii = np.arange(s, min(s + chunk, len(a)))[:, None]
            sims = np.where(np.arange(len(other))[None, :] > ii, sims, -1.0)
        i, j = np.nonzero(sims >= threshold)
        pairs.append(np.stack([i + s, j], axis=1))
        scores.append(sims[i, j])
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return np.concatenate(pairs).astype(np.int64), np.concatenate(scores).astype(np.float32)
