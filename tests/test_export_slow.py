"""Slow tier: export a LoRA run (merged, GGUF f16/q8_0, Ollama) on the embedded SmolLM2 and check parity.

The run folder is a fixture laid out like ``python -m train`` writes one:
base SmolLM2 + a LoRA adapter on every projection trained for 2 real AdamW
steps on a tiny approved snapshot (made through the curate API), the
tokenizer with its chat template, and a manifest naming base model, snapshot
and workspace (so the parity prompts are that snapshot's held-out prompts).
``make_fake_run`` (random LoRA B) is kept for quick experiments.  The round
trip through the real ``python -m train`` CLI lives in ``test_export_train.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_fake_run(run: Path, *, scale: float = 0.02, seed: int = 0, subfolder: bool = True) -> Path:
    """A run folder with a perturbed LoRA adapter over the embedded SmolLM2."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate.models import DEFAULT_CHAT, materialize_chat_model

    base = materialize_chat_model()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    adapter_dir = run / "adapter" if subfolder else run
    peft_model.save_pretrained(adapter_dir)
    tok.save_pretrained(run)
    (run / "manifest.json").write_text(json.dumps({"config": {"base_model": DEFAULT_CHAT, "max_seq_length": 512}}))
    return run


def make_trained_run(run: Path, workspace: Path, snapshot: str = "v1", *, steps: int = 2, lr: float = 5e-3,
                     batch_size: int = 1) -> Path:
    """A run folder from a few real LoRA steps (AdamW, loss on assistant tokens) on a snapshot's train split.

    Stands in for ``python -m train`` (see test_export_train.py for the real CLI): same outputs
    (adapter/, tokenizer + chat template, manifest naming base model, snapshot and workspace).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curate import snapshot as snap
    from curate.models import DEFAULT_CHAT, materialize_chat_model

    torch.manual_seed(0)
    base = materialize_chat_model()
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM"))
    rows = sorted(snap.load(workspace / "snapshots" / snapshot, split="train"), key=lambda r: r["id"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        batch = rows[batch_size * step: batch_size * (step + 1)]
        for r in batch:
            msgs = [{"role": m["role"], "content": m["content"]} for m in r["messages"]]
            prompt = tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
            full = tok.apply_chat_template(msgs, tokenize=False)
            ids = tok(full, return_tensors="pt", add_special_tokens=False).input_ids[:, :256]
            labels = ids.clone()
            labels[:, : len(tok(prompt, add_special_tokens=False).input_ids)] = -100  # assistant tokens only
            loss = model(input_ids=ids, labels=labels).loss / len(batch)
            loss.backward()
            losses.append(float(loss.detach()))
        opt.step()
        opt.zero_grad()
    model.save_pretrained(run / "adapter")
    tok.save_pretrained(run)
    (run / "manifest.json").write_text(json.dumps({
        "snapshot": {"name": snapshot}, "workspace": str(workspace),
        "config": {"base_model": DEFAULT_CHAT, "max_steps": steps, "lr": lr}, "losses": losses}))
    return run


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    from test_export_run import make_snapshot

    root = tmp_path_factory.mktemp("run")
    make_snapshot(root / "ws", limit=80)
    return make_trained_run(root / "r1", root / "ws")


def test_export_merged_gguf_ollama_with_parity(fake_run: Path):
    import gguf

    from train.export import main
    from train.modelfile import parse_modelfile

    assert main(["--run", str(fake_run), "--format", "merged", "--quiet"]) == 0
    merged = fake_run / "export" / "merged"
    rep = json.loads((merged / "export_report.json").read_text())
    assert rep["merge_max_abs_logit_diff"] < 1e-3
    # the trained adapter must matter, or the merge check proves nothing
    assert rep["adapter_effect_max_abs_logit"] > 0.1

    assert main(["--run", str(fake_run), "--format", "ollama", "--dtype", "f16", "--quiet",
                 "--prompts", "3", "--max-new-tokens", "16"]) == 0
    out = fake_run / "export" / "ollama-f16"
    rep = json.loads((out / "export_report.json").read_text())
    g = rep["gguf"]
    assert "held-out split" in rep["prompts_source"]  # prompts came from the snapshot the run names
    assert rep["ok"] and g["identical_greedy_outputs"] == g["prompts"] == 3
    assert g["max_abs_logit_diff"] < 0.25
    # real llama.cpp (xllamacpp wheel, a dev dependency) on the same file
    lc = g["llama_cpp"]
    assert lc["checked"], lc
    assert lc["template_mismatches"] == [] and lc["tokenizer_mismatches"] == []
    assert lc["identical_greedy_outputs"] + sum("diverges_at" in r for r in lc["per_prompt"]) == 3
    cmds = dict(parse_modelfile((out / "Modelfile").read_text()))
    assert cmds["model"] == "./model.gguf"
    r = gguf.GGUFReader(str(out / "model.gguf"))
    assert r.fields["general.architecture"].contents() == "llama"
    assert {t.tensor_type.name for t in r.tensors} == {"F16", "F32"}
    assert "SmolLM" in r.fields["tokenizer.chat_template"].contents()
    assert not (fake_run / "export" / "ollama-f16.partial").exists()

    assert main(["--run", str(fake_run), "--format", "gguf", "--dtype", "q8_0", "--quiet",
                 "--prompts", "1", "--max-new-tokens", "8"]) == 0
    q = fake_run / "export" / "gguf-q8_0"
    rep = json.loads((q / "export_report.json").read_text())
    assert rep["ok"] and rep["gguf"]["max_abs_logit_diff"] < 3.0 and rep["gguf"]["top1_agreement"] > 0.9
    r = gguf.GGUFReader(str(q / "model-q8_0.gguf"))
    assert "Q8_0" in {t.tensor_type.name for t in r.tensors}
    assert (q / "model-q8_0.gguf").stat().st_size < 0.6 * (out / "model.gguf").stat().st_size


def test_gguf_parity_catches_a_broken_file(fake_run: Path, tmp_path: Path):
    """A GGUF whose Q/K were not permuted must fail the parity check."""
    from transformers import AutoTokenizer

    import train.gguf_writer as gw
    from train.export import BUILTIN_PROMPTS, ExportError, gguf_parity, serving_template

    merged = fake_run / "export" / "merged"
    if not (merged / "config.json").exists():
        from train.export import main

        assert main(["--run", str(fake_run), "--format", "merged", "--quiet"]) == 0
    tok = AutoTokenizer.from_pretrained(merged)
    orig = gw.permute_rope
    gw.permute_rope = lambda w, n_head: w  # the classic conversion bug
    try:
        gw.write_llama_gguf(merged, tmp_path / "bad.gguf", dtype="f16",
                            chat_template=serving_template(tok.chat_template), progress=False)
    finally:
        gw.permute_rope = orig
    with pytest.raises(ExportError, match="logits differ|diverges"):
        gguf_parity(merged, tmp_path / "bad.gguf", tok, BUILTIN_PROMPTS[:1], "f16", 8)


def test_writer_agrees_with_upstream_converter_metadata(tmp_path: Path):
    """Our GGUF of the base model carries the same hyper-parameters and tokenizer arrays as the
    embedded SmolLM2 GGUF, which llama.cpp's own converter wrote (weights differ: that one is Q4_1)."""
    import gguf

    from curate.models import embedded_gguf, materialize_chat_model
    from train.gguf_writer import write_llama_gguf

    base = materialize_chat_model()
    template = (base / "chat_template.jinja").read_text()
    ours = gguf.GGUFReader(str(write_llama_gguf(base, tmp_path / "base.gguf", dtype="f16", chat_template=template,
                                                progress=False)))
    up = gguf.GGUFReader(str(embedded_gguf()))
    same = [k for k in up.fields if k.startswith("llama.") or k.startswith("tokenizer.")]
    differ = {k: (up.fields[k].contents(), ours.fields[k].contents() if k in ours.fields else None)
              for k in same if k not in ours.fields or ours.fields[k].contents() != up.fields[k].contents()}
    # the only difference allowed: llama.cpp names this byte-level split 'smollm' (GPT-2 regex + single
    # digits); the tokenizer we train with splits with the plain GPT-2 regex, which llama.cpp calls 'gpt-2'
    assert differ == {"tokenizer.ggml.pre": ("smollm", "gpt-2")}, differ
    assert sorted(t.name for t in ours.tensors) == sorted(t.name for t in up.tensors)


def test_digit_split_tokenizer_is_written_as_smollm_and_llamacpp_agrees(tmp_path: Path):
    """The original SmolLM2 tokenizer.json splits digits one by one before the GPT-2 regex; llama.cpp
    must tokenize our GGUF of it exactly like the HF tokenizer (checked with real llama.cpp)."""
    from transformers import AutoTokenizer

    from curate.models import materialize_chat_model
    from train.export import TOKENIZER_PROBES, llamacpp_server
    from train.gguf_writer import read_metadata, write_llama_gguf

    base = materialize_chat_model()
    d = tmp_path / "digits"
    d.mkdir()
    for f in base.iterdir():
        if f.name != "tokenizer.json":
            (d / f.name).symlink_to(f)
    tj = json.loads((base / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    tok = AutoTokenizer.from_pretrained(d)
    assert tok("x  9999 y").input_ids != AutoTokenizer.from_pretrained(base)("x  9999 y").input_ids  # forms differ
    out = write_llama_gguf(d, tmp_path / "digits.gguf", dtype="f16", progress=False)
    assert read_metadata(out)["tokenizer.ggml.pre"] == "smollm"
    with llamacpp_server(out, n_ctx=256) as post:
        for p in TOKENIZER_PROBES:
            got = post("/tokenize", {"content": p, "add_special": False, "parse_special": True})["tokens"]
            assert got == tok(p, add_special_tokens=False).input_ids, p
