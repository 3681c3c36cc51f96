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
        o = self._openai
        kw: dict[str, Any] = {"model": self.model, "messages": messages,
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
        return r.choices[0].message.content or ""


# ---------------------------------------------------------------- local
class LocalBackend:
    """transformers in process; ``complete_many`` generates a left-padded batch."""

    name = "local"

    def __init__(self, model: str = "embedded:smollm2-135m-instruct", max_batch: int = 8, max_prompt_tokens: int = 1024):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from curate.models import materialize_chat_model

        self.model = model
        self.max_batch = max(1, int(max_batch))
        self.max_prompt_tokens = max_prompt_tokens
        path = materialize_chat_model(model)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        self.tok.truncation_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self._torch = torch
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        return self.complete_many([messages], params)[0]

    def complete_many(self, convs: Sequence[list[dict[str, str]]], params: dict[str, Any],
                      stopping_criteria=None) -> list[str]:
        """Batched greedy (or seeded sampling) generation; ``stopping_criteria`` (transformers) can end rows
        early — the local server uses it to stop rows whose clients have gone."""
        torch = self._torch
        texts = [self.tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in convs]
        enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_prompt_tokens)
        temp = float(params.get("temperature", 0.0))
        kw: dict[str, Any] = {"max_new_tokens": int(params.get("max_tokens", 64)), "pad_token_id": self.tok.pad_token_id}
        if stopping_criteria is not None:
            kw["stopping_criteria"] = stopping_criteria
        if temp > 0:
            kw.update(do_sample=True, temperature=temp, top_p=float(params.get("top_p", 1.0)))
        else:
            kw.update(do_sample=False)
        with self._lock, torch.inference_mode():
            if temp > 0:
                torch.manual_seed(int(params.get("seed", 0)))
            out = self.lm.generate(**enc, **kw)
        n = enc["input_ids"].shape[1]
        return [self.tok.decode(o[n:], skip_special_tokens=True).strip() for o in out]


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


@dataclass
class RunStats:
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    errors: int = 0


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
            results[i] = Result(hit["text"], cached=True)
            stats.cache_hits += 1
        else:
            todo.append(i)

    def remember(i: int, text: str) -> None:
        results[i] = Result(text)
        if store is not None:
            store.cache_put(CACHE_NS, keys[i], {"text": text, "backend": backend.name, "model": backend.model, "at": time.time()})

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
                texts = backend.complete_many([requests[i].messages for i in part], requests[part[0]].params)
                stats.calls += len(part)
                for i, t in zip(part, texts):
                    remember(i, t)
        return [r for r in results]  # type: ignore[misc]

    def one(i: int) -> str:
        with rng_lock:
            local_rng = random.Random(rng.random())
        return call_with_retries(lambda: backend.complete(requests[i].messages, requests[i].params),
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
