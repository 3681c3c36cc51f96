"""``python -m synth``: synthetic examples with reward filtering (see docs/synth.md).

Verbs:
  generate  plan N candidates from train-split seeds (or document chunks), call the
            backend (cached, concurrent, retried), filter every candidate (judge +
            heuristics), store the survivors as pending synthetic records and log
            every candidate with its scores and reason.
  serve     a small OpenAI-compatible server for a local model (synth.server; tests, bench).
  serve-llamacpp  llama.cpp's own OpenAI-compatible server on a GGUF (synth.llamacpp; xllamacpp wheel).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import SynthConfig, load_config
from .strategies import STRATEGIES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    g = sub.add_parser("generate", help="generate, filter and store synthetic examples",
                       description="Generate N candidates with a strategy; every candidate is either stored as a "
                       "pending synthetic record (train split) or written to <workspace>/reports/synth-log.jsonl "
                       "with the reason. Reruns with the same arguments are answered from the cache.")
    g.add_argument("--strategy", required=True, choices=STRATEGIES,
                   help="paraphrase a seed's user turn | self-instruct new user turns in the seeds' style | "
                        "doc-qa Q&A pairs from document chunks | multi-turn: continue a seed conversation")
    g.add_argument("--n", type=int, required=True, help="number of candidates to generate (each is stored or logged)")
    g.add_argument("--seed-filter", action="append", default=[], metavar="KEY=VALUE",
                   help="restrict seeds (train split only), e.g. label=card_arrival, origin=human, status=approved; "
                        "repeatable")
    g.add_argument("--backend", choices=["local", "openai"], help="local (embedded SmolLM2 via transformers, default) "
                   "or openai (any OpenAI-compatible server)")
    g.add_argument("--model", help="model name (openai) or local model folder (local); default: embedded SmolLM2")
    g.add_argument("--base-url", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--api-key-env", help="name of the env var holding the API key (default OPENAI_API_KEY; never logged)")
    g.add_argument("--concurrency", type=int, help="requests in flight (openai) / batch size (local); default 8")
    g.add_argument("--timeout", type=float, help="per-request timeout in seconds (default 60)")
    g.add_argument("--max-new-tokens", type=int, help="tokens per generated candidate (default 64)")
    g.add_argument("--seed", type=int, help="sampling seed; a new seed gives new candidates instead of cache hits")
    g.add_argument("--no-judge", action="store_true", help="skip the LLM judge (heuristics only)")
    g.add_argument("--judge-prefill", action="store_true",
                   help="openai backend: the judge answer continues a 'Score: ' assistant prefix (vLLM's "
                        "continue_final_message; python -m synth serve supports it) so its first token is the score")
    g.add_argument("--config", help="TOML file with [backend], [generation], [reward] sections (see docs/synth.md)")
    g.add_argument("--workspace", help="workspace folder (default $WORKBENCH_HOME or data/workspace)")
    g.add_argument("--json", action="store_true", help="print the run's counters as JSON")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("serve", help="OpenAI-compatible server for a local model (see python -m synth serve --help)",
                   add_help=False)
    sub.add_parser("serve-llamacpp", help="llama.cpp's OpenAI-compatible server on a GGUF (default: the embedded "
                   "SmolLM2), in process via xllamacpp (see python -m synth serve-llamacpp --help)", add_help=False)
    return p


def _config(a: argparse.Namespace) -> SynthConfig:
    return load_config(a.config, {
        "backend": a.backend, "model": a.model, "base_url": a.base_url, "api_key_env": a.api_key_env,
        "concurrency": a.concurrency, "timeout_s": a.timeout, "max_new_tokens": a.max_new_tokens, "seed": a.seed,
        "judge": False if a.no_judge else None, "judge_prefill": True if a.judge_prefill else None,
    })


def cmd_generate(a: argparse.Namespace) -> int:
    from curate.store import open_store

    from .backends import make_backend
    from .generate import generate
    from .strategies import parse_seed_filters

    if a.n < 1:
        print("error: --n must be >= 1", file=sys.stderr)
        return 2
    try:
        cfg = _config(a)
        filters = parse_seed_filters(a.seed_filter)
        store = open_store(a.workspace)
        backend = make_backend(cfg)
        counts = generate(store, backend, a.strategy, a.n, cfg, filters, progress=not a.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(counts, indent=2))
    else:
        print(f"{counts['accepted']} stored as pending synthetic, {counts['rejected']} rejected, "
              f"{counts['duplicate']} already present, {counts['error']} failed "
              f"({counts['calls']} calls, {counts['cache_hits']} cache hits, {counts['retries']} retries, "
              f"{counts['seconds']} s); every candidate is in {counts['log']}")
        if counts["reasons"]:
            print("reasons: " + ", ".join(f"{k}={v}" for k, v in sorted(counts["reasons"].items())))
    return 0


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that sleep when idle instead of spinning: on a small CPU shared with other work,
    # spinning torch threads that get preempted made a batch-8 decoding step 6x slower (measured: 1029 ms
    # vs 181 ms with 2 threads); must be set before torch is imported.  An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from .server import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["serve-llamacpp"]:
        from .llamacpp import main as llamacpp_main

        return llamacpp_main(argv[1:])
    from curate.entry import flag_spellings

    with flag_spellings():  # --batch-size or --batch_size, as every verb
        a = build_parser().parse_args(argv)
    return cmd_generate(a)
