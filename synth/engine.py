"""A small continuous-batching decode engine over a transformers causal LM (CPU or GPU).

What a serving stack (vLLM, TGI) does, in ~200 lines, for the local backend and
:mod:`synth.server`:

* **Continuous batching** — rows join the running decode batch between two
  steps (:meth:`Engine.admit`) and leave it the step they finish
  (:meth:`Engine.step`), so a finished row costs nothing more and a new
  request does not wait for the whole batch.
* **Packed prefill, no padding waste** — prompts that arrive together and share
  a cached prefix are prefilled in one forward (their rests packed into one
  sequence, a block mask, each its own positions; :meth:`Engine.admit_many`),
  then each row's KV cache is left-padded into the batch; the attention mask
  hides the padding and each row keeps its own positions.  Columns that are
  padding for every row are trimmed when rows leave.
* **Prefix cache** — the KV of recent prompts is kept (LRU); a new prompt reuses
  the cached KV of its longest common prefix with any of them (the system
  prompt and template text every synth prompt shares) and only the rest is
  prefilled.  An identical prompt (a judge retry) prefills one token.
* **Per-row sampling** — greedy, or temperature/top-p with a per-row seeded
  generator: a row's tokens do not depend on what else is in the batch.
* **Log-probabilities** — per generated token, the top-k alternatives (the
  OpenAI ``logprobs``/``top_logprobs`` schema), and the probability of given
  ``choices`` tokens at the first generated position (the judge's score).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import torch

from curate.compat import onednn_linear, onednn_linear_available, onednn_pack


def _buf_layer_class():
    from transformers.cache_utils import DynamicLayer

    class BufLayer(DynamicLayer):
        """A KV cache layer over a preallocated buffer: a step writes its token in place instead of
        concatenating (copying) the whole cache, which cost ~18% of a batch-8 step here."""

        def __init__(self, k: torch.Tensor, v: torch.Tensor, spare: int = 64):
            super().__init__()
            B, H, n, D = k.shape
            self.kbuf = k.new_empty(B, H, n + spare, D)
            self.vbuf = v.new_empty(B, H, n + spare, D)
            self.kbuf[:, :, :n] = k
            self.vbuf[:, :, :n] = v
            self.n = n
            self.device, self.dtype = k.device, k.dtype
            self.is_initialized = True
            self.keys, self.values = self.kbuf[:, :, :n], self.vbuf[:, :, :n]

        def update(self, key_states, value_states, *args, **kwargs):
            m = key_states.shape[-2]
            if self.n + m > self.kbuf.shape[2]:  # grow (doubling): rare
                cap = max(2 * self.kbuf.shape[2], self.n + m + 64)
                for name in ("kbuf", "vbuf"):
                    old = getattr(self, name)
                    new = old.new_empty(*old.shape[:2], cap, old.shape[3])
                    new[:, :, : self.n] = old[:, :, : self.n]
                    setattr(self, name, new)
            self.kbuf[:, :, self.n : self.n + m] = key_states
            self.vbuf[:, :, self.n : self.n + m] = value_states
            self.n += m
            self.keys, self.values = self.kbuf[:, :, : self.n], self.vbuf[:, :, : self.n]
            return self.keys, self.values

    return BufLayer


class OneDNNLinear(torch.nn.Module):
    """An ``nn.Linear`` computed by oneDNN with its weight prepacked once (what torch's inductor does for CPU
    linears), instead of MKL's sgemm.  On this AMD EPYC core MKL's fp32 products were slow at every size
    the engine uses (30 layers' linears, 1 thread: 1 row 38.9 -> 33.9 ms, 8 rows 57 -> 37-40 ms, 33 rows
    117 -> 78 ms, 190 rows 470 -> 382 ms; the 49k-word output layer, 8 rows: 24.4 -> 9.4 ms).  Same fp32
    arithmetic, summed in another order: outputs within ~1e-4 of MKL's (not bitwise)."""

    def __init__(self, lin: torch.nn.Linear, batch_hint: int = 8):
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        with torch.no_grad():
            self.packed = onednn_pack(lin.weight.detach(), batch_hint)
        self.bias = None if lin.bias is None else lin.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.packed, self.bias)


def onednn_linears(lm: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of a CPU fp32 model, output layer included, by :class:`OneDNNLinear`
    (in place, inference only: the packed weights have no gradient); returns how many.  0 when the model is
    not on the CPU in fp32 or this torch has no oneDNN linear.  A tied output layer keeps the embedding
    weight (the embedding lookup still uses it) and gets a packed copy (+113 MB for SmolLM2)."""
    p = next(lm.parameters(), None)
    if p is None or p.device.type != "cpu" or p.dtype != torch.float32 or not onednn_linear_available():
        return 0
    n = 0
    for name, mod in list(lm.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(mod, child_name, OneDNNLinear(child))
                n += 1
    return n


class Row:
    """One generation: prompt ids, limits, sampling, and what came out."""

    def __init__(self, ids: list[int], max_new: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, logprobs: bool = False, top_logprobs: int = 0, choices: list[int] | None = None,
                 gone: Callable[[], bool] | None = None, tag: Any = None):
        if not ids:
            raise ValueError("empty prompt")
        self.ids = list(ids)
        self.max_new = max(1, int(max_new))
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.gen: torch.Generator | None = None
        if self.temperature > 0:
            self.gen = torch.Generator().manual_seed(int(seed))
        self.top_logprobs = max(0, int(top_logprobs))
        self.want_logprobs = bool(logprobs) or self.top_logprobs > 0
        self.choices = choices
        self.gone = gone or (lambda: False)
        self.tag = tag
        self.out: list[int] = []
        self.logprobs: list[dict[str, Any]] = []  # per token: {"id", "logprob", "top": [(id, logprob), ...]}
        self.choice_probs: list[float] | None = None
        self.finish: str | None = None  # "stop" | "length" | "cancelled" | "error"
        self.prefilled = 0  # prompt tokens actually computed (the rest came from the prefix cache)
        self.batch_at_admit = 0
        self.logits: torch.Tensor | None = None  # next-token logits while pending


class Engine:
    def __init__(self, lm, tok, max_batch: int = 8, prefix_cache: int = 16, min_prefix: int = 8,
                 pack_prefill: bool = True, head_chunk: int = 1024):
        self.lm = lm
        self.tok = tok
        self.max_batch = max(1, int(max_batch))
        self.prefix_cache_size = prefix_cache
        self.min_prefix = min_prefix
        self.pack_prefill = pack_prefill
        self.device = next(lm.parameters()).device
        eos = getattr(lm.generation_config, "eos_token_id", None) or tok.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        if getattr(tok, "chat_template", None):  # the template's end-of-turn token (<|im_end|>, <|eot_id|>, <end_of_turn>...)
            from train.template import stop_token_ids

            self.eos |= set(stop_token_ids(tok, tok.chat_template))
        self._prefix: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.rows: list[Row] = []
        self._Buf = _buf_layer_class()
        import inspect

        # transformers renamed the forward's cache argument (past_key_values -> cache)
        self._cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        # several rows on the CPU: the decoder and the output layer called separately, so the output layer
        # runs in slices (_logits); a model without the plain get_decoder/get_output_embeddings pair (or a
        # scaled / soft-capped output) goes through its own forward
        self.head_chunk = head_chunk
        self._head = self._decoder = None
        try:
            dec, head = lm.get_decoder(), lm.get_output_embeddings()
            cfg = getattr(lm, "config", None)
            plain = all(getattr(cfg, k, None) is None for k in ("final_logit_softcapping", "logit_scale"))
            if (head_chunk > 0 and self.device.type == "cpu" and plain and dec is not None and dec is not lm
                    and isinstance(head, torch.nn.Linear)):
                self._decoder, self._head = dec, head
                self._dec_cache_kw = ("cache" if "cache" in inspect.signature(dec.forward).parameters
                                      else "past_key_values")
        except (AttributeError, NotImplementedError):
            pass
        self.kv: list | None = None  # cache layers (BufLayer), keys per layer [B, H, T, D], left-padded
        self.mask: torch.Tensor | None = None  # [B, T] 1 = real token
        self.lock = threading.Lock()
        self.stats = {"steps": 0, "prefill_tokens": 0, "prefix_reused_tokens": 0, "prefill_s": 0.0, "decode_s": 0.0,
                      "row_steps": 0}

    # ------------------------------------------------------------ model calls
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, layers: list | None,
                 spare: int = 64) -> tuple[torch.Tensor, list]:
        """One forward over ``ids`` after the cache ``layers`` (None: a fresh cache); returns the last
        position's logits and the (updated in place, or new) cache layers."""
        from transformers.cache_utils import Cache, DynamicCache

        cache = DynamicCache() if layers is None else Cache(layers=layers)
        if self._head is None or ids.shape[0] == 1:
            out = self.lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                          **{self._cache_kw: cache})
            logits = out.logits[:, -1]
        else:
            out = self._decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                **{self._dec_cache_kw: cache})
            logits = self._logits(out.last_hidden_state[:, -1])
        if layers is None:
            layers = [self._Buf(lay.keys, lay.values, spare) for lay in cache.layers]
        return logits.float(), layers

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """The output layer for several rows ``h`` [B, hidden] on the CPU, in ``head_chunk``-word slices of
        the (vocab x hidden) weight: every logit is the same dot product (bitwise the same with MKL on
        SmolLM2's shapes at 2-8 rows, measured), but MKL's one product over the 113 MB fp32 weight with few
        rows was slow (2-8 rows: 21-27 -> 16-22 ms)."""
        W, b = self._head.weight, self._head.bias
        c = self.head_chunk
        out = h.new_empty(h.shape[0], W.shape[0])
        for i in range(0, W.shape[0], c):
            out[:, i : i + c] = torch.nn.functional.linear(h, W[i : i + c], None if b is None else b[i : i + c])
        return out

    def _match(self, ids: list[int]) -> tuple[int, Any, Any]:
        """The longest cached prefix of ``ids``: (length, its KV, its cache key); (0, None, None) if < min_prefix."""
        best, best_kv, best_key = 0, None, None
        for key, kv in self._prefix.items():
            n = min(len(key), len(ids) - 1)  # always compute at least the last prompt token
            i = 0
            while i < n and key[i] == ids[i]:
                i += 1
            if i > best:
                best, best_kv, best_key = i, kv, key
        if best < self.min_prefix:
            return 0, None, None
        return best, best_kv, best_key

    def _remember(self, ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        key = tuple(ids)
        self._prefix[key] = kv
        self._prefix.move_to_end(key)
        while len(self._prefix) > self.prefix_cache_size:
            self._prefix.popitem(last=False)

    def _prefill(self, row: Row) -> None:
        ids = row.ids
        best, best_kv, _ = self._match(ids)
        # room for the prompt's rest only: the row decodes in the batch's buffers (copied in by _join), and
        # these buffers live on as a prefix-cache entry, so they should hold no unused capacity
        spare = len(ids) - best
        kv = [self._Buf(k[:, :, :best], v[:, :, :best], spare) for k, v in best_kv] if best_kv else None
        rest = torch.tensor([ids[best:]], device=self.device)
        mask = torch.ones(1, len(ids), dtype=torch.long, device=self.device)
        pos = torch.arange(best, len(ids), device=self.device)[None]
        t = time.perf_counter()
        logits, layers = self._forward(rest, mask, pos, kv, 0)
        kv = [(lay.keys, lay.values) for lay in layers]  # views of the row's buffers: positions < len(ids) stay as they are
        self.stats["prefill_s"] += time.perf_counter() - t
        self.stats["prefill_tokens"] += len(ids) - best
        self.stats["prefix_reused_tokens"] += best
        row.prefilled = len(ids) - best
        self._remember(ids, kv)
        row.logits = logits[0]
        self._join(row, kv)

    def _prefill_packed(self, rows: list[Row], p: int, pkv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Prefill several rows that share the same cached prefix (``p`` tokens, KV ``pkv``) in ONE forward:
        their prompt rests are packed into one sequence after the prefix, and a block mask lets each token
        see the prefix and its own row's earlier tokens only (each row keeps its own positions).  One forward
        over all the rows' tokens instead of one per row: the weights are read once and the matrix products
        have 8x the rows (on this CPU ~2.7 ms/token for 200+ rows vs ~3.6 at ~30, and one output-layer
        product instead of one per row)."""
        rests = [r.ids[p:] for r in rows]
        lens = [len(x) for x in rests]
        n = sum(lens)
        starts = [sum(lens[:i]) for i in range(len(rows))]
        dev = self.device
        ids = torch.tensor([[t for x in rests for t in x]], device=dev)
        pos = torch.cat([torch.arange(p, p + m, device=dev) for m in lens])[None]
        allow = torch.zeros(1, 1, n, p + n, dtype=torch.bool, device=dev)
        allow[..., :p] = True
        for st, m in zip(starts, lens):
            allow[0, 0, st : st + m, p + st : p + st + m] = torch.ones(m, m, dtype=torch.bool, device=dev).tril()
        layers = [self._Buf(k[:, :, :p], v[:, :, :p], n) for k, v in pkv]
        from transformers.cache_utils import Cache

        t = time.perf_counter()
        last = torch.tensor([st + m - 1 for st, m in zip(starts, lens)], device=dev)
        out = self.lm(input_ids=ids, attention_mask=allow, position_ids=pos, use_cache=True, logits_to_keep=last,
                      **{self._cache_kw: Cache(layers=layers)})
        logits = out.logits[0].float()
        self.stats["prefill_s"] += time.perf_counter() - t
        self.stats["prefill_tokens"] += n
        self.stats["prefix_reused_tokens"] += p * len(rows)
        self.stats["packed_prefills"] = self.stats.get("packed_prefills", 0) + 1
        for i, (r, st, m) in enumerate(zip(rows, starts, lens)):
            kv = [(torch.cat([lay.keys[:, :, :p], lay.keys[:, :, p + st : p + st + m]], 2),
                   torch.cat([lay.values[:, :, :p], lay.values[:, :, p + st : p + st + m]], 2)) for lay in layers]
            r.prefilled = m
            self._remember(r.ids, kv)
            r.logits = logits[i]
            self._join(r, kv)

    def _spare(self) -> int:
        return max([r.max_new - len(r.out) for r in self.rows] + [0]) + 1

    def _join(self, row: Row, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        L = kv[0][0].shape[2]
        m = torch.ones(1, L, dtype=torch.long, device=self.device)
        self.rows.append(row)
        row.batch_at_admit = len(self.rows)
        spare = self._spare()
        if self.kv is None:
            self.kv, self.mask = [self._Buf(k, v, spare) for k, v in kv], m
            return
        T = self.kv[0].n
        W = max(T, L)
        B = len(self.rows)
        new = []
        for lay, (k, v) in zip(self.kv, kv):
            K = lay.keys.new_zeros(B, k.shape[1], W, k.shape[3])
            V = lay.values.new_zeros(B, v.shape[1], W, v.shape[3])
            K[:-1, :, W - T:], V[:-1, :, W - T:] = lay.keys, lay.values
            K[-1:, :, W - L:], V[-1:, :, W - L:] = k, v
            new.append(self._Buf(K, V, spare))
        self.kv = new
        self.mask = torch.cat([torch.nn.functional.pad(self.mask, (W - T, 0)), torch.nn.functional.pad(m, (W - L, 0))])

    def _leave(self, keep: list[int]) -> None:
        if not keep:
            self.rows, self.kv, self.mask = [], None, None
            return
        idx = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        mask = self.mask.index_select(0, idx)
        lead = int((mask.sum(0) == 0).long().cumprod(0).sum())  # columns that are padding for every row
        self.mask = mask[:, lead:]
        spare = self._spare()
        self.kv = [self._Buf(lay.keys.index_select(0, idx)[:, :, lead:], lay.values.index_select(0, idx)[:, :, lead:], spare)
                   for lay in self.kv]

    def clear_prefix_cache(self) -> None:
        self._prefix.clear()

    # ------------------------------------------------------------ public
    def admit(self, row: Row) -> None:
        """Prefill ``row`` (reusing the prefix cache) and add it to the running batch."""
        with torch.inference_mode():
            self._prefill(row)

    def admit_many(self, rows: list[Row]) -> None:
        """Prefill ``rows`` (arrived together) and add them to the running batch.  Rows that share a cached
        prefix are prefilled together in one packed forward (:meth:`_prefill_packed`); a row without one is
        prefilled alone first, so the rows after it can reuse its prompt (the shared template) as their prefix.
        ``pack_prefill = False`` (or one row) admits them one by one."""
        todo = list(rows)
        with torch.inference_mode():
            while todo:
                if not self.pack_prefill or len(todo) == 1:
                    self._prefill(todo.pop(0))
                    continue
                matches = [self._match(r.ids) for r in todo]
                if matches[0][0] == 0:  # no cached prefix: alone, then it is one
                    self._prefill(todo.pop(0))
                    continue
                _, kv, key = matches[0]
                # every row whose longest match is the same entry: packed after the prefix they all share
                # (a row that matched a token or two more recomputes those: cheaper than a forward of its own)
                hits = [(r, q) for r, (q, _, k) in zip(todo, matches) if k is key]
                if len(hits) == 1:
                    self._prefill(todo.pop(0))
                    continue
                group = [r for r, _ in hits]
                self._prefill_packed(group, min(q for _, q in hits), kv)
                todo = [r for r in todo if all(r is not g for g in group)]

    def _pick(self, row: Row, logits: torch.Tensor) -> int:
        logp = torch.log_softmax(logits, -1) if (row.want_logprobs or row.choices is not None) else None
        if row.choices is not None and row.choice_probs is None:
            row.choice_probs = logp[row.choices].exp().tolist()
        if row.temperature > 0:
            p = torch.softmax(logits / row.temperature, -1)
            if row.top_p < 1.0:
                sp, si = p.sort(descending=True)
                cut = (sp.cumsum(0) - sp) > row.top_p
                sp[cut] = 0
                p = torch.zeros_like(p).scatter(0, si, sp)
            tid = int(torch.multinomial(p, 1, generator=row.gen))
        else:
            tid = int(logits.argmax())
        if row.want_logprobs:
            top = logp.topk(row.top_logprobs) if row.top_logprobs else None
            row.logprobs.append({"id": tid, "logprob": float(logp[tid]),
                                 "top": list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []})
        return tid

    def step(self) -> list[Row]:
        """Pick each row's next token and run ONE batched forward for all rows; returns the rows that finished."""
        if not self.rows:
            return []
        with torch.inference_mode():
            done: list[Row] = []
            nxt: list[int] = []
            keep: list[int] = []
            for i, r in enumerate(self.rows):
                if r.gone():
                    r.finish = "cancelled"
                    done.append(r)
                    continue
                tid = self._pick(r, r.logits)
                if tid in self.eos:
                    r.finish = "stop"
                    done.append(r)
                    continue
                r.out.append(tid)
                if len(r.out) >= r.max_new:
                    r.finish = "length"
                    done.append(r)
                    continue
                keep.append(i)
                nxt.append(tid)
            if len(keep) < len(self.rows):
                self._leave(keep)
            if not self.rows:
                return done
            t = time.perf_counter()
            B = len(self.rows)
            self.mask = torch.cat([self.mask, torch.ones(B, 1, dtype=torch.long, device=self.device)], 1)
            pos = (self.mask.sum(1, keepdim=True) - 1)
            ids = torch.tensor(nxt, device=self.device)[:, None]
            logits, self.kv = self._forward(ids, self.mask, pos, self.kv)  # each layer writes its token in place
            for r, lg in zip(self.rows, logits):
                r.logits = lg
            self.stats["steps"] += 1
            self.stats["row_steps"] += B
            self.stats["decode_s"] += time.perf_counter() - t
            return done

    def run(self, rows: list[Row]) -> list[Row]:
        """Generate every row to the end, ``max_batch`` at a time (continuous: a free slot is refilled at once)."""
        with self.lock:
            todo = list(rows)
            while todo or self.rows:
                take = todo[: self.max_batch - len(self.rows)]
                del todo[: len(take)]
                if take:
                    self.admit_many(take)
                self.step()
        return rows

    # ------------------------------------------------------------ text helpers
    def text(self, row: Row) -> str:
        return self.tok.decode(row.out, skip_special_tokens=True).strip()

    def token_str(self, tid: int) -> str:
        return self.tok.decode([tid])

    def openai_logprobs(self, row: Row) -> list[dict[str, Any]]:
        """The OpenAI ``choices[].logprobs.content`` list for ``row`` (tokens as decoded text)."""
        out = []
        for e in row.logprobs[: len(row.out)]:
            t = self.token_str(e["id"])
            out.append({"token": t, "logprob": e["logprob"], "bytes": list(t.encode("utf-8")),
                        "top_logprobs": [{"token": (s := self.token_str(i)), "logprob": lp, "bytes": list(s.encode("utf-8"))}
                                         for i, lp in e["top"]]})
        return out
