"""Slow tier: GGUF writer checks on the embedded SmolLM2 (the full train-then-export round trip, with
every format and parity check, is ``test_export_train.py``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_gguf_parity_catches_a_broken_file(tmp_path: Path):
    """A GGUF whose Q/K were not permuted (the classic conversion bug) must fail the parity check.

    Uses the base model as the reference "merged" folder: the check is the same, no training needed.
    """
    from transformers import AutoTokenizer

    import train.gguf_writer as gw
    from curate.models import materialize_chat_model
    from train.export import BUILTIN_PROMPTS, ExportError, gguf_parity

    base = materialize_chat_model()
    tok = AutoTokenizer.from_pretrained(base)
    orig = gw.permute_rope
    gw.permute_rope = lambda w, n_head: w
    try:
        gw.write_llama_gguf(base, tmp_path / "bad.gguf", dtype="f16", chat_template=tok.chat_template, progress=False)
    finally:
        gw.permute_rope = orig
    with pytest.raises(ExportError, match="logits differ|diverges") as e:
        gguf_parity(base, tmp_path / "bad.gguf", tok, BUILTIN_PROMPTS[:1], "f16", 8)
    assert "llama.cpp" in str(e.value)  # real llama.cpp sees the broken file too


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
