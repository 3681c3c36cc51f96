"""``python -m train export``: serve a trained run, with proof that serving matches training.

Owns: reading a run folder (LoRA adapter, tokenizer + chat template,
``manifest.json``), folding the adapter into the base weights, and writing one
of three formats, each checked before it is published:

``merged``
    HF folder (fp32 safetensors + tokenizer + the serving chat template).
    Check: merged logits equal the base+adapter (unmerged PEFT) logits.
``gguf``
    ``model-<dtype>.gguf`` written by :mod:`train.gguf_writer` (Llama/Llama 3,
    Mistral, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3, Phi-3; f16, q8_0, q5_k_m or
    q4_k_m).  Checks against real llama.cpp (the ``xllamacpp`` wheel, llama.cpp
    built for Python): its Jinja rendering of the GGUF's
    ``tokenizer.chat_template`` equals the training prompts (plus the BOS token
    it adds), its tokenizer gives the training ids, and its greedy decoding of
    held-out prompts equals the merged model's (a divergence is accepted only at
    a near-tie of the merged model's two best tokens, and reported).  The file is
    also read back with transformers' GGUF loader (chat template, tokenizer,
    greedy and teacher-forced logits within a dtype tolerance); those numbers
    are reported, and decide only where llama.cpp is not installed.
``ollama``
    ``model.gguf`` + ``Modelfile`` (see :mod:`train.modelfile`).  Checks: all
    of the ``gguf`` checks, plus the Modelfile's Go TEMPLATE (the run's template
    family's Ollama form) rendered as Ollama would, after the BOS token Ollama
    adds, equals the training template's rendering for single- and multi-turn
    conversations with and without a system prompt (and for the held-out
    conversations), and the Modelfile parses back (Ollama's rules) to that same
    TEMPLATE.

Outputs are written to ``<out>.partial`` and renamed to ``<out>`` only when
every check passed; a failed export exits non-zero, says which check failed,
and leaves the partial folder for inspection.  Each output folder gets
``export_report.json`` with every number measured, and a model card
(``README.md``, :func:`train.card.write_export_card`) written from it and the run's files.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .card import write_export_card
from .template import serving_template

FORMATS = ("merged", "gguf", "ollama")
DTYPES = ("f16", "q8_0", "q4_k_m", "q5_k_m")

# Teacher-forced logit tolerance (max |Δ| over every position and vocab entry)
# and the near-tie margin under which a greedy divergence is accepted.
# Measured on SmolLM2-135M + a LoRA: f16 max |Δ| ≈ 0.05 and top-1 agreement 1.0;
# q8_0 max |Δ| ≈ 1.4 (over 49k logits x every position) and top-1 ≈ 0.97 (docs/export.md).
# The 4/5-bit K-quant mixes change the weights too much for a bound against the merged model to separate
# quantisation error from a broken conversion, so they are checked against the *dequantised* GGUF weights
# loaded into the merged model (gguf_writer.dequantized_model): the same numbers llama.cpp computes with, up to
# llama.cpp quantising activations in its K-quant matmuls. Agreement with the merged model is reported.
KQUANTS = ("q5_k_m", "q4_k_m")
LOGIT_ATOL = {"f16": 0.25, "q8_0": 3.0, "q5_k_m": 0.25, "q4_k_m": 0.25}
TOP1_MIN = {"f16": 0.98, "q8_0": 0.9, "q5_k_m": 0.98, "q4_k_m": 0.98}
TIE_MARGIN = {"f16": 0.1, "q8_0": 0.5, "q5_k_m": 1.0, "q4_k_m": 1.0}  # K-quants: llama.cpp also quantises activations
MERGE_ATOL = 1e-3

BUILTIN_PROMPTS: list[list[dict]] = [
    [{"role": "user", "content": "I still have not received my new card, what should I do?"}],
    [{"role": "system", "content": "You are a banking support assistant."},
     {"role": "user", "content": "How do I top up my account with a bank transfer?"}],
    [{"role": "user", "content": "Can I change my PIN?"}, {"role": "assistant", "content": "Yes, at any ATM."},
     {"role": "user", "content": "Is there a fee for that?"}],
    [{"role": "user", "content": "My payment of 25.50 EUR was declined twice."}],
]

TOKENIZER_PROBES = [
    "Hello world", "  leading and trailing spaces  ", "numbers 1234567 and 3.14159", "tabs\tand\nnewlines\n\n",
    "Ünïcödé — ça va? 日本語 💳", "<|im_start|>user\nhi<|im_end|>\n", "don't won't I'm you're",
    "x  9999 y", " 007", "2024-11-25T04:15 +44 20 7946 0958",
]


class ExportError(RuntimeError):
    """Bad input or a failed parity check; the message says which."""


@dataclass
class ExportConfig:
    """What to export and how strictly to check it.

    Fields:
        run: run folder written by ``python -m train``.
        format: ``merged``, ``gguf`` or ``ollama``.
        dtype: GGUF weight type, ``f16`` or ``q8_0`` (ignored for ``merged``).
        out: output folder; default ``<run>/export/<format>[-<dtype>]``.
        base: base model override (folder, ``.gguf`` or ``embedded:…``);
            default: what the run's manifest / adapter config names.
        prompts: number of held-out prompts for the generation parity check.
        max_new_tokens: greedy tokens generated per prompt in that check.
        name: model name written into the GGUF metadata.
        progress: show progress bars.
    """

    run: Path
    format: str = "ollama"
    dtype: str = "f16"
    out: Path | None = None
    base: str | None = None
    prompts: int = 4
    max_new_tokens: int = 24
    name: str | None = None
    progress: bool = True


@dataclass
class RunInfo:
    """Where the parts of a run folder are."""

    run_dir: Path
    adapter_dir: Path
    tokenizer_dir: Path
    base_model: str
    base_field: str
    manifest: dict = field(default_factory=dict)


# ------------------------------------------------------------------ run dir

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _dig(d: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


BASE_FIELDS = ("config.base_model", "config.model", "config.model_name_or_path", "base_model", "model",
               "config.train.base_model", "config.model.base_model")


def locate_run(run_dir: str | Path, base: str | None = None) -> RunInfo:
    """Find adapter, tokenizer, manifest and base model of a run folder."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ExportError(f"run folder {run} does not exist")
    cands = [run / "adapter", run, run / "final", run / "final_adapter"]
    adapter = next((c for c in cands if (c / "adapter_config.json").exists()), None)
    if adapter is None:
        raise ExportError(
            f"{run}: no adapter_config.json in {', '.join(str(c) for c in cands)} — is this a `python -m train` run folder?"
        )
    if not any(adapter.glob("adapter_model.*")):
        raise ExportError(f"{adapter}: adapter_config.json present but no adapter_model.safetensors")
    tcands = [run / "tokenizer", adapter, run]
    tokdir = next((c for c in tcands if (c / "tokenizer_config.json").exists()), None)
    if tokdir is None:
        raise ExportError(f"{run}: no tokenizer_config.json in {', '.join(str(c) for c in tcands)}")
    manifest = _read_json(run / "manifest.json") if (run / "manifest.json").exists() else {}
    field_used = "--base"
    if base is None:
        for f in BASE_FIELDS:
            v = _dig(manifest, f)
            if isinstance(v, str) and v:
                base, field_used = v, f"manifest.json:{f}"
                break
    if base is None:
        v = _read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
        if v:
            base, field_used = v, f"{adapter / 'adapter_config.json'}:base_model_name_or_path"
    if base is None:
        raise ExportError(f"{run}: no base model named in manifest.json ({', '.join(BASE_FIELDS)}) "
                          "nor in adapter_config.json; pass --base")
    return RunInfo(run, adapter, tokdir, base, field_used, manifest)


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except (OSError, ValueError):
        return False


def _strings(d: Any):
    """Every string value in a nested JSON structure."""
    if isinstance(d, str):
        yield d
    elif isinstance(d, dict):
        for v in d.values():
            yield from _strings(v)
    elif isinstance(d, list):
        for v in d:
            yield from _strings(v)


def _sha_dir(d: Path, pattern: str = "adapter_model.*") -> str:
    h = hashlib.sha256()
    for p in sorted(d.glob(pattern)):
        h.update(p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------- templates

def renderer(tok, template: str | None = None):
    """The prompt training builds for a conversation: the conversation as the template accepts it (a system
    message merged into the first user turn for templates that refuse the system role, as training does),
    rendered with the generation prompt."""
    try:
        from train.template import conform_messages
    except ImportError:  # an older train.template
        conform_messages = None

    def render(messages: list[dict]) -> str:
        kw = {"chat_template": template} if template is not None else {}
        if conform_messages is not None:
            messages = conform_messages(tok, messages, template or tok.chat_template)
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kw)
    return render


# Prepended to a chat template that refuses the system role: merges a leading system message into the first
# user turn exactly as training does (train.template.conform_messages), so llama.cpp's and transformers' Jinja
# serve the training prompt (llama.cpp's own fallback joins them with one newline, training with two).
SYSTEM_INTO_USER = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% if messages|length > 1 and messages[1]['role'] == 'user' %}"
    "{% set messages = [{'role': 'user', 'content': messages[0]['content'] + '\\n\\n' + messages[1]['content']}]"
    " + messages[2:] %}"
    "{% else %}{% set messages = [{'role': 'user', 'content': messages[0]['content']}] + messages[1:] %}{% endif %}"
    "{% endif %}")


def served_template(tok) -> str:
    """The chat template written into exports: the training template without generation markers, and with
    training's system-into-user merge when the template itself refuses a system message."""
    template = serving_template(tok.chat_template)
    try:
        tok.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                chat_template=template, add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 — the template's raise_exception('System role not supported')
        template = SYSTEM_INTO_USER + template
    return template


def bos_text(tok, render) -> str | None:
    """The BOS token's text when the training template renders it at the start of every prompt (``{{ bos_token }}``):
    then the GGUF says "add BOS" and the serving templates leave the text out; ``None``: no BOS when serving."""
    t = tok.bos_token
    ok = bool(t) and "bos_token" in (tok.chat_template or "") and render(BUILTIN_PROMPTS[0]).startswith(t)
    return t if ok else None


def _prompt_of(messages: list[dict]) -> list[dict]:
    """Conversation up to and including the last user turn."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return [{"role": m["role"], "content": m["content"]} for m in messages[: last_user + 1]]


def heldout_prompts(info: RunInfo, n: int) -> tuple[list[list[dict]], str]:
    """Up to ``n`` held-out prompts from the run's snapshot, else built-in ones."""
    from curate import snapshot as snap

    cands: list[Path] = []
    for key in ("snapshot.path", "snapshot.dir", "snapshot_dir", "snapshot_path", "config.snapshot_dir",
                "config.snapshot_path"):
        v = _dig(info.manifest, key)
        if isinstance(v, str):
            cands.append(Path(v))
    strings = list(_strings(info.manifest))
    # any path-like string in the manifest that is a snapshot folder
    cands += [Path(v) for v in strings if "/" in v and len(v) < 4096]
    # a workspace folder + a snapshot name anywhere in the manifest
    workspaces = [Path(v) for v in strings if "/" in v and len(v) < 4096 and _is_dir(Path(v) / "snapshots")]
    for ws in workspaces:
        cands += [ws / "snapshots" / v for v in strings if v and "/" not in v and len(v) < 200]
    for d in cands:
        if _is_dir(d) and (d / "heldout.parquet").exists():
            rows = sorted(snap.load(d, split="heldout"), key=lambda r: r["id"])
            prompts = [p for p in (_prompt_of(r["messages"]) for r in rows) if p][:n]
            if prompts:
                return prompts, f"snapshot {d} (held-out split, first {len(prompts)} by id)"
    return BUILTIN_PROMPTS[:n], "built-in prompts (no snapshot held-out split found from manifest.json)"


# ------------------------------------------------------------------- merge

def base_model_path(info: RunInfo) -> Path:
    """The local folder of the run's base model: the manifest's resolved ``model.path``, then
    ``config.base_model_path``, else the base model name resolved again (folder, .gguf, embedded:, hub id)."""
    from curate.models import run_base_model

    return run_base_model(info.manifest, info.base_model, use_recorded=info.base_field.startswith("manifest"))


def merge_adapter(info: RunInfo, out_dir: Path, progress: bool = True) -> dict:
    """Fold the LoRA adapter into the base weights; save an HF folder; check it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = base_model_path(info)
    tok = AutoTokenizer.from_pretrained(info.tokenizer_dir)
    if not tok.chat_template:
        raise ExportError(f"{info.tokenizer_dir}: tokenizer has no chat template (chat_template.jinja or "
                          "tokenizer_config.json:chat_template)")
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if len(tok) > base.get_input_embeddings().weight.shape[0]:  # tokens added at training time
        base.resize_token_embeddings(len(tok))
    peft_model = PeftModel.from_pretrained(base, info.adapter_dir)
    peft_model.eval()
    probe = tok(renderer(tok)(BUILTIN_PROMPTS[2]), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        unmerged = peft_model(probe).logits
        merged = peft_model.merge_and_unload()
        merged.eval()
        after = merged(probe).logits
        base_only = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)(probe).logits
    diff = float((unmerged - after).abs().max())
    adapter_effect = float((unmerged - base_only).abs().max())
    if diff > MERGE_ATOL:
        raise ExportError(f"merge check failed: merged vs adapter logits differ by {diff:.3g} > {MERGE_ATOL}")
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    train_render = renderer(tok)
    tok.chat_template = served_template(tok)
    tok.save_pretrained(out_dir)
    # what was written is what was checked: reload the folder, compare logits and template renderings
    saved_tok = AutoTokenizer.from_pretrained(out_dir)
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()(probe).logits
    reload_diff = float((reloaded - after).abs().max())
    if reload_diff > 1e-5:
        raise ExportError(f"merged folder {out_dir} reloads with logits {reload_diff:.3g} away from the merged model")
    from train.modelfile import PARITY_CONVERSATIONS

    bad = [i for i, c in enumerate(PARITY_CONVERSATIONS) if renderer(saved_tok)(c) != train_render(c)]
    if bad:
        raise ExportError(f"merged folder's chat template renders conversations {bad} differently from training")
    return {"merge_max_abs_logit_diff": diff, "adapter_effect_max_abs_logit": adapter_effect,
            "reload_max_abs_logit_diff": reload_diff, "base_model": str(base_path), "base_model_from": info.base_field}


# --------------------------------------------------------------- GGUF check

def _greedy(model, ids, n: int, eos: int | None, pad: int | None) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=eos, pad_token_id=pad if pad is not None else (eos or [None])[0])
    return out[0, ids.shape[1]:].tolist()


def _eos_ids(tok, model) -> list[int]:
    """Every token that ends generation for the model (config eos list, e.g. Llama 3's <|eot_id|> and
    <|end_of_text|>, plus the tokenizer's eos)."""
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted(set(ids) | ({tok.eos_token_id} if tok.eos_token_id is not None else set()))


def _strip_eos(toks: list[int], eos: list[int]) -> list[int]:
    return toks[:-1] if toks and toks[-1] in eos else toks


def gguf_parity(merged_dir: Path, gguf_path: Path, train_tok, prompts: list[list[dict]], dtype: str,
                max_new_tokens: int, render=None) -> dict:
    """All GGUF-vs-merged checks; returns the numbers, raises ExportError on a failure.

    llama.cpp (the ``xllamacpp`` wheel) is the serving engine and its checks decide; transformers' GGUF loader
    is a second opinion whose failures are reported (fatal only when llama.cpp is not installed, or for the
    chat template it reads back from the file).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from train.modelfile import PARITY_CONVERSATIONS

    render = render or renderer(train_tok)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    # the GGUF's weights read back (dequantised, transformed back) into the merged model: exact but for f16
    # rounding when the conversion is right, whatever transformers' own GGUF loader makes of the architecture
    from train.gguf_writer import dequantized_model

    readback = dequantized_model(merged_dir, gguf_path)
    ref = readback if dtype in KQUANTS else merged
    eos, pad = _eos_ids(train_tok, ref), train_tok.pad_token_id
    convs = PARITY_CONVERSATIONS + prompts
    probes = TOKENIZER_PROBES + [render(c) for c in convs]
    probe_ids = train_tok(render(BUILTIN_PROMPTS[2]), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        roundtrip = float((readback(probe_ids).logits - merged(probe_ids).logits).abs().max())
    ref_runs, merged_runs = [], []
    for conv in prompts:
        ids = train_tok(render(conv), return_tensors="pt", add_special_tokens=False).input_ids
        ref_runs.append((ids, _greedy(ref, ids, max_new_tokens, eos, pad)))
        merged_runs.append(ref_runs[-1][1] if ref is merged else _greedy(merged, ids, max_new_tokens, eos, pad))

    report = {"dtype": dtype, "prompts": len(prompts), "logit_atol": LOGIT_ATOL[dtype],
              "template_conversations_checked": len(convs),
              "reference": "dequantised GGUF weights in the merged model" if ref is not merged else "merged model",
              "weights_readback_max_abs_logit_diff": roundtrip}
    failures = [f"GGUF weights read back give logits {roundtrip:.3f} away from the merged model (> {LOGIT_ATOL['f16']}): "
                "the conversion changed the weights"] if dtype == "f16" and roundtrip > LOGIT_ATOL["f16"] else []
    hf_failures: list[str] = []
    report.update(_transformers_parity(gguf_path, ref, train_tok, convs, probes, ref_runs, render, dtype, hf_failures))
    lc_failures: list[str] = []
    report["llama_cpp"] = llamacpp_parity(gguf_path, ref, train_tok, convs, probes, ref_runs, render, dtype,
                                          max_new_tokens, lc_failures)
    report["transformers_failures"] = hf_failures
    if report["llama_cpp"].get("checked"):
        # quality: llama.cpp's greedy tokens vs the unquantised merged model
        report["llama_cpp"]["identical_to_merged"] = sum(
            _strip_eos(r["tokens"], eos) == _strip_eos(m, eos) for r, m in zip(report["llama_cpp"]["per_prompt"], merged_runs))
        # the GGUF's own chat template must read back identically whatever engine reads it
        failures += lc_failures + [f for f in hf_failures if "chat_template" in f]
    else:
        failures += hf_failures + ([] if report.get("transformers_checked") else [
            f"no engine could check {gguf_path.name}: transformers cannot load it ({report.get('transformers_note')}) "
            "and llama.cpp is not installed (pip install xllamacpp)"])
    if failures:
        raise ExportError("GGUF parity failed:\n  - " + "\n  - ".join(failures)) from None
    return report


def _transformers_parity(gguf_path: Path, ref, train_tok, convs, probes, ref_runs, render, dtype: str,
                         failures: list[str]) -> dict:
    """The GGUF read back with transformers' GGUF loader: chat template, tokenizer, greedy and teacher-forced
    logits against the merged model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        got = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
        gtok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as e:  # noqa: BLE001 — an architecture transformers' GGUF loader does not read
        return {"transformers_checked": False, "transformers_note": f"{type(e).__name__}: {str(e)[:200]}"}
    tmpl_bad = [i for i, c in enumerate(convs) if renderer(gtok)(c) != render(c)]
    if tmpl_bad:
        failures.append(f"GGUF chat_template renders differently from training for conversations {tmpl_bad}")
    tok_bad = [p[:40] for p in probes
               if gtok(p, add_special_tokens=False).input_ids != train_tok(p, add_special_tokens=False).input_ids]
    if tok_bad:
        failures.append(f"transformers' reading of the GGUF tokenizer gives different ids for {tok_bad}")
    for k in ("bos_token_id", "eos_token_id"):
        if getattr(gtok, k) != getattr(train_tok, k):
            failures.append(f"GGUF {k} is {getattr(gtok, k)}, training tokenizer's is {getattr(train_tok, k)}")
    eos, pad = _eos_ids(train_tok, ref), train_tok.pad_token_id
    per_prompt, max_diff, agree, total = [], 0.0, 0, 0
    for i, (ids, a) in enumerate(ref_runs):
        b = _greedy(got, ids, len(a) or 1, eos, pad)
        full = torch.cat([ids, torch.tensor([a], dtype=ids.dtype)], dim=1) if a else ids
        with torch.no_grad():
            la, lb = ref(full).logits[0], got(full).logits[0]
        n = min(la.shape[-1], lb.shape[-1])
        d = float((la[:, :n] - lb[:, :n]).abs().max())
        max_diff = max(max_diff, d)
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        total += la.shape[0]
        a_cmp, b_cmp = _strip_eos(a, eos), _strip_eos(b, eos)
        rec = {"prompt": i, "merged": train_tok.decode(a), "gguf": train_tok.decode(b), "identical": a_cmp == b_cmp,
               "max_abs_logit_diff": d}
        if a_cmp != b_cmp:
            _divergence(ref, ids, a_cmp, b_cmp, dtype, f"prompt {i} (transformers GGUF loader)", rec, failures)
        per_prompt.append(rec)
    if max_diff > LOGIT_ATOL[dtype]:
        failures.append(f"teacher-forced logits differ by {max_diff:.3f} > {LOGIT_ATOL[dtype]} ({dtype})")
    if agree / max(total, 1) < TOP1_MIN[dtype]:
        failures.append(f"teacher-forced top-1 agreement {agree / max(total, 1):.3f} < {TOP1_MIN[dtype]} ({dtype})")
    return {"transformers_checked": True, "identical_greedy_outputs": sum(r["identical"] for r in per_prompt),
            "max_abs_logit_diff": max_diff, "top1_agreement": agree / max(total, 1),
            "tokenizer_probes_checked": len(probes), "per_prompt": per_prompt}


def _divergence(ref, ids, a: list[int], b: list[int], dtype: str, what: str, rec: dict, failures: list[str]) -> None:
    """Accept a greedy divergence only at a near-tie of the merged model's logits."""
    import torch

    k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
    if k == min(len(a), len(b)):
        failures.append(f"{what}: one output is a prefix of the other ({len(a)} vs {len(b)} tokens)")
        return
    full = torch.cat([ids, torch.tensor([a[:k]], dtype=ids.dtype)], dim=1) if k else ids
    with torch.no_grad():
        row = ref(full).logits[0, -1]
    margin = float(row[a[k]] - row[b[k]])
    rec.update(diverges_at=k, merged_margin=margin)
    if margin > TIE_MARGIN[dtype]:
        failures.append(f"{what}: greedy output diverges at token {k} where the merged model prefers its token "
                        f"by {margin:.3f} > near-tie margin {TIE_MARGIN[dtype]}")


def llamacpp_parity(gguf_path: Path, ref, train_tok, convs: list[list[dict]], probes: list[str],
                    ref_runs: list[tuple], render, dtype: str, max_new_tokens: int, failures: list[str]) -> dict:
    """The same checks against real llama.cpp (the ``xllamacpp`` wheel), when it is installed.

    Loads the GGUF in llama.cpp's server (in-process, loopback HTTP) and
    compares ``/apply-template`` (llama.cpp's Jinja engine on our
    ``tokenizer.chat_template``; it drops the leading BOS text when the file
    says llama.cpp adds a BOS token, so the rendered text plus that token must
    equal training's) with the training rendering, ``/tokenize`` with the
    training tokenizer, and greedy ``/completion`` tokens with the merged
    model's greedy tokens.
    """
    try:
        import xllamacpp
    except ImportError:
        return {"checked": False, "reason": "xllamacpp not installed (pip install xllamacpp)"}
    import gguf

    eos = _eos_ids(train_tok, ref)
    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.add_bos_token")
    bos = train_tok.bos_token if field is not None and field.contents() and train_tok.bos_token else ""
    rep: dict[str, Any] = {"checked": True, "version": getattr(xllamacpp, "__version__", "?"), "adds_bos": bool(bos)}
    with llamacpp_server(gguf_path) as post:
        # llama.cpp continues a trailing assistant message (prefill) instead of opening a new turn,
        # so only conversations that end with a user turn (the serving case) are compared.
        convs = [c for c in convs if c[-1]["role"] != "assistant"]
        bad = []
        for i, c in enumerate(convs):
            want, got = render(c), post("/apply-template", {"messages": c})["prompt"]
            if (bos + got) != want and got != want:
                bad.append(i)
        if bad:
            failures.append(f"llama.cpp renders the GGUF chat template differently from training for conversations {bad}")
        bad_tok = [p[:40] for p in probes
                   if post("/tokenize", {"content": p, "add_special": False, "parse_special": True})["tokens"]
                   != train_tok(p, add_special_tokens=False).input_ids]
        if bad_tok:
            failures.append(f"llama.cpp tokenizes differently from training: {bad_tok}")
        identical, per = 0, []
        for i, (ids, a) in enumerate(ref_runs):
            r = post("/completion", {"prompt": ids[0].tolist(), "n_predict": max_new_tokens, "temperature": 0,
                                     "top_k": 1, "return_tokens": True, "cache_prompt": False})
            b = list(r.get("tokens") or [])
            a_cmp, b_cmp = _strip_eos(a, eos), _strip_eos(b, eos)
            rec = {"prompt": i, "llama_cpp": train_tok.decode(b_cmp), "tokens": b, "identical": a_cmp == b_cmp}
            if a_cmp == b_cmp:
                identical += 1
            else:
                _divergence(ref, ids, a_cmp, b_cmp, dtype, f"prompt {i} (llama.cpp)", rec, failures)
            per.append(rec)
        rep.update(template_conversations_checked=len(convs), template_mismatches=bad,
                   tokenizer_probes_checked=len(probes), tokenizer_mismatches=bad_tok,
                   identical_greedy_outputs=identical, prompts=len(ref_runs), per_prompt=per)
    return rep


@contextlib.contextmanager
def llamacpp_server(gguf_path: Path, n_ctx: int = 2048):
    """llama.cpp's server on ``gguf_path`` (in-process, loopback HTTP); yields ``post(path, body) -> dict``."""
    import httpx
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path)
    params.n_ctx = n_ctx
    params.cpuparams.n_threads = max(1, min(4, os.cpu_count() or 1))
    params.cpuparams_batch.n_threads = params.cpuparams.n_threads
    params.use_jinja = True
    params.warmup = False
    server = xllamacpp.Server(params)
    base = str(server.listening_address)
    base = base if base.startswith("http") else "http://" + base
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            def post(path: str, body: dict) -> dict:
                r = http.post(path, json=body)
                r.raise_for_status()
                return r.json()
            yield post
    finally:
        del server


# ------------------------------------------------------------------- export

def default_out(cfg: ExportConfig) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    sub = cfg.format if cfg.format == "merged" else f"{cfg.format}-{cfg.dtype}"
    return Path(cfg.run) / "export" / sub


def _check_out(final: Path) -> None:
    """Refuse to replace a folder that is not a previous export (``--out`` pointing at real data)."""
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / "export_report.json").exists())):
        raise ExportError(f"output folder {final} exists and is not a previous export (no export_report.json); "
                          "pick another --out or remove it")


def _publish(partial: Path, final: Path) -> None:
    _check_out(final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def _ensure_merged(cfg: ExportConfig, info: RunInfo, log) -> tuple[Path, dict]:
    """The merged folder: reused from ``<run>/export/merged`` when built from the same adapter."""
    target = Path(cfg.out) if (cfg.format == "merged" and cfg.out) else Path(cfg.run) / "export" / "merged"
    sha = _sha_dir(info.adapter_dir)
    rep_path = target / "export_report.json"
    if cfg.format != "merged" and rep_path.exists():
        rep = _read_json(rep_path)
        if rep.get("adapter_sha256") == sha and rep.get("ok"):
            log(f"reusing merged model {target} (same adapter sha256 {sha[:12]}…)")
            rep["out"] = str(target)
            return target, rep
    _check_out(target)
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    log(f"merging adapter {info.adapter_dir} into base {info.base_model} …")
    rep = merge_adapter(info, partial, progress=cfg.progress)
    rep.update(format="merged", ok=True, adapter_sha256=sha, run=str(info.run_dir))
    (partial / "export_report.json").write_text(json.dumps(rep, indent=2), encoding="utf-8")
    write_export_card(partial, info.run_dir)
    _publish(partial, target)
    rep["out"] = str(target)
    log(f"merged: {target} (merged-vs-adapter max |Δlogit| {rep['merge_max_abs_logit_diff']:.2e})")
    return target, rep


def export(cfg: ExportConfig, log=print) -> dict:
    """Run one export with its checks; returns the report (also written to the output folder)."""
    from transformers import AutoTokenizer

    from train import modelfile as mf
    from train.gguf_writer import QUANTIZER, GGUFExportError, write_gguf

    if cfg.format not in FORMATS:
        raise ExportError(f"--format {cfg.format!r}: choose one of {', '.join(FORMATS)}")
    if cfg.dtype not in DTYPES:
        raise ExportError(f"--dtype {cfg.dtype!r}: choose one of {', '.join(DTYPES)}")
    t0 = time.time()
    info = locate_run(cfg.run, cfg.base)
    merged_dir, merged_rep = _ensure_merged(cfg, info, log)
    if cfg.format == "merged":
        return merged_rep

    train_tok = AutoTokenizer.from_pretrained(info.tokenizer_dir)
    render = renderer(train_tok)
    out = default_out(cfg)
    _check_out(out)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    report: dict[str, Any] = {"format": cfg.format, "run": str(info.run_dir), "ok": False,
                              "adapter_sha256": merged_rep.get("adapter_sha256"),
                              "merge_max_abs_logit_diff": merged_rep.get("merge_max_abs_logit_diff"),
                              "quantizer": QUANTIZER[cfg.dtype]}
    try:
        spec = None
        if cfg.format == "ollama":
            # fail fast on a template we cannot serve, before the slow part
            spec = mf.derive_spec(render, bos_text(train_tok, render))
        gguf_name = "model.gguf" if cfg.format == "ollama" else f"model-{cfg.dtype}.gguf"
        log(f"writing {gguf_name} ({cfg.dtype}) …")
        add_bos = bos_text(train_tok, render) is not None
        write_gguf(merged_dir, partial / gguf_name, dtype=cfg.dtype, chat_template=served_template(train_tok),
                   name=cfg.name or f"{info.run_dir.name}", progress=cfg.progress, add_bos=add_bos)
        report["add_bos"] = add_bos
        prompts, source = heldout_prompts(info, cfg.prompts)
        report["prompts_source"] = source
        log(f"checking GGUF parity on {len(prompts)} prompts from {source} …")
        report["gguf"] = gguf_parity(merged_dir, partial / gguf_name, train_tok, prompts, cfg.dtype,
                                     cfg.max_new_tokens, render=render)
        if cfg.format == "ollama":
            report["modelfile"] = _write_modelfile(spec, info, partial, gguf_name, render, prompts)
        report["ok"] = True
        report["seconds"] = round(time.time() - t0, 1)
    except Exception as e:
        report["error"] = str(e)
        (partial / "export_report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        if isinstance(e, (ExportError, GGUFExportError, mf.TemplateError)):
            raise ExportError(f"{e}\n(partial output left in {partial})") from None
        raise
    (partial / "export_report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    write_export_card(partial, info.run_dir)  # README.md: HF metadata, the export's facts, the run's card
    _publish(partial, out)
    report["out"] = str(out)
    return report


def _write_modelfile(spec, info: RunInfo, partial: Path, gguf_name: str, render, prompts: list[list[dict]]) -> dict:
    """Write the Modelfile after checking that Ollama would read back our TEMPLATE and render training's prompts."""
    from train import modelfile as mf

    template = mf.go_template(spec)
    params = {"num_ctx": _num_ctx(info, partial / gguf_name)}
    text = mf.modelfile_text(spec, template, gguf_name=gguf_name, params=params,
                             header=f"Exported from {info.run_dir} by `python -m train export`.\n"
                                    f"TEMPLATE reproduces the training chat template (Ollama's {spec.family.name} "
                                    "form); checked at export.")
    if dict(mf.parse_modelfile(text)).get("template") != template:
        raise ExportError("Modelfile does not parse back to the TEMPLATE we rendered (Ollama's quoting rules)")
    results = mf.template_parity(template, render, mf.PARITY_CONVERSATIONS + prompts, spec)
    bad = [r for r in results if not r.ok]
    if bad:
        raise ExportError("Modelfile TEMPLATE parity failed:\n  - " + "\n  - ".join(r.diff() for r in bad))
    (partial / "Modelfile").write_text(text, encoding="utf-8")
    return {"conversations_checked": len(results), "family": spec.family.name, "default_system": spec.default_system,
            "bos_added_by_ollama": spec.bos, "content_stripped_by_template": spec.trims, "stop": spec.stop,
            "params": params}


def _num_ctx(info: RunInfo, gguf_path: Path) -> int:
    from train.gguf_writer import read_metadata

    meta = read_metadata(gguf_path)
    ctx = int(next((v for k, v in meta.items() if k.endswith(".context_length")), 2048))
    for key in ("config.max_seq_length", "config.max_length", "config.max_seq_len"):
        v = _dig(info.manifest, key)
        if isinstance(v, int) and v > 0:
            return min(ctx, max(v, 2048))
    return min(ctx, 4096)


# --------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train export",
        description=(
            "Export a trained run for serving, and prove that serving matches training.\n\n"
            "  merged  HF folder with the LoRA adapter folded into the base weights\n"
            "  gguf    one GGUF file (f16, q8_0, q5_k_m or q4_k_m) for llama.cpp\n"
            "  ollama  model.gguf + Modelfile whose TEMPLATE reproduces the training chat template\n\n"
            "Architectures: llama (Llama 3.x, SmolLM2), mistral, qwen2, qwen3, gemma2, gemma3_text, phi3.\n\n"
            "Every export runs parity checks (merged vs adapter logits; GGUF weights read back vs merged;\n"
            "real llama.cpp (the xllamacpp wheel) on the GGUF: chat template, tokenizer ids and greedy\n"
            "outputs on held-out prompts vs training; transformers' GGUF loader as a second opinion;\n"
            "Modelfile template vs training template) and fails with a non-zero exit if one does not\n"
            "hold. Details: docs/export.md."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, type=Path, help="run folder written by `python -m train`")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write (see above)")
    p.add_argument("--dtype", default="f16", choices=DTYPES, help="GGUF weight type (default f16; q8_0 ~half the size; q5_k_m / q4_k_m: llama.cpp's "
                   "K-quant mixes, need the xllamacpp wheel)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/export/FORMAT[-DTYPE])")
    p.add_argument("--base", default=None, help="base model override (folder, .gguf, embedded:… or hub id); "
                   "default: the run's resolved base folder")
    p.add_argument("--prompts", type=int, default=4, help="held-out prompts in the greedy parity check (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="greedy tokens per prompt in that check (default 24)")
    p.add_argument("--name", default=None, help="model name stored in the GGUF (default: the run folder name)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the export report (export_report.json) as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from curate.entry import flag_spellings

    with flag_spellings():
        args = build_parser().parse_args(argv)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    cfg = ExportConfig(run=args.run, format=args.format, dtype=args.dtype, out=args.out, base=args.base,
                       prompts=args.prompts, max_new_tokens=args.max_new_tokens, name=args.name,
                       progress=not args.quiet)
    try:
        rep = export(cfg)
    except ExportError as e:
        print(f"export FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(rep, indent=1, default=str) if args.json else summary(rep))
    return 0


def summary(rep: dict) -> str:
    lines = [f"export {rep.get('format')} OK → {rep.get('out', '')}".rstrip()]
    if "merge_max_abs_logit_diff" in rep:
        lines.append(f"  merge: merged vs adapter max |Δlogit| = {rep['merge_max_abs_logit_diff']:.2e}")
    g = rep.get("gguf")
    if g:
        if g.get("transformers_checked"):
            lines.append(f"  gguf {g['dtype']} ({rep.get('quantizer')}), transformers' GGUF loader: "
                         f"{g['identical_greedy_outputs']}/{g['prompts']} identical greedy outputs "
                         f"({rep.get('prompts_source')}); max |Δlogit| {g['max_abs_logit_diff']:.3f} "
                         f"(tolerance {g['logit_atol']}); top-1 agreement {g['top1_agreement']:.3f}; "
                         f"{len(g['transformers_failures'])} failed checks (reported; llama.cpp decides)")
        else:
            lines.append(f"  gguf {g['dtype']} ({rep.get('quantizer')}): transformers cannot read it back "
                         f"({g.get('transformers_note')})")
        lines.append(f"  GGUF weights read back into the merged model: max |Δlogit| {g['weights_readback_max_abs_logit_diff']:.3g}")
        lc = g.get("llama_cpp") or {}
        if lc.get("checked"):
            lines.append(f"  llama.cpp ({lc['version']}): {lc['identical_greedy_outputs']}/{lc['prompts']} identical greedy "
                         f"outputs vs the {g['reference']} ({lc['identical_to_merged']} vs the merged model); chat "
                         f"template {lc['template_conversations_checked']} conversations and tokenizer "
                         f"{lc['tokenizer_probes_checked']} probes identical")
        else:
            lines.append(f"  llama.cpp: not checked ({lc.get('reason')})")
    m = rep.get("modelfile")
    if m:
        lines.append(f"  Modelfile ({m['family']}): TEMPLATE renders identically to training on "
                     f"{m['conversations_checked']} conversations; default system prompt {m['default_system']!r}"
                     + ("; the training template strips message content, a Go template cannot: send stripped content"
                        if m["content_stripped_by_template"] else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
