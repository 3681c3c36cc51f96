"""Tiny per-family chat models (tests/families.py): they build, run, render their real chat templates,
and resolve offline by repo id from a hub-cache layout."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from families import FAMILIES, build_tiny_model, populate_hf_cache, sample_conversations

ROOT = Path(__file__).resolve().parent.parent

# sha256 of each fixture as copied (see tests/fixtures/chat_templates/README.md): a changed byte is a changed template.
TEMPLATE_SHA256 = {
    "llama3": "5816fce10444e03c2e9ee1ef8a4a1ea61ae7e69e438613f3b17b69d0426223a4",
    "qwen2": "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f",
    "qwen3": "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5",
    "mistral": "e16746b40344d6c5b5265988e0328a0bf7277be86f1c335156eae07e29c82826",
    "gemma2": "ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6",
    "gemma3": "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4",
    "phi3": "78d976a442bcde2f0be15aafbb8e3050e1104f86732266f68403251b89982a90",
}

# What each template renders right before the assistant's reply (the generation prompt).
GEN_PROMPT = {
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen2": "<|im_start|>assistant\n",
    "qwen3": "<|im_start|>assistant\n",
    "mistral": "[/INST]",
    "gemma2": "<start_of_turn>model\n",
    "gemma3": "<start_of_turn>model\n",
    "phi3": "<|assistant|>\n",
}

NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-families")
    return {f: build_tiny_model(f, root / f) for f in NAMES}


@pytest.fixture(scope="module")
def hub_cache(models, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    cache = tmp_path_factory.mktemp("hf-cache")
    commits = {f: populate_hf_cache(models[f], FAMILIES[f].hub_id, cache) for f in NAMES}
    return cache, commits


@functools.lru_cache(maxsize=None)
def _tok(path):  # loaded once per path or repo id (the tests only read them)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ------------------------------------------------------------------------------------------ templates


@pytest.mark.parametrize("family", NAMES)
def test_template_fixture_is_the_real_one(family):
    spec = FAMILIES[family]
    raw = spec.template_path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == TEMPLATE_SHA256[family]
    text = raw.decode("utf-8")
    assert len(text) > 400 and "{%" in text and "messages" in text
    assert "\n" in text and not text.startswith('"')  # raw Jinja (real newlines), not a JSON-escaped string
    for mark in spec.hallmarks:
        assert mark in text, (family, mark)
    import jinja2

    jinja2.Environment().parse(text)  # compiles
    readme = (spec.template_path.parent / "README.md").read_text()
    assert spec.template_file in readme and spec.source_model in readme


@pytest.mark.parametrize("family", NAMES)
@pytest.mark.parametrize("conv", ["single_turn", "single_turn_system", "multi_turn"])
def test_template_renders_sample_conversations(models, family, conv):
    import jinja2

    spec, tok = FAMILIES[family], _tok(models[family])
    assert tok.chat_template == spec.chat_template
    msgs = sample_conversations()[conv]
    if msgs[0]["role"] == "system" and not spec.supports_system:
        with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
            tok.apply_chat_template(msgs, tokenize=False)
        return
    text = tok.apply_chat_template(msgs, tokenize=False)
    for m in msgs:
        if m["role"] != "system" or family != "mistral":
            assert m["content"].strip() in text, (family, m["role"])
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(GEN_PROMPT[family])
    reply = msgs[-1]["content"]
    assert text.rindex(GEN_PROMPT[family]) < text.index(reply)


def test_system_prompt_placement_differs_by_family(models):
    """Where each real template puts (or drops) the system prompt — facts a trainer has to live with."""
    convs = sample_conversations()
    sys_text = convs["single_turn_system"][0]["content"]
    with_sys_multi = [convs["single_turn_system"][0], *convs["multi_turn"]]
    r = {f: _tok(models[f]) for f in NAMES}

    # Llama 3.2: own system header, with a knowledge cutoff and TODAY's date (strftime_now) unless date_string is given
    t = r["llama3"].apply_chat_template(convs["single_turn_system"], tokenize=False)
    assert f"Cutting Knowledge Date: December 2023\nToday Date: " in t and f"\n\n{sys_text}<|eot_id|>" in t
    assert re.search(r"Today Date: \d\d [A-Z][a-z]{2} \d{4}\n", t)
    pinned = r["llama3"].apply_chat_template(convs["single_turn"], tokenize=False, date_string="26 Jul 2024")
    assert "Today Date: 26 Jul 2024\n" in pinned
    # Qwen2.5 injects its default system prompt when none is given; Qwen3 does not
    assert "You are Qwen, created by Alibaba Cloud." in r["qwen2"].apply_chat_template(convs["single_turn"], tokenize=False)
    assert "<|im_start|>system" not in r["qwen3"].apply_chat_template(convs["single_turn"], tokenize=False)
    # Gemma 3 merges it into the first user turn; Gemma 2 refuses it (see the parametrized test)
    t = r["gemma3"].apply_chat_template(with_sys_multi, tokenize=False)
    assert t.startswith(f"<bos><start_of_turn>user\n{sys_text}\n\n{convs['multi_turn'][0]['content']}")
    # Phi-3.5 keeps a <|system|> turn
    assert f"<|system|>\n{sys_text}<|end|>\n<|user|>" in r["phi3"].apply_chat_template(convs["single_turn_system"], tokenize=False)
    # Mistral v0.3 puts it in front of the LAST user message, and only when that message is the last one:
    # a conversation that ends with the assistant's reply (every training example) loses its system prompt.
    m = r["mistral"]
    assert sys_text not in m.apply_chat_template(convs["single_turn_system"], tokenize=False)
    assert sys_text not in m.apply_chat_template(with_sys_multi, tokenize=False)
    t = m.apply_chat_template(with_sys_multi[:-1], tokenize=False, add_generation_prompt=True)
    last_user = convs["multi_turn"][2]["content"]
    assert t.endswith(f"[INST] {sys_text}\n\n{last_user}[/INST]")
    assert f"[INST] {convs['multi_turn'][0]['content']}[/INST]" in t


def test_turn_closing_and_thinking_quirks(models):
    convs = sample_conversations()
    conv = convs["multi_turn"]
    # Qwen3: the final assistant turn after the last user message gets an empty think block, earlier ones do
    # not, and the plain generation prompt has none, so prompt + reply is NOT a prefix of the rendered chat.
    q3 = _tok(models["qwen3"])
    t = q3.apply_chat_template(conv, tokenize=False)
    assert t.count("<think>\n\n</think>\n\n") == 1
    assert f"<|im_start|>assistant\n<think>\n\n</think>\n\n{conv[3]['content']}<|im_end|>" in t
    assert f"<|im_start|>assistant\n{conv[1]['content']}<|im_end|>" in t
    prompt = q3.apply_chat_template(conv[:3], tokenize=False, add_generation_prompt=True)
    assert t.startswith(prompt) and not t.startswith(prompt + conv[3]["content"])
    no_think = q3.apply_chat_template(conv[:3], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and t.startswith(no_think + conv[3]["content"])
    # Phi-3.5 appends eos_token (<|endoftext|>) after the conversation only when no generation prompt is asked
    p3 = _tok(models["phi3"])
    assert p3.apply_chat_template(conv, tokenize=False).endswith("<|end|>\n<|endoftext|>")
    # Mistral closes assistant turns with eos_token, no newline; Llama with <|eot_id|>; Gemma with <end_of_turn>\n
    assert _tok(models["mistral"]).apply_chat_template(conv, tokenize=False).endswith("link.</s>")
    assert _tok(models["llama3"]).apply_chat_template(conv, tokenize=False).endswith("link.<|eot_id|>")
    assert _tok(models["gemma3"]).apply_chat_template(conv, tokenize=False).endswith("link.<end_of_turn>\n")


@pytest.mark.parametrize("family", NAMES)
def test_bos_handling(models, family):
    """The template writes bos_token itself (Llama 3, Mistral, Gemma) and the tokenizer also prepends BOS when
    encoding with special tokens: tokenizing the rendered text naively doubles it."""
    spec, tok = FAMILIES[family], _tok(models[family])
    conv = sample_conversations()["single_turn"]
    text = tok.apply_chat_template(conv, tokenize=False)
    ids = tok.apply_chat_template(conv, tokenize=True)["input_ids"]
    naive = tok(text)["input_ids"]
    if spec.bos_token is None:
        assert tok.bos_token is None
        assert ids == naive
        return
    bos = tok.convert_tokens_to_ids(spec.bos_token)
    assert tok.bos_token == spec.bos_token
    # transformers 5 keeps BOS-on-encode in tokenizer.json's post-processor (add_bos_token is not saved)
    assert (tok("hello")["input_ids"][0] == bos) == spec.add_bos_token
    in_template = "bos_token" in spec.chat_template
    assert ids[:2].count(bos) == (1 if in_template else 0)
    assert naive[:2].count(bos) == int(in_template) + int(spec.add_bos_token)


# ------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("family", NAMES)
def test_model_builds_and_runs(models, family):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec, path = FAMILIES[family], models[family]
    tok = _tok(path)
    cfg = AutoConfig.from_pretrained(path)
    assert type(cfg).__name__ == spec.config_class and cfg.model_type == spec.model_type
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == spec.architecture
    if family == "gemma3":
        assert type(model).__name__ == "Gemma3ForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 128, 4, 2)
    assert cfg.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert cfg.tie_word_embeddings == spec.tie_word_embeddings
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == spec.tie_word_embeddings
    eos = [tok.convert_tokens_to_ids(t) for t in (spec.eos_token, *spec.extra_eos_tokens)]
    assert cfg.eos_token_id == (eos if spec.extra_eos_tokens else eos[0])
    assert cfg.pad_token_id == (tok.pad_token_id if spec.pad_token else None)
    if spec.bos_token:
        assert cfg.bos_token_id == tok.bos_token_id

    names = {n for n, _ in model.named_parameters()}
    if family == "qwen2":
        b = dict(model.named_parameters())["model.layers.0.self_attn.q_proj.bias"]
        assert b.abs().sum() > 0
    if family == "qwen3":
        assert "model.layers.0.self_attn.q_norm.weight" in names and "model.layers.0.self_attn.k_norm.weight" in names
    if family == "phi3":
        assert "model.layers.0.self_attn.qkv_proj.weight" in names and "model.layers.0.mlp.gate_up_proj.weight" in names
    if family == "gemma2":
        assert (cfg.attn_logit_softcapping, cfg.final_logit_softcapping, cfg.sliding_window) == (50.0, 30.0, 8)
        assert cfg.layer_types == ["sliding_attention", "full_attention"]
    if family == "gemma3":
        assert cfg.sliding_window == 8 and set(cfg.layer_types) == {"sliding_attention", "full_attention"}
    if family == "mistral":
        assert cfg.sliding_window == 8
    if family == "llama3":
        assert cfg.rope_parameters["rope_type"] == "llama3"

    text = tok.apply_chat_template(sample_conversations()["multi_turn"], tokenize=False)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    assert enc.input_ids.shape[1] > 16  # longer than the sliding windows
    with torch.no_grad():
        out = model(**enc, labels=enc.input_ids)
    assert out.logits.shape == (1, enc.input_ids.shape[1], len(tok))
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    if family == "gemma2":
        assert out.logits.abs().max() <= 30.0 + 1e-4


FEATURE_OFF = {  # the family's feature switched off through a config override, as an engine ignoring it would
    "gemma2": [dict(final_logit_softcapping=None), dict(attn_logit_softcapping=None), dict(sliding_window=10_000)],
    "gemma3": [dict(sliding_window=10_000)],
    "mistral": [dict(sliding_window=None)],
    "llama3": [dict(rope_parameters=dict(rope_type="default", rope_theta=500000.0))],
}


@pytest.mark.parametrize("family", sorted(FEATURE_OFF))
def test_distinguishing_features_change_the_loss(models, family):
    import torch
    from transformers import AutoModelForCausalLM

    tok = _tok(models[family])
    ids = tok(tok.apply_chat_template(sample_conversations()["multi_turn"], tokenize=False),
              return_tensors="pt", add_special_tokens=False).input_ids

    def loss(**override):
        model = AutoModelForCausalLM.from_pretrained(models[family], attn_implementation="eager", **override)
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()

    base = loss()
    for override in FEATURE_OFF[family]:
        assert abs(loss(**override) - base) > 1e-3, (family, override)  # fp32 noise here is ~1e-6


def test_builds_are_deterministic_and_seeded(tmp_path):
    from safetensors.torch import load_file

    a = load_file(build_tiny_model("qwen3", tmp_path / "a") / "model.safetensors")
    b = load_file(build_tiny_model("qwen3", tmp_path / "b") / "model.safetensors")
    c = load_file(build_tiny_model("qwen3", tmp_path / "c", seed=1) / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)


# ------------------------------------------------------------------------------------------ hub cache


@pytest.mark.parametrize("family", NAMES)
def test_hub_cache_resolves_offline_by_repo_id(models, hub_cache, family, monkeypatch):
    import torch
    from huggingface_hub import constants, snapshot_download
    from transformers import AutoModelForCausalLM

    cache, commits = hub_cache
    repo, commit = FAMILIES[family].hub_id, commits[family]
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    storage = cache / ("models--" + repo.replace("/", "--"))
    assert (storage / "refs" / "main").read_text() == commit
    snap = storage / "snapshots" / commit
    for f in models[family].iterdir():
        link = snap / f.name
        assert link.is_symlink() and link.resolve().parent == (storage / "blobs").resolve()
        assert link.read_bytes() == f.read_bytes()

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # what HF_HUB_CACHE=... gives at import time
    assert constants.HF_HUB_OFFLINE
    assert Path(snapshot_download(repo, local_files_only=True)) == snap
    assert Path(snapshot_download(repo, revision=commit, local_files_only=True)) == snap
    tok = _tok.__wrapped__(repo)
    assert tok.chat_template == FAMILIES[family].chat_template and len(tok) == len(_tok(models[family]))
    ref = AutoModelForCausalLM.from_pretrained(models[family]).state_dict()
    for kw in ({}, {"revision": commit}, {"cache_dir": str(cache)}):
        sd = AutoModelForCausalLM.from_pretrained(repo, **kw).state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    with pytest.raises(Exception):
        snapshot_download("test-org/not-there", local_files_only=True)


def test_hub_cache_with_real_environment_variables(hub_cache):
    """A fresh process with only HF_HUB_OFFLINE=1 and HF_HUB_CACHE set loads every family by repo id."""
    cache, commits = hub_cache
    code = """
import json, sys
from huggingface_hub import snapshot_download
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {}
for repo, commit in json.loads(sys.argv[1]).items():
    tok = AutoTokenizer.from_pretrained(repo)
    model = AutoModelForCausalLM.from_pretrained(repo, revision=commit)
    out[repo] = [snapshot_download(repo), type(model).__name__, len(tok), tok.chat_template[:20]]
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf-home"))
    arg = json.dumps({FAMILIES[f].hub_id: commits[f] for f in NAMES})
    res = subprocess.run([sys.executable, "-c", code, arg], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for f in NAMES:
        snap, arch, n, head = out[FAMILIES[f].hub_id]
        assert Path(snap).name == commits[f] and Path(snap).is_relative_to(cache)
        assert arch == FAMILIES[f].architecture and head == FAMILIES[f].chat_template[:20]


def test_populate_is_idempotent_and_takes_a_commit_revision(models, tmp_path):
    from huggingface_hub import snapshot_download

    cache = tmp_path / "cache"
    c1 = populate_hf_cache(models["phi3"], "test-org/tiny-phi3", cache)
    assert populate_hf_cache(models["phi3"], "test-org/tiny-phi3", cache) == c1
    pinned = "0123456789abcdef0123456789abcdef01234567"
    assert populate_hf_cache(models["phi3"], "test-org/pinned", cache, revision=pinned) == pinned
    assert not (cache / "models--test-org--pinned" / "refs").exists()
    snap = snapshot_download("test-org/pinned", revision=pinned, cache_dir=cache, local_files_only=True)
    assert Path(snap).name == pinned
    trees = json.loads((cache / "models--test-org--tiny-phi3" / "trees" / f"{c1}.json").read_text())
    assert trees["files"]["model.safetensors"]["lfs_sha256"] == hashlib.sha256(
        (models["phi3"] / "model.safetensors").read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ conversations


def test_sample_conversations_shape():
    convs = sample_conversations()
    assert set(convs) == {"single_turn", "single_turn_system", "multi_turn"}
    assert [m["role"] for m in convs["single_turn"]] == ["user", "assistant"]
    assert [m["role"] for m in convs["single_turn_system"]] == ["system", "user", "assistant"]
    assert [m["role"] for m in convs["multi_turn"]] == ["user", "assistant", "user", "assistant"]
    for conv in convs.values():
        for m in conv:
            if m["role"] == "user":
                assert 5 <= len(m["content"].split()) <= 20
            assert m["content"] == m["content"].strip()
    convs["single_turn"].clear()
    assert sample_conversations()["single_turn"]  # fresh lists each call
