"""Tiny, random-init chat models of several real families, for tests that must not download weights.

Each family is built from its own transformers config class (so ``AutoModelForCausalLM`` picks the family's
real architecture), with the family's distinguishing features switched on (Qwen2 q/k/v biases, Qwen3 q/k
norms, Gemma 2 logit soft-capping and sliding-window layers, Gemma 3 sliding/full layers and dual RoPE,
Mistral sliding window, Phi-3 fused qkv/gate_up, Llama 3 RoPE scaling), so an engine that ignores one of
them computes a different loss. The tokenizer is the embedded SmolLM2 tokenizer plus the family's special
tokens, with the family's bos/eos/pad, its BOS-on-encode behaviour and its REAL chat template
(``tests/fixtures/chat_templates/<family>.jinja``, sources in the README there).

:func:`populate_hf_cache` lays a built folder out as a Hugging Face hub cache entry, so code that takes a
repo id (``test-org/tiny-llama3``) resolves it offline exactly as for a user who downloaded it earlier.

Import from tests as ``from families import FAMILIES, build_tiny_model, populate_hf_cache, sample_conversations``.
"""
from __future__ import annotations

import atexit
import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"

# Shared sizes (per-family overrides below): hidden 64, 4 heads of 16, 2 kv heads, intermediate 128.
# initializer_range 0.2 (not the usual 0.02): with 0.02 the logits of a 64-wide model stay far below Gemma 2's
# soft-caps and Llama 3's RoPE scaling moves the loss by ~1e-6, so an engine ignoring them would go unnoticed;
# at 0.2 each feature moves the loss on a short chat by 3e-3 to 1e-1 (tests/test_families.py checks > 1e-3).
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024, initializer_range=0.2)


@dataclass(frozen=True)
class FamilySpec:
    name: str
    config_class: str                    # transformers config class name
    model_type: str                      # config.model_type (what AutoModelForCausalLM dispatches on)
    hub_id: str                          # repo id tests use for the hub-cache layout
    source_model: str                    # the real model whose chat template the fixture is
    template_file: str                   # file name under tests/fixtures/chat_templates/
    special_tokens: tuple[str, ...]      # added to the SmolLM2 tokenizer as special tokens
    bos_token: str | None
    eos_token: str
    pad_token: str | None                # None where the real tokenizer has no pad token
    add_bos_token: bool                  # does the real tokenizer prepend BOS when encoding (add_special_tokens=True)?
    tie_word_embeddings: bool
    config_overrides: dict[str, Any] = field(default_factory=dict)
    extra_eos_tokens: tuple[str, ...] = ()  # the real config.json's eos_token_id is a list: [eos, *these]
    plain_tokens: tuple[str, ...] = ()      # added as ordinary (non-special) added tokens, e.g. Qwen3's <think>
    supports_system: bool = True            # False: the real template raises on a system message
    hallmarks: tuple[str, ...] = ()         # strings the real template must contain

    @property
    def template_path(self) -> Path:
        return TEMPLATES / self.template_file

    @property
    def chat_template(self) -> str:
        return self.template_path.read_text(encoding="utf-8")

    @property
    def architecture(self) -> str:
        """The class ``AutoModelForCausalLM`` builds for this family (e.g. Gemma3ForCausalLM for gemma3_text)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[self.model_type]


FAMILIES: dict[str, FamilySpec] = {
    "llama3": FamilySpec(
        name="llama3", config_class="LlamaConfig", model_type="llama", hub_id="test-org/tiny-llama3",
        source_model="meta-llama/Llama-3.2-1B-Instruct", template_file="llama3.jinja",
        special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"),
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token=None, add_bos_token=True,
        tie_word_embeddings=True, extra_eos_tokens=("<|end_of_text|>", "<|eom_id|>"),
        config_overrides=dict(num_hidden_layers=2, head_dim=16, max_position_embeddings=131072, rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=8192)),
        hallmarks=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "bos_token",
                   "Cutting Knowledge Date: December 2023", "strftime_now")),
    "qwen2": FamilySpec(
        name="qwen2", config_class="Qwen2Config", model_type="qwen2", hub_id="test-org/tiny-qwen2",
        source_model="Qwen/Qwen2.5-1.5B-Instruct", template_file="qwen2.jinja",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", add_bos_token=False,
        tie_word_embeddings=True,
        config_overrides=dict(num_hidden_layers=2, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        hallmarks=("<|im_start|>", "<|im_end|>", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                   "<tool_call>")),
    "qwen3": FamilySpec(
        name="qwen3", config_class="Qwen3Config", model_type="qwen3", hub_id="test-org/tiny-qwen3",
        source_model="Qwen/Qwen3-0.6B", template_file="qwen3.jinja",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        plain_tokens=("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"),
        bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", add_bos_token=False,
        tie_word_embeddings=True,
        config_overrides=dict(num_hidden_layers=2, head_dim=16,
                              rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        hallmarks=("<|im_start|>", "<|im_end|>", "<think>", "enable_thinking", "reasoning_content")),
    "mistral": FamilySpec(
        name="mistral", config_class="MistralConfig", model_type="mistral", hub_id="test-org/tiny-mistral",
        source_model="mistralai/Mistral-7B-Instruct-v0.3", template_file="mistral.jinja",
        special_tokens=("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                        "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"),
        bos_token="<s>", eos_token="</s>", pad_token=None, add_bos_token=True, tie_word_embeddings=False,
        config_overrides=dict(num_hidden_layers=2, head_dim=16, sliding_window=8,
                              rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        hallmarks=("[INST]", "[/INST]", "bos_token", "eos_token", "[AVAILABLE_TOOLS]", "system_message")),
    "gemma2": FamilySpec(
        name="gemma2", config_class="Gemma2Config", model_type="gemma2", hub_id="test-org/tiny-gemma2",
        source_model="google/gemma-2-2b-it", template_file="gemma2.jinja",
        special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", add_bos_token=True, tie_word_embeddings=True,
        extra_eos_tokens=("<end_of_turn>",),
        config_overrides=dict(num_hidden_layers=2, head_dim=16, query_pre_attn_scalar=16,
                              attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"]),
        supports_system=False,
        hallmarks=("<start_of_turn>", "<end_of_turn>", "bos_token", "System role not supported", "model")),
    "gemma3": FamilySpec(
        name="gemma3", config_class="Gemma3TextConfig", model_type="gemma3_text", hub_id="test-org/tiny-gemma3",
        source_model="google/gemma-3-1b-it", template_file="gemma3.jinja",
        special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                        "<start_of_image>"),
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", add_bos_token=True, tie_word_embeddings=True,
        extra_eos_tokens=("<end_of_turn>",),
        config_overrides=dict(num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
        hallmarks=("<start_of_turn>", "<end_of_turn>", "bos_token", "first_user_prefix", "<start_of_image>")),
    "phi3": FamilySpec(
        name="phi3", config_class="Phi3Config", model_type="phi3", hub_id="test-org/tiny-phi3",
        source_model="microsoft/Phi-3.5-mini-instruct", template_file="phi3.jinja",
        special_tokens=("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>",
                        "<|user|>"),
        bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", add_bos_token=False,
        tie_word_embeddings=False,
        config_overrides=dict(num_hidden_layers=2, original_max_position_embeddings=1024,
                              rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        hallmarks=("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "eos_token")),
}


# ------------------------------------------------------------------------------------------ building


_lock = threading.RLock()
_build_root: Path | None = None
_built: dict[tuple[str, int], Path] = {}
_base_tokenizer = None


def _cache_root() -> Path:
    global _build_root
    if _build_root is None:
        _build_root = Path(tempfile.mkdtemp(prefix="tiny-families-"))
        atexit.register(shutil.rmtree, _build_root, ignore_errors=True)
    return _build_root


def _fresh_base_tokenizer():
    """A new copy of the embedded SmolLM2 tokenizer (loaded from disk once per process)."""
    global _base_tokenizer
    from transformers import AutoTokenizer

    if _base_tokenizer is None:
        from curate.models import materialize_chat_model

        _base_tokenizer = AutoTokenizer.from_pretrained(materialize_chat_model())
    return copy.deepcopy(_base_tokenizer)


def build_tokenizer(family: str):
    """The SmolLM2 tokenizer dressed as ``family``'s: its special tokens, bos/eos/pad, BOS-on-encode and template."""
    from tokenizers import AddedToken

    spec = FAMILIES[family]
    tok = _fresh_base_tokenizer()
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in spec.special_tokens], special_tokens=True)
    if spec.plain_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.plain_tokens])
    tok.bos_token = spec.bos_token
    tok.eos_token = spec.eos_token
    tok.pad_token = spec.pad_token
    tok.add_bos_token = spec.add_bos_token
    tok.chat_template = spec.chat_template
    return tok


def _tiny_config(spec: FamilySpec, tok):
    import transformers

    ids = {t: tok.convert_tokens_to_ids(t) for t in (spec.bos_token, spec.eos_token, spec.pad_token,
                                                       *spec.extra_eos_tokens) if t is not None}
    eos = ids[spec.eos_token] if not spec.extra_eos_tokens else \
        [ids[spec.eos_token], *(ids[t] for t in spec.extra_eos_tokens)]
    kw = dict(TINY, vocab_size=len(tok), tie_word_embeddings=spec.tie_word_embeddings,
              bos_token_id=ids.get(spec.bos_token) if spec.bos_token else None,
              eos_token_id=eos, pad_token_id=ids.get(spec.pad_token) if spec.pad_token else None)
    if spec.bos_token is None:  # Qwen: no BOS in the tokenizer, but config.json names <|endoftext|>
        kw["bos_token_id"] = tok.convert_tokens_to_ids("<|endoftext|>")
    kw.update(copy.deepcopy(spec.config_overrides))
    cfg = getattr(transformers, spec.config_class)(**kw)
    cfg.dtype = "float32"
    return cfg


def _build_uncached(family: str, out_dir: Path, seed: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    spec = FAMILIES[family]
    tok = build_tokenizer(family)
    cfg = _tiny_config(spec, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # transformers initialises biases to 0 and norm weights to 1 (Gemma: 0, used as 1 + w): random
            # ones, so an engine that drops Qwen2's q/k/v biases or mishandles a norm computes another loss.
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            # larger attention scores, so Gemma 2's attention-logit soft-cap changes the loss measurably
            if family == "gemma2" and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(2.0)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def build_tiny_model(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random-init ``family`` model (fp32 safetensors) and its tokenizer into ``out_dir``.

    Built once per (family, seed) per process into a private temp folder, then copied: later calls cost a copy.
    """
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    out_dir = Path(out_dir)
    with _lock:
        key = (family, seed)
        if key not in _built:
            _built[key] = _build_uncached(family, _cache_root() / f"{family}-seed{seed}", seed)
        src = _built[key]
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy2(f, out_dir / f.name)
    return out_dir


# ------------------------------------------------------------------------------------------ hub cache

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model", ".msgpack", ".h5")


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def populate_hf_cache(model_dir: Path, repo_id: str, cache_dir: Path, revision: str = "main") -> str:
    """Lay ``model_dir``'s files out as the hub cache entry of model repo ``repo_id`` under ``cache_dir``.

    The layout is the one ``huggingface_hub`` writes when downloading: ``models--org--name/blobs/<etag>``
    (git blob sha1 for regular files, sha256 for LFS ones such as ``*.safetensors``),
    ``snapshots/<commit>/<file>`` as relative symlinks to the blobs (copies where symlinks are unsupported),
    ``refs/<revision>`` holding the commit hash, and ``trees/<commit>.json`` (the cached tree listing newer
    huggingface_hub versions use to check that an offline snapshot is complete). The commit hash is a
    well-formed 40-hex sha1 derived from the files' contents; ``revision`` may itself be a commit hash, which
    is then used as is (and no ref is written). Returns the commit hash.
    """
    model_dir, cache_dir = Path(model_dir), Path(cache_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no files in {model_dir}")
    entries: dict[str, dict[str, Any]] = {}
    blobs: dict[str, tuple[Path, str]] = {}
    for p in files:
        rel = p.relative_to(model_dir).as_posix()
        data = p.read_bytes()
        if rel.endswith(_LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
            entries[rel] = {"size": len(data), "blob_id": _git_blob_sha1(pointer.encode()),
                            "lfs_sha256": sha256, "lfs_size": len(data)}
            etag = sha256
        else:
            etag = _git_blob_sha1(data)
            entries[rel] = {"size": len(data), "blob_id": etag}
        blobs[rel] = (p, etag)

    if _COMMIT.match(revision):
        commit = revision
    else:
        listing = json.dumps(entries, sort_keys=True).encode()
        commit = hashlib.sha1(b"tiny-families fake commit\0" + listing).hexdigest()

    storage = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = storage / "snapshots" / commit
    for rel, (src, etag) in blobs.items():
        blob = storage / "blobs" / etag
        if not blob.exists():
            tmp = blob.with_name(etag + f".incomplete{os.getpid()}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks here (e.g. Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, link)

    if not _COMMIT.match(revision):
        ref = storage / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)  # no trailing newline, as huggingface_hub writes it
    trees = storage / "trees"
    trees.mkdir(exist_ok=True)
    (trees / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": entries}, indent=1))
    return commit


# ------------------------------------------------------------------------------------------ conversations


def sample_conversations() -> dict[str, list[dict[str, str]]]:
    """A few short, realistic customer-support chats (fresh lists on every call)."""
    return {
        "single_turn": [
            {"role": "user", "content": "My card payment was declined at the supermarket this morning, why did that happen?"},
            {"role": "assistant", "content": "A decline usually means a limit, a fraud check or a blocked card. "
                                             "Let me check which one applies to your card."},
        ],
        "single_turn_system": [
            {"role": "system", "content": "You are a concise, friendly support agent for a retail bank."},
            {"role": "user", "content": "How long does an international transfer to Germany usually take?"},
            {"role": "assistant", "content": "Transfers to Germany normally arrive within one to two business days."},
        ],
        "multi_turn": [
            {"role": "user", "content": "I forgot my online banking password and now my account seems locked."},
            {"role": "assistant", "content": "I can help. Was the account locked after several wrong password attempts?"},
            {"role": "user", "content": "Yes, I tried three times yesterday evening before it stopped me."},
            {"role": "assistant", "content": "Then it unlocks after 24 hours, or you can reset the password now "
                                             "with the 'Forgot password' link."},
        ],
    }


def hf_target_loss(model, examples: list[dict]) -> float:
    """The reference loss: transformers' own per-example loss (``model(input_ids, labels=...)``), weighted by each
    example's target count, i.e. the mean over all assistant tokens. The engines are checked against it."""
    import torch

    tot = n = 0
    with torch.no_grad():
        for e in examples:
            k = sum(1 for y in e["labels"][1:] if y != -100)
            out = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]))
            tot += float(out.loss) * k
            n += k
    return tot / n


def approved_snapshot(store, n: int, labels: list[str], query: str = "customer query {i} about my card",
                      system: str | None = None, name: str = "v1") -> None:
    """``n`` support queries labelled round-robin from ``labels``, all approved by one reviewer, frozen as
    snapshot ``name`` (the split rule decides train / held-out)."""
    from curate import snapshot as snap
    from curate.example import Example, Source

    exs = []
    for i in range(n):
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": query.format(i=i)}, {"role": "assistant", "content": labels[i % len(labels)]}]
        exs.append(Example(msgs, Source("ticket", "t.csv", f"row {i}"), label=labels[i % len(labels)]))
    store.add_examples(exs)
    for e in exs:
        store.add_event(e.id, "alice", "approve")
    snap.create(store, name)
