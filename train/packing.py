"""Packing of pre-tokenized examples into fixed-size rows (owned by the fast CUDA engine, issue 9).

A *row* is ``row_tokens`` token slots holding several whole examples back to back. Each example keeps
its own ``position_ids`` (restarting at 0), so transformers' masking code (``find_packed_sequence_indices``
in ``transformers.masking_utils``, used by the sdpa/eager/flash paths when ``attention_mask`` is None)
builds a block-diagonal causal mask: no token attends across examples. The first label of every packed
example is set to -100, because in the unpacked case that position is never a target either (labels are
shifted by one inside the loss); the loss over a packed batch therefore equals the loss over the same
examples unpacked (``tests/test_packing.py`` proves it on a tiny random Llama).

Examples longer than ``row_tokens`` are truncated to ``row_tokens`` (the caller's ``max_length``) and
counted in :class:`PackStats`; nothing is dropped silently. Tail slots are padding: token ``pad_id``,
label -100, positions 0.. (a separate pseudo-sequence that no real token attends to).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

IGNORE = -100


@dataclass
class PackStats:
    """What packing did: examples in, rows out, real tokens, padding slots, truncated examples."""

    examples: int = 0
    rows: int = 0
    real_tokens: int = 0
    pad_tokens: int = 0
    truncated: int = 0
    truncated_tokens: int = 0

    @property
    def fill(self) -> float:
        total = self.real_tokens + self.pad_tokens
        return self.real_tokens / total if total else 0.0


@dataclass
class PackedRow:
    """One row: concatenated ids/labels/position ids plus the example boundaries (cu_seqlens style)."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    cu_seqlens: list[int] = field(default_factory=lambda: [0])
    sources: list[int] = field(default_factory=list)  # index (in the packed list) of each example, in order

    def add(self, ids: list[int], labels: list[int], source: int = -1) -> None:
        self.input_ids.extend(ids)
        lab = list(labels)
        lab[0] = IGNORE  # never predicted in the unpacked case either (shifted loss)
        self.labels.extend(lab)
        self.position_ids.extend(range(len(ids)))
        self.cu_seqlens.append(len(self.input_ids))
        self.sources.append(source)


def _check(i: int, ex: dict) -> tuple[list[int], list[int]]:
    try:
        ids, labels = list(ex["input_ids"]), list(ex["labels"])
    except (KeyError, TypeError):
        raise ValueError(f"tokenized example #{i}: needs 'input_ids' and 'labels' lists, got {type(ex).__name__} "
                         f"with keys {sorted(ex) if isinstance(ex, dict) else '-'}") from None
    if len(ids) != len(labels):
        raise ValueError(f"tokenized example #{i}: input_ids has {len(ids)} tokens but labels has {len(labels)}")
    if not ids:
        raise ValueError(f"tokenized example #{i}: empty input_ids")
    return ids, labels


def pack_examples(examples: list[dict], row_tokens: int, *, shuffle_seed: int | None = 0,
                  stats: PackStats | None = None) -> list[PackedRow]:
    """First-fit-decreasing packing of ``examples`` ({"input_ids", "labels"}) into rows of ``row_tokens``.

    ``shuffle_seed``: the rows are shuffled with this seed afterwards (None keeps FFD order) so that a
    training step does not see only long or only short examples.
    """
    if row_tokens < 2:
        raise ValueError(f"row_tokens must be >= 2, got {row_tokens}")
    st = stats if stats is not None else PackStats()
    items = []
    for i, ex in enumerate(examples):
        ids, labels = _check(i, ex)
        if len(ids) > row_tokens:
            st.truncated += 1
            st.truncated_tokens += len(ids) - row_tokens
            ids, labels = ids[:row_tokens], labels[:row_tokens]
        items.append((ids, labels))
    st.examples += len(items)
    order = sorted(range(len(items)), key=lambda k: -len(items[k][0]))
    rows: list[PackedRow] = []
    free: list[int] = []  # free slots per row, parallel to rows
    for k in order:
        ids, labels = items[k]
        n = len(ids)
        # first fit over all rows (rows are few: n_tokens / row_tokens)
        for r in range(len(rows)):
            if free[r] >= n:
                rows[r].add(ids, labels, k)
                free[r] -= n
                break
        else:
            row = PackedRow()
            row.add(ids, labels, k)
            rows.append(row)
            free.append(row_tokens - n)
    for row in rows:
        st.real_tokens += len(row.input_ids)
        st.pad_tokens += row_tokens - len(row.input_ids)
    st.rows += len(rows)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    return rows


def collate_rows(rows: list[PackedRow], row_tokens: int, pad_id: int = 0):
    """Tensors for a micro-batch of rows, each padded to ``row_tokens``: input_ids, labels, position_ids
    ([B, row_tokens] int64) and ``n_real`` (non-pad tokens) / ``n_targets`` (labels != -100)."""
    import torch

    B = len(rows)
    ids = torch.full((B, row_tokens), pad_id, dtype=torch.long)
    lab = torch.full((B, row_tokens), IGNORE, dtype=torch.long)
    pos = torch.zeros((B, row_tokens), dtype=torch.long)
    n_real = 0
    for b, r in enumerate(rows):
        n = len(r.input_ids)
        n_real += n
        ids[b, :n] = torch.tensor(r.input_ids)
        lab[b, :n] = torch.tensor(r.labels)
        pos[b, :n] = torch.tensor(r.position_ids)
        if n < row_tokens:
            pos[b, n:] = torch.arange(row_tokens - n)
    return {"input_ids": ids, "labels": lab, "position_ids": pos,
            "n_real": n_real, "n_targets": int((lab != IGNORE).sum())}


def collate_flat(rows: list[PackedRow], multiple: int = 64, pad_id: int = 0):
    """A micro-batch of rows as one sequence ``[1, N]``: every row's examples back to back with no padding
    between rows, then one padding tail up to a multiple of ``multiple`` tokens. Only for variable-length
    attention (the examples are kept apart by ``cu_seqlens``, not by rows). Two reasons: no row's padding is
    computed, and the batch dimension is always 1, so Triton kernels that specialize on it (Liger's RoPE has
    the batch size as a compile-time constant) compile once instead of once per new row count (measured on
    the H200: +0.25 s on each step whose row count was new). ``multiple`` keeps the few shapes stable.

    Returns collate_rows' keys plus ``cu_seqlens`` (every example is a segment, and so is the tail) and
    ``longest`` (the longest segment)."""
    import torch

    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    ids: list[int] = []
    lab: list[int] = []
    pos: list[int] = []
    cu, longest = [0], 1
    for r in rows:
        base = len(ids)
        for a, z in zip(r.cu_seqlens[:-1], r.cu_seqlens[1:]):
            cu.append(base + z)
            longest = max(longest, z - a)
        ids.extend(r.input_ids)
        lab.extend(r.labels)
        pos.extend(r.position_ids)
    n_real = len(ids)
    tail = -n_real % multiple if n_real else multiple
    if tail:
        ids.extend([pad_id] * tail)
        lab.extend([IGNORE] * tail)
        pos.extend(range(tail))
        cu.append(len(ids))
        longest = max(longest, tail)
    t = torch.tensor([ids, lab, pos], dtype=torch.long)
    return {"input_ids": t[0:1], "labels": t[1:2], "position_ids": t[2:3], "n_real": n_real,
            "n_targets": sum(y != IGNORE for y in lab), "cu_seqlens": cu, "longest": longest}


def cache_key(examples: list[dict], row_tokens: int, extra: str = "") -> str:
    """Content hash of the tokenized examples + packing parameters (key for the on-disk packed cache)."""
    h = hashlib.sha256(f"{row_tokens}|{extra}|".encode())
    for ex in examples:
        h.update(json.dumps([list(ex["input_ids"]), list(ex["labels"])], separators=(",", ":")).encode())
    return h.hexdigest()[:20]
