"""Snapshot rows → token ids and labels, with the loss on assistant tokens only.

The mask marks each assistant turn and its end-of-turn text in the base model's own
chat template (:func:`train.template.tokenize_with_mask`: ``{% generation %}`` markers
where the template has them, render-and-diff otherwise). Labels are the token id
inside an assistant span and -100 everywhere else (system, user, role headers).
Both engines (``fast`` and ``trl``) train on exactly these ids and labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .packing import IGNORE
from .template import labels_from_mask, tokenize_with_mask

MASK_VERSION = "spans-2"  # part of the cache key: bump when the masking rule changes


def tokenize_example(tokenizer, messages: Sequence[dict[str, Any]], template: str, max_length: int) -> dict:
    """{"input_ids", "labels", "truncated"} for one conversation, truncated to ``max_length`` tokens."""
    ids, mask = tokenize_with_mask(tokenizer, messages, template)
    labels = labels_from_mask(ids, mask)
    truncated = len(ids) > max_length
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": truncated}


@dataclass
class TokenizedSet:
    """The train split as the engine sees it, and what tokenization did to it (for the manifest)."""

    examples: list[dict] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    truncated: int = 0
    dropped_no_target: list[str] = field(default_factory=list)  # ids whose assistant tokens were all cut off
    tokens: int = 0
    target_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        return {"examples": len(self.examples), "tokens": self.tokens, "target_tokens": self.target_tokens,
                "truncated": self.truncated, "dropped_no_target": len(self.dropped_no_target),
                "dropped_ids": self.dropped_no_target[:20]}


def cached_tokenize_rows(tokenizer, rows: Sequence[dict[str, Any]], template: str, max_length: int,
                         key_parts: Sequence[str], cache_dir) -> tuple[TokenizedSet, bool]:
    """:func:`tokenize_rows` with an on-disk cache keyed by ``key_parts`` (the snapshot's train-file sha256),
    the tokenizer's vocabulary, the template and ``max_length``. Returns (set, came_from_cache)."""
    import hashlib
    import json
    import os
    import pickle
    from pathlib import Path

    h = hashlib.sha256()
    for part in (MASK_VERSION, *key_parts, template, str(max_length), str(len(tokenizer)),
                 tokenizer.name_or_path):
        h.update(str(part).encode() + b"\0")
    h.update(hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).digest())
    path = Path(cache_dir) / f"tok-{h.hexdigest()[:24]}.pkl"
    if path.exists():
        try:
            with open(path, "rb") as f:
                ts = pickle.load(f)
            if isinstance(ts, TokenizedSet) and len(ts.examples) + len(ts.dropped_no_target) == len(rows):
                return ts, True
        except Exception:  # a torn or foreign file: tokenize again and overwrite it
            pass
    ts = tokenize_rows(tokenizer, rows, template, max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(ts, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return ts, False


def tokenize_rows(tokenizer, rows: Sequence[dict[str, Any]], template: str, max_length: int) -> TokenizedSet:
    """Tokenize snapshot rows. Examples with no trained token left after truncation are not trainable:
    they are listed (never silently lost) and left out of the set."""
    ts = TokenizedSet()
    for r in rows:
        ex = tokenize_example(tokenizer, r["messages"], template, max_length)
        ts.truncated += ex["truncated"]
        if all(x == IGNORE for x in ex["labels"][1:]):
            ts.dropped_no_target.append(r["id"])
            continue
        ts.examples.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
        ts.ids.append(r["id"])
        ts.tokens += len(ex["input_ids"])
        ts.target_tokens += sum(x != IGNORE for x in ex["labels"][1:])
    return ts
