"""Generation backends behind one small interface, plus retries, concurrency and the cache.

A backend has ``name``, ``model``, ``max_batch`` and
``complete(messages, params) -> str``; a backend with ``max_batch > 1`` also has
``complete_many(list_of_messages, params) -> list[str]`` (one batched forward).

* :class:`OpenAIBackend` — the ``openai`` package against any OpenAI-compatible
  server (OpenAI, vLLM, Ollama, llama.cpp, :mod:`synth.server`).  The API key is
  read from the environment variable named by ``api_key_env`` and never logged.
* :class:`LocalBackend` — transformers in process, the embedded SmolLM2 by
  default, batched left-padded generation on CPU.

:func:`run_requests` runs a list of requests: cache hits first (store cache,
namespace ``synth``, key = sha256 of backend, model, messages, params), then the
misses — batched for a local backend, on a thread pool of ``concurrency`` for an
HTTP one — each with :func:`call_with_retries` (exponential backoff with full
jitter on 429/5xx/timeouts/connection errors).  Every answer is written to the
cache as soon as it arrives, so a rerun, or a resume after a crash, repeats no call.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

CACHE_NS = "synth"


class TransientError(RuntimeError):
    """A failure worth retrying (rate limit, server error, timeout, connection)."""


class BackendError(RuntimeError):
    """A failure that retrying will not fix (bad request, auth, exhausted retries)."""


class Backend(Protocol):
    name: str
    model: str
    max_batch: int

    def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str: ...


def cache_key(backend: str, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    blob = json.dumps([backend, model, messages, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0, min(cap, base * (2 ** attempt)))


def call_with_retries(
    fn: Callable[[], str],
    max_retries: int = 6,
    base: float = 0.5,
    cap: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, Exception, float], None] | None = None,
) -> str:
    """Call ``fn``; on :class:`TransientError` wait a jittered backoff and retry.

    Raises :class:`BackendError` after ``max_retries`` retries; any other
    exception propagates at once (not retried).
    """
    rng = rng or random.Random()
    for attempt in range(max_retries + 1):
        try:
            return fn()
        except TransientError as e:
            if attempt == max_retries:
                raise BackendError(f"gave up after {max_retries} retries: {e}") from e
            d = backoff_delay(attempt, base, cap, rng)
            if on_retry:
                on_retry(attempt, e, d)
            sleep(d)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- openai
class OpenAIBackend:
    name = "openai"
    max_batch = 1

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0,
                 http_client: Any = None):
        import openai

        self.model = model
        self.base_url = base_url
        key = os.environ.get(api_key_env) or ("not-needed" if base_url else None)
        if key is None:
            raise BackendError(f"environment variable {api_key_env} is not set (needed for the OpenAI API without --base-url)")
        # our own retry loop does backoff; the client must not retry on its own
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0,
                                    http_client=http_client)
        self._openai = openai

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        r = self._create(messages, params)
        return r.choices[0].message.content or ""

    def _create(self, messages: list[dict[str, str]], params: dict[str, Any], **extra: Any):
        o = self._openai
        kw: dict[str, Any] = {"model": self.model, "messages": messages, **extra,
                              "max_tokens": int(params.get("max_tokens", 64)),
                              "temperature": float(params.get("temperature", 0.0))}
        if "top_p" in params:
            kw["top_p"] = float(params["top_p"])
        if "seed" in params:
            kw["seed"] = int(params["seed"])
        try:
            r = self.client.chat.completions.create(**kw)
        except (o.RateLimitError, o.APITimeoutError, o.APIConnectionError, o.InternalServerError) as e:
            raise TransientError(f"{type(e).__name__}: {e}") from e
        except o.APIStatusError as e:
            if e.status_code in (408, 409, 425, 429) or e.status_code >= 500:
                raise TransientError(f"HTTP {e.status_code}: {e}") from e
            raise BackendError(f"HTTP {e.status_code}: {e}") from e
        if not r.choices:
            raise TransientError("response without choices")
        return r

    def score(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """A judge call with ``logprobs``: the distribution over ``params["score"]["choices"]`` at the first
        generated token that is one of them, from its ``top_logprobs`` (``probs`` None when the server sent
        no logprobs, or the answer has no choice token: the caller falls back to parsing the text).

        ``score.prefill`` (vLLM, :mod:`synth.server`): the prefix is sent as a final assistant message to
        continue (``continue_final_message``), so the first generated token is the score."""
        sc = params["score"]
        choices = list(sc["choices"])
        p = {k: v for k, v in params.items() if k != "score"}
        extra: dict[str, Any] = {"logprobs": True, "top_logprobs": int(sc.get("top_logprobs", 20))}
        prefix = sc.get("prefix", "")
        if sc.get("prefill") and prefix:
            messages = [*messages, {"role": "assistant", "content": prefix}]
            extra["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        r = self._create(messages, p, **extra)
        text = r.choices[0].message.content or ""
        if sc.get("prefill") and prefix and not text.startswith(prefix):
            text = prefix + text  # vLLM answers the continuation only; llama.cpp repeats the prefix
        lp = getattr(r.choices[0], "logprobs", None)
        content = getattr(lp, "content", None) if lp is not None else None
        if not content:
            return {"text": text, "probs": None, "via": "text"}
        for tok in content:
            if tok.token.strip() in choices:
                probs = {c: 0.0 for c in choices}
                for alt in tok.top_logprobs or [tok]:
                    k = alt.token.strip()
                    if k in probs:
                        probs[k] += math.exp(alt.logprob)
                return {"text": text, "probs": probs, "via": "logprobs"}
        return {"text": text, "probs": None, "via": "text"}


# ---------------------------------------------------------------- local
class LocalBackend:
    """transformers in process through :class:`synth.engine.Engine` (continuous batching, prefix cache)."""

    name = "local"
    per_row_params = True  # complete_many / score_many take one params dict per conversation

    def __init__(self, model: str = "embedded:smollm2-135m-instruct", max_batch: int = 8, max_prompt_tokens: int = 1024,
                 device: str | None = None, onednn: bool | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from curate.models import materialize_chat_model

        from .engine import Engine, onednn_linears

        self.model = model
        self.max_batch = max(1, int(max_batch))
        self.max_prompt_tokens = max_prompt_tokens
        path = materialize_chat_model(model)
        self.tok = AutoTokenizer.from_pretrained(path)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        if device:
            self.lm.to(device)
        # oneDNN instead of MKL for the linears on the CPU (synth.engine.OneDNNLinear: 1.2-2.6x faster products
        # on this AMD core); SYNTH_ONEDNN=0 (or onednn=False) keeps transformers' own nn.Linear
        if onednn is None:
            onednn = os.environ.get("SYNTH_ONEDNN", "1") != "0"
        self.onednn_linears = onednn_linears(self.lm) if onednn else 0
        self.engine = Engine(self.lm, self.tok, max_batch=self.max_batch)
        self._torch = torch

    def prompt_ids(self, messages: list[dict[str, str]], prefix: str = "", continue_final: bool = False) -> list[int]:
        """Token ids of the chat prompt, ending where the assistant's answer starts (+ ``prefix``).

        ``continue_final``: the last message is an assistant turn to continue (vLLM's
        ``continue_final_message``), so the prompt ends inside it rather than after it."""
        if continue_final and messages and messages[-1]["role"] == "assistant":
            prefix = messages[-1]["content"] + prefix
            messages = messages[:-1]
        from train.template import conform_messages

        tpl = self.tok.chat_template
        text = self.tok.apply_chat_template(conform_messages(self.tok, messages, tpl), tokenize=False,
                                            add_generation_prompt=True) + prefix
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ids[-self.max_prompt_tokens:]

    def choice_ids(self, choices: Sequence[str]) -> list[int]:
        out = []
        for c in choices:
            ids = self.tok(c, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise BackendError(f"score choice {c!r} is {len(ids)} tokens for {self.model}; each choice must be one token")
            out.append(ids[0])
        return out

    def _row(self, ids: list[int], params: dict[str, Any], **kw):
        from .engine import Row

        return Row(ids, int(params.get("max_tokens", 64)), float(params.get("temperature", 0.0)),
                   float(params.get("top_p", 1.0)), int(params.get("seed", 0)), **kw)

    def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        return self.complete_many([messages], params)[0]

    def complete_many(self, convs: Sequence[list[dict[str, str]]], params: dict[str, Any] | Sequence[dict[str, Any]]) -> list[str]:
        """Greedy (or seeded sampling) generation of every conversation, ``max_batch`` rows decoded together;
        ``params``: one dict for all, or one per conversation."""
        ps = [params] * len(convs) if isinstance(params, dict) else list(params)
        rows = self.engine.run([self._row(self.prompt_ids(m), p) for m, p in zip(convs, ps)])
        return [self.engine.text(r) for r in rows]

    def score(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        return self.score_many([messages], params)[0]

    def score_many(self, convs: Sequence[list[dict[str, str]]], params: dict[str, Any] | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Read the next-token distribution over ``params["score"]["choices"]`` right after the prompt + prefix
        (exact, over the full vocabulary), then let the model go on for a rationale (``max_tokens`` - 1 tokens)."""
        ps = [params] * len(convs) if isinstance(params, dict) else list(params)
        sc = ps[0]["score"]
        prefix = sc.get("prefix", "")
        choices = list(sc["choices"])
        cids = self.choice_ids(choices)
        rows = self.engine.run([self._row(self.prompt_ids(m, prefix), p, choices=cids) for m, p in zip(convs, ps)])
        out = []
        for r in rows:
            probs = dict(zip(choices, r.choice_probs or [0.0] * len(choices)))
            out.append({"text": prefix + self.engine.text(r), "probs": probs, "via": "logprobs"})
        return out


def make_backend(cfg) -> Backend:
    if cfg.backend == "openai":
        return OpenAIBackend(cfg.model, cfg.base_url, cfg.api_key_env, cfg.timeout_s)
    if cfg.backend == "local":
        return LocalBackend(cfg.model, max_batch=cfg.concurrency)
    raise ValueError(f"unknown backend {cfg.backend!r} (local | openai)")


# ---------------------------------------------------------------- running requests
@dataclass
class Request:
    messages: list[dict[str, str]]
    params: dict[str, Any]


@dataclass
class Result:
    text: str | None
    error: str | None = None
    cached: bool = False
    data: dict[str, Any] | None = None  # a scoring request's answer ({"text", "probs", "via"})


@dataclass
class RunStats:
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    errors: int = 0


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "score"}


def _score(backend: Backend, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
    """A scoring call; a backend without ``score`` answers in text (parsed by the judge)."""
    if hasattr(backend, "score"):
        return backend.score(messages, params)
    return {"text": backend.complete(messages, _plain(params)), "probs": None, "via": "text"}


def _score_many(backend: Backend, convs: list, params: Any) -> list[dict[str, Any]]:
    if hasattr(backend, "score_many"):
        return backend.score_many(convs, params)
    plain = _plain(params) if isinstance(params, dict) else [_plain(p) for p in params]
    return [{"text": t, "probs": None, "via": "text"} for t in backend.complete_many(convs, plain)]


def _group_params(p: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in p.items() if k != "seed"}, sort_keys=True)


def run_requests(
    backend: Backend,
    requests: Sequence[Request],
    store=None,
    concurrency: int = 8,
    max_retries: int = 6,
    base: float = 0.5,
    cap: float = 20.0,
    stats: RunStats | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> list[Result]:
    """Answer every request, in order: a :class:`Result` with text, or with the error that stopped it."""
    stats = stats if stats is not None else RunStats()
    rng = rng or random.Random()
    rng_lock = threading.Lock()
    results: list[Result | None] = [None] * len(requests)
    keys = [cache_key(backend.name, backend.model, r.messages, r.params) for r in requests]
    todo: list[int] = []
    for i, k in enumerate(keys):
        hit = store.cache_get(CACHE_NS, k) if store is not None else None
        if hit is not None:
            results[i] = Result(hit["text"], cached=True, data=hit.get("data"))
            stats.cache_hits += 1
        else:
            todo.append(i)

    def remember(i: int, answer: str | dict[str, Any]) -> None:
        data = answer if isinstance(answer, dict) else None
        text = data["text"] if data is not None else answer
        results[i] = Result(text, data=data)
        if store is not None:
            entry = {"text": text, "backend": backend.name, "model": backend.model, "at": time.time()}
            if data is not None:
                entry["data"] = data
            store.cache_put(CACHE_NS, keys[i], entry)

    def on_retry(attempt: int, e: Exception, d: float) -> None:
        stats.retries += 1

    if getattr(backend, "max_batch", 1) > 1 and hasattr(backend, "complete_many"):
        groups: dict[str, list[int]] = {}
        for i in todo:
            groups.setdefault(_group_params(requests[i].params), []).append(i)
        bs = backend.max_batch
        for idxs in groups.values():
            for s in range(0, len(idxs), bs):
                part = idxs[s : s + bs]
                p = requests[part[0]].params
                if getattr(backend, "per_row_params", False):  # each row its own sampling seed
                    p = [requests[i].params for i in part]
                if "score" in requests[part[0]].params:
                    texts = _score_many(backend, [requests[i].messages for i in part], p)
                else:
                    texts = backend.complete_many([requests[i].messages for i in part], p)
                stats.calls += len(part)
                for i, t in zip(part, texts):
                    remember(i, t)
        return [r for r in results]  # type: ignore[misc]

    def one(i: int) -> str | dict[str, Any]:
        with rng_lock:
            local_rng = random.Random(rng.random())
        fn = (lambda m, p: _score(backend, m, p)) if "score" in requests[i].params else backend.complete
        return call_with_retries(lambda: fn(requests[i].messages, requests[i].params),
                                 max_retries, base, cap, sleep, local_rng, on_retry)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futs = {pool.submit(one, i): i for i in todo}
        for f in as_completed(futs):
            i = futs[f]
            stats.calls += 1
            try:
                remember(i, f.result())
            except BackendError as e:
                stats.errors += 1
                results[i] = Result(None, error=str(e))
    return [r for r in results]  # type: ignore[misc]
