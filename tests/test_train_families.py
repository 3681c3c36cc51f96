"""Bring your own model, fast tier: for every supported chat family (tiny random-init models built from the
family's config class, a real tokenizer and the family's real chat template, tests/families.py):

* the trained tokens are exactly each assistant turn and its end-of-turn token (an oracle written by hand per
  family below, not derived from the code under test), and nothing of the system/user text;
* the fast engine's first-step loss equals transformers' per-example loss (packing, sliding windows, soft-caps,
  fused projections, the frozen-prefix cache), or the model trains on TRL with the fallback notice;
* a resumed run ends with the uninterrupted run's adapter;
* ``--base_model org/name`` resolves offline from a populated Hugging Face cache and fails with one clear
  error from an empty one.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from families import FAMILIES, approved_snapshot, build_tiny_model, hf_target_loss, populate_hf_cache

from train.config import TrainConfig, load
from train.data import tokenize_rows
from train.template import TemplateMismatch, preflight, tokenize_with_mask

NAMES = sorted(FAMILIES)
# the end-of-turn text each family's template closes an assistant turn with (from the templates' sources)
CLOSING = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "mistral": "</s>",
           "gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>", "phi3": "<|end|>"}
# Qwen3 renders an empty thinking block before the final assistant reply (non-thinking mode): trained with it
LAST_PREFIX = {"qwen3": "<think>\n\n</think>\n\n"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: build_tiny_model(f, root / f) for f in NAMES}


def _tok(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


SYSTEM = "Reply with the intent label only."
TURNS = [("my card still has not arrived after two weeks", "card_arrival"),
         ("and how do I top up by bank transfer please", "transfer_into_account")]


def _conv(system: bool, turns: int) -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM}] if system else []
    for u, a in TURNS[:turns]:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return msgs


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def _expected_trained(family: str, msgs: list[dict], last_only: bool) -> str:
    replies = [m["content"] for m in msgs if m["role"] == "assistant"]
    if last_only:
        replies = replies[-1:]
    out = [r + CLOSING[family] for r in replies]
    out[-1] = LAST_PREFIX.get(family, "") + out[-1]
    return "".join(out)


@pytest.mark.parametrize("family", NAMES)
@pytest.mark.parametrize("system,turns", [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_masks_are_exactly_the_assistant_turns(models, family, system, turns):
    tok = _tok(models[family])
    msgs = _conv(system, turns)
    ids, mask = tokenize_with_mask(tok, msgs, tok.chat_template)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    # Mistral's template drops the system text unless the conversation ends with a user turn: then only the
    # last reply is trained, after the exact serving prompt (which carries the system text)
    last_only = family == "mistral" and system
    assert _squash(trained) == _squash(_expected_trained(family, msgs, last_only)), trained
    context = tok.decode([t for t, m in zip(ids, mask) if not m])
    for m in msgs:
        if m["role"] == "user":
            assert m["content"] in context
    if system:
        assert SYSTEM in context  # merged into the first user turn where the template has no system role
    eos_count = sum(1 for t, m in zip(ids, mask) if m and tok.decode([t]) == CLOSING[family])
    assert eos_count == (1 if last_only else turns)  # the model is taught to stop after every trained reply
    marked = preflight(tok, [{"messages": msgs}], tok.chat_template, tok.chat_template, tok.chat_template)
    assert "⟦" in marked


def test_a_template_that_hides_the_reply_is_refused(models):
    tok = _tok(models["llama3"])
    hiding = tok.chat_template.replace("message['content'] | trim", "'x'")
    assert hiding != tok.chat_template
    with pytest.raises(TemplateMismatch, match="assistant turn 1 could not be located"):
        tokenize_with_mask(tok, _conv(False, 1), hiding)


# --- the fast engine against transformers -------------------------------------------------------------

def _rows(n: int = 10) -> list[dict]:
    words = "please help me with my card payment transfer account balance refund today".split()
    return [{"id": str(i), "messages": [{"role": "user", "content": " ".join(words[: 4 + i % 9]) + f" {i}"},
                                        {"role": "assistant", "content": f"label_{i % 3} " + "ok " * (i % 4)}]}
            for i in range(n)]


def _hf_loss(path: Path, examples: list[dict]) -> float:
    from transformers import AutoModelForCausalLM

    from train.recipe import attention_implementation

    m = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention_implementation(path))
    return hf_target_loss(m, examples)


@pytest.mark.parametrize("family", NAMES)
@pytest.mark.parametrize("lora_layers", [0, 1])
def test_fast_engine_first_step_loss_equals_transformers(models, family, lora_layers, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from train.engine import fast_engine_unsupported, train_engine
    from train.recipe import attention_implementation, lora_config

    path = models[family]
    tok = _tok(path)
    ts = tokenize_rows(tok, _rows(), tok.chat_template, 96)
    assert max(len(e["input_ids"]) for e in ts.examples) > 16  # longer than the tiny sliding windows
    ref = _hf_loss(path, ts.examples)
    cfg = TrainConfig(max_steps=1, batch_size=len(ts.examples), max_length=96, lora_layers=lora_layers,
                      lora_dropout=0.0, logging_steps=1)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention_implementation(path))
    assert fast_engine_unsupported(model) is None
    pm = get_peft_model(model, lora_config(cfg, model))
    logged = []
    out = train_engine(cfg, pm, tok, ts.examples, tmp_path, device="cpu", quant="none", resume_ckpt=None,
                       log_metrics=logged.append)
    assert abs(logged[0]["loss"] - ref) / ref < 1e-4, (family, logged[0]["loss"], ref)
    assert out["engine"]["prefix_cached"] == (lora_layers > 0)


def test_unknown_architecture_falls_back_to_trl_with_a_notice(capsys):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from train.recipe import choose_engine

    m = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64))
    assert choose_engine(TrainConfig(), m, world=1) == "trl"
    err = capsys.readouterr().err
    assert "notice: the fast engine cannot train this model exactly" in err and "gpt_neox" in err
    assert choose_engine(TrainConfig(engine="trl"), m, world=1) == "trl"


# --- resume, and the hub path -------------------------------------------------------------------------

def _fill(store) -> None:
    approved_snapshot(store, 16, [f"label_{k}" for k in range(4)], system=SYSTEM)


def _train(ws: Path, base: str, out: Path, **over) -> Path:
    from train.recipe import train

    cfg = load(None, {"base_model": base, "output_dir": str(out), "max_length": 64, "batch_size": 4,
                      "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-2, **over})
    return train("v1", cfg, str(ws))


@pytest.mark.parametrize("family", NAMES)
def test_resumed_run_equals_uninterrupted(models, family, store, workspace, tmp_path):
    from safetensors.torch import load_file

    from train.__main__ import main

    _fill(store)
    full = _train(workspace, str(models[family]), tmp_path / "full", max_steps=4)
    man = json.loads((full / "manifest.json").read_text())
    assert man["engine"]["name"] == "fast" and man["model"]["kind"] == "folder"
    assert man["model"]["model_type"] == FAMILIES[family].model_type
    assert (full / "chat_template.jinja").read_text() == _tok(models[family]).chat_template  # its own template
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "config.json", part / "config.json")
    shutil.copytree(full / "checkpoints" / "checkpoint-2", part / "checkpoints" / "checkpoint-2")
    assert main(["--resume", str(part)]) == 0
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(part / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_hub_id_resolves_offline_from_the_cache_and_fails_clearly_when_empty(models, store, workspace, tmp_path,
                                                                               monkeypatch, capsys):
    from huggingface_hub import constants

    from train.__main__ import main

    _fill(store)
    cache = tmp_path / "hf-cache"
    spec = FAMILIES["qwen2"]
    commit = populate_hf_cache(models["qwen2"], spec.hub_id, cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for rev, out in ((None, "by-id"), (commit, "by-commit")):
        base = spec.hub_id + (f"@{rev}" if rev else "")
        run = _train(workspace, base, tmp_path / out, max_steps=1)
        man = json.loads((run / "manifest.json").read_text())["model"]
        assert man["kind"] == "hub" and man["id"] == spec.hub_id and man["commit"] == commit
        assert Path(man["path"]).is_relative_to(cache)

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    rc = main(["--snapshot", "v1", "--workspace", str(workspace), "--base_model", spec.hub_id,
               "--output_dir", str(tmp_path / "fails"), "--max_steps", "1"])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert f"model {spec.hub_id!r} is not in the Hugging Face cache" in err and "hf download" in err
    assert str(tmp_path / "empty-cache") in err


def test_synth_local_backend_takes_a_hub_id_and_the_models_template(models, tmp_path, monkeypatch):
    """synth's local backend resolves the same names as training and renders with the model's own template
    (Gemma 2 has no system role: the system text is merged into the first user turn, not refused)."""
    from huggingface_hub import constants

    from synth.backends import LocalBackend

    spec = FAMILIES["gemma2"]
    cache = tmp_path / "hf-cache"
    populate_hf_cache(models["gemma2"], spec.hub_id, cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    be = LocalBackend(model=spec.hub_id, max_batch=2, onednn=False)
    text = be.tok.decode(be.prompt_ids(_conv(True, 1)[:-1]))
    assert f"<start_of_turn>user\n{SYSTEM}\n\n{TURNS[0][0]}<end_of_turn>" in text
    assert text.endswith("<start_of_turn>model\n")
    out = be.complete(_conv(False, 1)[:-1], {"max_tokens": 3, "temperature": 0.0})
    assert isinstance(out, str)
