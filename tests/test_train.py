"""Fast tier for ``python -m train``: config, snapshot refusal, template preflight, assistant-only masking,
held-out isolation, the fast engine against the plain HF loss, and resume = uninterrupted run.

The model is a tiny random-init Llama with the embedded SmolLM2 tokenizer (ChatML), so the real template,
masks and run folder are exercised in seconds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from curate import snapshot as snap
from curate.example import Example, Source
from train.config import TrainConfig, coerce, load
from train.data import IGNORE, tokenize_example, tokenize_rows
from train.template import TemplateMismatch, preflight

from families import hf_target_loss  # noqa: E402  (tests/ helper module)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from curate.models import materialize_chat_model

    return AutoTokenizer.from_pretrained(materialize_chat_model())


@pytest.fixture(scope="module")
def tiny_model(tok, tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    d = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _fill(store, n=40, approve=True):
    exs = [Example([{"role": "system", "content": "Classify."}, {"role": "user", "content": f"customer query {i} about cards"},
                    {"role": "assistant", "content": f"label_{i % 4}"}], Source("ticket", "t.csv", f"row {i}"),
                   label=f"label_{i % 4}") for i in range(n)]
    store.add_examples(exs)
    if approve:
        for e in exs:
            store.add_event(e.id, "alice", "approve")
    return exs


# --- config -------------------------------------------------------------------------------------------

def test_config_precedence_and_validation(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('learning_rate = 1e-3\nepochs = 2\nlora_r = 8\n')
    c = load(f, {"lora_r": "4", "packing": "true"})
    assert (c.learning_rate, c.epochs, c.lora_r, c.packing) == (1e-3, 2.0, 4, True)
    assert TrainConfig().engine == "fast"
    with pytest.raises(ValueError, match="unknown config key 'lr'"):
        load(None, {"lr": "1"})
    with pytest.raises(ValueError, match="lora_r expects int"):
        coerce("lora_r", "sixteen")
    with pytest.raises(ValueError, match="lora_dropout must be in"):
        load(None, {"lora_dropout": "1.5"})
    with pytest.raises(ValueError, match="engine must be fast|trl"):
        load(None, {"engine": "unsloth"})
    with pytest.raises(ValueError, match="compile must be auto|on|off"):
        load(None, {"compile": "yes"})
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(ValueError, match="bad.toml: invalid TOML"):
        load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "missing.toml")


def test_compile_auto_only_for_long_cuda_runs():
    """compile "auto" compiles CUDA runs of at least COMPILE_MIN_STEPS planned steps (epochs or max_steps)."""
    from train.engine import COMPILE_MIN_STEPS, planned_steps, use_compile

    assert planned_steps(TrainConfig(batch_size=8, epochs=3.0), 100) == 39  # ceil(100 / 8) = 13 per epoch
    assert planned_steps(TrainConfig(batch_size=8, grad_accum=2, max_steps=-1, epochs=1.0), 100, world=2) == 4
    assert planned_steps(TrainConfig(max_steps=7), 10**6) == 7
    auto = TrainConfig()
    assert use_compile(auto, True, COMPILE_MIN_STEPS) and not use_compile(auto, True, COMPILE_MIN_STEPS - 1)
    assert not use_compile(auto, False, 10**6)  # CPU: not by default
    assert use_compile(TrainConfig(compile="on"), False, 1)
    assert not use_compile(TrainConfig(compile="off"), True, 10**6)


def test_help_lists_every_field():
    from train.__main__ import build_parser
    from train.config import FIELDS

    text = build_parser().format_help()
    for name in FIELDS:
        assert f"--{name.replace('_', '-')}" in text


# --- snapshot refusal ---------------------------------------------------------------------------------

def test_refuses_missing_tampered_and_unapproved(store, workspace, capsys):
    from train.__main__ import main

    assert main(["--snapshot", "nope", "--workspace", str(workspace)]) == 1
    assert "nope" in capsys.readouterr().err
    _fill(store)
    snap.create(store, "v1")
    d = snap.snapshots_dir(store) / "v1"
    p = d / "train.parquet"
    p.chmod(0o644)
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    assert main(["--snapshot", "v1", "--workspace", str(workspace)]) == 1
    assert "failed verification" in capsys.readouterr().err


def test_refuses_rows_not_approved(store, workspace, monkeypatch):
    """Defence in depth: snapshots hold approved rows only, but a row that is not is refused anyway."""
    import train.recipe as rec

    _fill(store)
    snap.create(store, "v1")
    rows = snap.load(snap.snapshots_dir(store) / "v1", split="train")
    rows[0]["status"] = "pending"
    orig = rec.snap.load
    monkeypatch.setattr(rec.snap, "load", lambda d, split=None: rows if split == "train" else orig(d, split=split))
    with pytest.raises(rec.TrainError, match="1 record.*not approved"):
        rec.load_snapshot("v1", str(workspace))


def test_heldout_never_reaches_the_dataset(store, workspace):
    from train.recipe import TrainError, build_dataset, load_snapshot

    _fill(store)
    snap.create(store, "v1")
    _, _, train_rows, held = load_snapshot("v1", str(workspace))
    assert held and not ({r["id"] for r in train_rows} & held)
    from transformers import AutoTokenizer

    from curate.models import materialize_chat_model

    tok = AutoTokenizer.from_pretrained(materialize_chat_model())
    ts = tokenize_rows(tok, train_rows, tok.chat_template, 128)
    ds = build_dataset(ts, held)
    assert len(ds) == len(train_rows) and ds[0]["labels"] == ts.examples[0]["labels"]
    ts.ids[0] = next(iter(held))
    with pytest.raises(TrainError, match="held-out"):
        build_dataset(ts, held)


# --- template and masking -----------------------------------------------------------------------------

def test_preflight_rejects_a_template_that_renders_differently(tok):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    tpl = tok.chat_template  # SmolLM2's own ChatML template: trained as is, with its default system prompt
    marked = preflight(tok, rows, tpl, tpl, tpl)
    assert "⟦hello<|im_end|>⟧" in marked and "⟦" not in marked.split("assistant")[0]
    assert "You are a helpful AI assistant named SmolLM" in marked
    wrong = tpl.replace("'<|im_start|>' + message['role']", "'<|im_start|> ' + message['role']")
    assert wrong != tpl
    with pytest.raises(TemplateMismatch, match="serving template renders"):
        preflight(tok, rows, tpl, wrong)
    other = tpl.replace("You are a helpful AI assistant", "You are an AI")
    with pytest.raises(TemplateMismatch, match="base model's template"):
        preflight(tok, rows, other, other, tpl)


def test_only_assistant_tokens_have_labels(tok):
    msgs = [{"role": "system", "content": "Classify."}, {"role": "user", "content": "my card is lost"},
            {"role": "assistant", "content": "lost_or_stolen_card"}, {"role": "user", "content": "and now?"},
            {"role": "assistant", "content": "card_arrival"}]
    ex = tokenize_example(tok, msgs, tok.chat_template, 512)
    trained = tok.decode([t for t, y in zip(ex["input_ids"], ex["labels"]) if y != IGNORE])
    assert trained == "lost_or_stolen_card<|im_end|>card_arrival<|im_end|>"
    assert all(y in (IGNORE, t) for t, y in zip(ex["input_ids"], ex["labels"]))
    cut = tokenize_example(tok, msgs, tok.chat_template, 12)
    assert cut["truncated"] and len(cut["input_ids"]) == 12
    ts = tokenize_rows(tok, [{"id": "a", "messages": msgs}], tok.chat_template, 12)
    assert ts.examples == [] and ts.dropped_no_target == ["a"]  # listed, not silently lost


# --- the fast engine ----------------------------------------------------------------------------------

def _plain_loss(model_dir: Path, examples: list[dict]) -> float:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir)
    return hf_target_loss(m, examples)


@pytest.mark.parametrize("attn,fused", [("auto", False), ("varlen", False), ("varlen", True)])
@pytest.mark.parametrize("lora_layers", [0, 1])
def test_engine_first_step_loss_equals_plain_loss(tok, tiny_model, tmp_path, lora_layers, attn, fused, monkeypatch):
    """One step over all examples (packed, target-only head, frozen-prefix cache when lora_layers > 0, masked
    rows or the varlen one-sequence layout, PEFT's LoRA layers or the fused ones) gives the loss that HF computes example by example: the tricks are
    exact. On CPU the varlen kernel is the per-segment SDPA reference (the flash kernel: tests/test_kernels.py)."""
    from train import kernels

    monkeypatch.setitem(kernels.VARLEN_KERNEL, "fn", kernels.reference_varlen)
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from train.engine import train_engine
    from train.recipe import lora_config

    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"query {i} " + "word " * (i % 7)},
                                        {"role": "assistant", "content": f"label_{i % 3}"}]} for i in range(12)]
    ts = tokenize_rows(tok, rows, tok.chat_template, 128)
    ref = _plain_loss(tiny_model, ts.examples)
    cfg = TrainConfig(max_steps=1, batch_size=12, max_length=128, lora_layers=lora_layers, lora_dropout=0.0,
                      logging_steps=1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    pm = get_peft_model(model, lora_config(cfg, model))
    logged = []
    out = train_engine(cfg, pm, tok, ts.examples, tmp_path, device="cpu", quant="none", resume_ckpt=None,
                       log_metrics=logged.append, tuning={"attn": attn, "fused_lora": fused})
    assert abs(logged[0]["loss"] - ref) / ref < 1e-4, (logged[0]["loss"], ref)
    assert out["engine"]["prefix_cached"] == (lora_layers > 0) and out["engine"]["attention"] == attn
    assert (out["engine"]["fused_lora_layers"] > 0) == fused
    assert out["tokens_seen"] == ts.tokens


@pytest.mark.slow
def test_engine_with_compiled_layers_is_exact(tok, tiny_model, tmp_path):
    """Compiled trained layers (``compile: on``; dynamic shapes): two steps of different lengths, one variant
    checkpointed with one row per micro-batch, give the eager engine's losses, and every length runs through one
    compiled graph (the length dimensions are marked dynamic: no recompile per new length)."""
    from peft import get_peft_model
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    from curate.compat import is_compiled
    from train.engine import train_engine
    from train.recipe import lora_config

    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"query {i} " + "word " * (i % 9)},
                                        {"role": "assistant", "content": f"label_{i % 3}"}]} for i in range(12)]
    ts = tokenize_rows(tok, rows, tok.chat_template, 128)
    losses = {}
    for mode, tuning in (("off", {}), ("on", {}), ("on", {"micro_rows": 1, "checkpointed_layers": 1})):
        cfg = TrainConfig(max_steps=2, batch_size=6, max_length=128, lora_dropout=0.0, logging_steps=1,
                          learning_rate=1e-2, compile=mode)
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        pm = get_peft_model(model, lora_config(cfg, model))
        logged = []
        train_engine(cfg, pm, tok, ts.examples, tmp_path / str(len(losses)), device="cpu", quant="none",
                     resume_ckpt=None, log_metrics=logged.append, tuning=tuning)
        losses[mode + str(tuning)] = [r["loss"] for r in logged]
        assert is_compiled(model.model.layers[-1]) == (mode == "on")  # it really compiled
        assert counters["stats"]["unique_graphs"] == (mode == "on"), dict(counters["stats"])
    ref, *others = losses.values()
    for got in others:
        assert got == pytest.approx(ref, rel=1e-4), losses


def _run_train(ws: Path, model: Path, out: Path, **over):
    from train.recipe import train

    cfg = load(None, {"base_model": str(model), "output_dir": str(out), "max_length": 64, "batch_size": 4,
                      "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-2, **over})
    return train("v1", cfg, str(ws))


def test_run_folder_and_resume_matches_uninterrupted(store, workspace, tiny_model, tmp_path):
    from safetensors.torch import load_file

    _fill(store, n=24)
    snap.create(store, "v1")
    full = _run_train(workspace, tiny_model, tmp_path / "full", max_steps=6, lora_layers=2)
    for f in ("adapter/adapter_model.safetensors", "tokenizer_config.json", "chat_template.jinja", "config.json",
              "manifest.json", "metrics.jsonl", "loss.png"):
        assert (full / f).exists(), f
    man = json.loads((full / "manifest.json").read_text())
    assert man["steps"] == 6 and man["engine"]["name"] == "fast" and man["device"] == "cpu"
    assert man["snapshot"]["name"] == "v1" and len(man["snapshot"]["files"]["train.parquet"]["sha256"]) == 64
    assert man["tokens_seen"] > 0 and man["seed"] == 42 and "torch" in man["versions"]
    assert [json.loads(x)["step"] for x in (full / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]

    # "killed" after step 4: keep only what existed then (checkpoint-4), resume, same final weights
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full / "config.json", part / "config.json")
    (part / "checkpoints").mkdir()
    shutil.copytree(full / "checkpoints" / "checkpoint-4", part / "checkpoints" / "checkpoint-4")
    from train.__main__ import main

    assert main(["--resume", str(part)]) == 0
    man2 = json.loads((part / "manifest.json").read_text())
    assert man2["steps"] == 6 and man2["resumed"]
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(part / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_run_folder_must_be_new(store, workspace, tiny_model, tmp_path):
    from train.recipe import TrainError

    _fill(store, n=12)
    snap.create(store, "v1")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    with pytest.raises(TrainError, match="not empty"):
        _run_train(workspace, tiny_model, tmp_path / "busy", max_steps=1)


def test_tokenized_set_cached_by_snapshot_hash(tok, tmp_path):
    from train.data import cached_tokenize_rows

    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(5)]
    a, hit_a = cached_tokenize_rows(tok, rows, tok.chat_template, 64, ["sha-1"], tmp_path)
    b, hit_b = cached_tokenize_rows(tok, rows, tok.chat_template, 64, ["sha-1"], tmp_path)
    c, hit_c = cached_tokenize_rows(tok, rows, tok.chat_template, 63, ["sha-1"], tmp_path)
    d, hit_d = cached_tokenize_rows(tok, rows, tok.chat_template, 64, ["sha-2"], tmp_path)
    assert (hit_a, hit_b, hit_c, hit_d) == (False, True, False, False)
    assert a.examples == b.examples and a.ids == b.ids and len(list(tmp_path.glob("tok-*.pkl"))) == 3
    next(tmp_path.glob("tok-*.pkl")).write_bytes(b"torn")  # a damaged cache file is rebuilt, not trusted
    assert all(cached_tokenize_rows(tok, rows, tok.chat_template, m, [k], tmp_path)[0].examples
               for m, k in ((64, "sha-1"), (63, "sha-1"), (64, "sha-2")))


def test_grad_accum_splits_the_step_but_not_the_result(tok, tiny_model, tmp_path):
    """grad_accum=3 runs a step in 3 micro-batches (less memory) and gives the same loss as one batch."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import train.engine as eng
    from train.recipe import lora_config

    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"query {i} " + "word " * (i % 9)},
                                        {"role": "assistant", "content": f"label_{i % 3}"}]} for i in range(12)]
    ts = tokenize_rows(tok, rows, tok.chat_template, 64)
    calls, orig = [], eng.collate_rows

    def spy(rws, *a, **k):
        calls.append(len(rws))
        return orig(rws, *a, **k)

    out = {}
    for accum, bs in ((1, 12), (3, 4)):
        calls.clear()
        cfg = TrainConfig(max_steps=1, batch_size=bs, grad_accum=accum, max_length=64, lora_dropout=0.0, logging_steps=1)
        model = AutoModelForCausalLM.from_pretrained(tiny_model)
        pm = get_peft_model(model, lora_config(cfg, model))
        logged = []
        eng.collate_rows = spy
        try:
            eng.train_engine(cfg, pm, tok, ts.examples, tmp_path, device="cpu", quant="none", resume_ckpt=None,
                             log_metrics=logged.append)
        finally:
            eng.collate_rows = orig
        out[accum] = (logged[0]["loss"], list(calls))
    assert len(out[1][1]) == 1 and len(out[3][1]) == 3
    assert out[1][0] == pytest.approx(out[3][0], rel=1e-5)
