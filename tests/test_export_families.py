"""Export for every model family (tests/families.py): GGUF tensor names and metadata, quantisation mixes,
Modelfile template parity (fast tier), and a LoRA run on each tiny model exported to merged + GGUF f16/q8_0 and
served by llama.cpp (slow tier).

Two family fixtures are adjusted to what llama.cpp can run (the export refuses the originals, tested below):
Gemma 3's sliding/full layer pattern is fixed at 5 sliding + 1 full in llama.cpp (the fixture has 2 + 1), and
llama.cpp runs Mistral without a sliding window (the fixture's window is 8 tokens).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from families import FAMILIES, build_tiny_model

FAMILY_NAMES = sorted(FAMILIES)
OLLAMA_FAMILY = {"llama3": "llama3-instruct", "qwen2": "chatml", "qwen3": "chatml", "mistral": "mistral-instruct",
                 "gemma2": "gemma-instruct", "gemma3": "gemma-instruct", "phi3": "phi-3"}
GGUF_ARCH = {"llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama", "gemma2": "gemma2",
             "gemma3": "gemma3", "phi3": "phi3"}


def servable_model(family: str, out: Path, seed: int = 0, width: int | None = None) -> Path:
    """The tiny ``family`` model, with Gemma 3's layer pattern and Mistral's window made llama.cpp's; ``width``:
    hidden size (intermediate twice that), e.g. 256 so that rows are whole K-quant blocks."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = build_tiny_model(family, out, seed=seed)
    if family not in ("gemma3", "mistral") and not width:
        return d
    cfg = AutoConfig.from_pretrained(d)
    if family == "gemma3":
        cfg.num_hidden_layers = 6
        cfg.layer_types = ["sliding_attention"] * 5 + ["full_attention"]
    elif family == "mistral":
        cfg.sliding_window = None
    if width:
        cfg.hidden_size, cfg.intermediate_size, cfg.head_dim = width, 2 * width, width // cfg.num_attention_heads
        if getattr(cfg, "query_pre_attn_scalar", None):
            cfg.query_pre_attn_scalar = cfg.head_dim
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: servable_model(f, root / f) for f in FAMILY_NAMES}


def _render(tok):
    from train.export import renderer

    return renderer(tok)


# ------------------------------------------------------------------------------------------------ fast tier

@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tensor_names_and_metadata(family, models, tmp_path):
    import gguf

    from train.gguf_writer import ARCHS, arch_of, gguf_tensors, read_metadata, write_gguf

    d = models[family]
    cfg = json.loads((d / "config.json").read_text())
    arch = arch_of(cfg, d / "config.json")
    names = dict(gguf_tensors(d, cfg, arch, d / "config.json"))
    n = cfg["num_hidden_layers"]
    expected_layer = {"llama3": {"attn_q", "attn_k", "attn_v", "attn_output", "attn_norm", "ffn_norm", "ffn_gate",
                                 "ffn_up", "ffn_down"},
                      "qwen2": {"attn_q", "attn_k", "attn_v", "attn_q.bias", "attn_k.bias", "attn_v.bias",
                                "attn_output", "attn_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"},
                      "qwen3": {"attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "attn_output", "attn_norm",
                                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"},
                      "gemma2": {"attn_q", "attn_k", "attn_v", "attn_output", "attn_norm", "post_attention_norm",
                                 "ffn_norm", "post_ffw_norm", "ffn_gate", "ffn_up", "ffn_down"},
                      "phi3": {"attn_qkv", "attn_output", "attn_norm", "ffn_norm", "ffn_up", "ffn_down"}}
    expected_layer["mistral"] = expected_layer["llama3"]
    expected_layer["gemma3"] = expected_layer["gemma2"] | {"attn_q_norm", "attn_k_norm"}
    want = {f"blk.{i}.{t}" + ("" if t.endswith(".bias") else ".weight") for i in range(n) for t in expected_layer[family]}
    want |= {"token_embd.weight", "output_norm.weight"}
    if not (FAMILIES[family].tie_word_embeddings or ARCHS[cfg["model_type"]].always_tied):
        want.add("output.weight")
    assert set(names) == want

    from safetensors.torch import load_file

    hf = {k: v.numpy() for k, v in load_file(str(d / "model.safetensors")).items()}
    if arch.norm_shift:  # Gemma: HF's RMSNorm computes x * (1 + w); llama.cpp's x * w
        np.testing.assert_allclose(names["blk.0.attn_norm.weight"], hf["model.layers.0.input_layernorm.weight"] + 1)
    if arch.permute_qk:  # Llama: rows interleaved per head, a permutation of HF's rows
        q = hf["model.layers.0.self_attn.q_proj.weight"]
        assert not np.array_equal(names["blk.0.attn_q.weight"], q)
        np.testing.assert_array_equal(np.sort(names["blk.0.attn_q.weight"], axis=0), np.sort(q, axis=0))
    if family == "phi3":  # fused projections stay fused
        np.testing.assert_array_equal(names["blk.0.attn_qkv.weight"], hf["model.layers.0.self_attn.qkv_proj.weight"])

    meta = read_metadata(write_gguf(d, tmp_path / "m.gguf", dtype="f16", progress=False))
    a = GGUF_ARCH[family]
    assert meta["general.architecture"] == a and meta[f"{a}.block_count"] == n
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"  # the fixtures' tokenizer
    assert meta["tokenizer.ggml.add_bos_token"] == FAMILIES[family].add_bos_token
    if family == "llama3":  # Llama 3.1 RoPE scaling: per-frequency divisors in a tensor
        r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
        freqs = next(t for t in r.tensors if t.name == "rope_freqs.weight")
        assert len(freqs.data) == 8 and float(freqs.data[0]) == 1.0 and float(freqs.data[-1]) == 32.0
    if family == "gemma2":
        assert meta["gemma2.attn_logit_softcapping"] == 50.0 and meta["gemma2.final_logit_softcapping"] == 30.0
        assert meta["gemma2.attention.sliding_window"] == 8
    if family == "gemma3":
        assert meta["gemma3.attention.sliding_window"] == 8 and meta["gemma3.rope.freq_base"] == 1_000_000.0
    if family.startswith("gemma"):
        assert meta[f"{a}.attention.key_length"] == meta[f"{a}.attention.value_length"] == cfg["head_dim"]


def test_unrepresentable_fixtures_are_refused_with_the_reason(tmp_path):
    from train.gguf_writer import GGUFExportError, write_gguf

    with pytest.raises(GGUFExportError, match="layer_types .* llama.cpp's fixed pattern"):
        write_gguf(build_tiny_model("gemma3", tmp_path / "g3"), tmp_path / "g3.gguf", progress=False)
    with pytest.raises(GGUFExportError, match="sliding_window 8 .* no sliding window"):
        write_gguf(build_tiny_model("mistral", tmp_path / "m"), tmp_path / "m.gguf", progress=False)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from train.gguf_writer import GGUFExportError, write_gguf

    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(GGUFExportError) as e:
        write_gguf(d, tmp_path / "x.gguf", progress=False)
    msg = str(e.value)
    assert "'gpt2'" in msg and all(m in msg for m in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_modelfile_template_parity(family, models):
    from transformers import AutoTokenizer

    from train.modelfile import PARITY_CONVERSATIONS, derive_spec, go_template, modelfile_text, parse_modelfile, \
        template_parity

    from train.export import bos_text

    tok = AutoTokenizer.from_pretrained(models[family])
    render = _render(tok)
    spec = derive_spec(render, bos_text(tok, render))
    assert spec.family.name == OLLAMA_FAMILY[family]
    tmpl = go_template(spec)
    results = template_parity(tmpl, render, PARITY_CONVERSATIONS, spec)
    assert len(results) == 4 and all(r.ok for r in results), [r.diff() for r in results if not r.ok]
    # the BOS text is Ollama's to add (a token), never in the TEMPLATE
    assert spec.bos == (tok.bos_token if family in ("llama3", "mistral", "gemma2", "gemma3") else "")
    assert not spec.bos or spec.bos not in tmpl
    text = modelfile_text(spec, tmpl)
    cmds = parse_modelfile(text)
    assert dict(cmds)["template"] == tmpl and [v for k, v in cmds if k == "stop"] == spec.stop
    closing = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "mistral": "[INST]",
               "gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>", "phi3": "<|end|>"}[family]
    assert closing in spec.stop


def test_k_quant_mix_follows_llamacpp_rules():
    from gguf import GGMLQuantizationType as Q

    from train.gguf_writer import _use_more_bits, tensor_qtype

    n = 16
    more = [i for i in range(n) if _use_more_bits(i, n)]
    assert more == [0, 1, 4, 7, 10, 13, 14, 15]  # first/last eighth + every third in between
    assert tensor_qtype("output.weight", (1000, 512), "q4_k_m", n, False) == Q.Q6_K
    assert tensor_qtype("token_embd.weight", (1000, 512), "q4_k_m", n, True) == Q.Q6_K  # tied: output's type
    assert tensor_qtype("token_embd.weight", (1000, 512), "q4_k_m", n, False) == Q.Q4_K
    assert tensor_qtype("blk.0.attn_v.weight", (512, 512), "q4_k_m", n, False) == Q.Q6_K
    assert tensor_qtype("blk.2.attn_v.weight", (512, 512), "q4_k_m", n, False) == Q.Q4_K
    assert tensor_qtype("blk.4.ffn_down.weight", (512, 1024), "q5_k_m", n, False) == Q.Q6_K
    assert tensor_qtype("blk.3.attn_q.weight", (512, 512), "q5_k_m", n, False) == Q.Q5_K
    assert tensor_qtype("blk.3.attn_q.weight", (64, 64), "q4_k_m", n, False) == Q.Q5_0  # rows not 256-blocks
    assert tensor_qtype("blk.3.attn_q.weight", (64, 64), "q5_k_m", n, False) == Q.Q5_1
    assert tensor_qtype("blk.0.attn_v.weight", (64, 64), "q5_k_m", n, False) == Q.Q8_0
    assert tensor_qtype("blk.3.attn_q.weight", (64, 48), "q4_k_m", n, False) == Q.F16
    assert tensor_qtype("blk.3.attn_norm.weight", (64,), "q4_k_m", n, False) == Q.F32


def test_k_quants_use_llamacpps_quantizer():
    pytest.importorskip("xllamacpp")
    import gguf
    from gguf import GGMLQuantizationType as Q

    from train.gguf_writer import encode_tensor

    x = np.random.default_rng(0).standard_normal((8, 512)).astype(np.float32)
    for q, tol in ((Q.Q4_K, 0.35), (Q.Q5_K, 0.2), (Q.Q6_K, 0.1), (Q.Q8_0, 0.03)):
        data, raw = encode_tensor(x, q)
        assert raw == q and data.dtype == np.uint8
        assert np.abs(gguf.quants.dequantize(data, q) - x).max() < tol, q.name


# ------------------------------------------------------------------------------------------------ slow tier

def make_run(family: str, root: Path, width: int | None = None) -> Path:
    """A run folder as `python -m train` writes it: a LoRA adapter (random, non-zero B) on the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = servable_model(family, root / "base", width=width)
    run = root / "run"
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft.save_pretrained(run / "adapter")
    tok = AutoTokenizer.from_pretrained(base)
    tok.save_pretrained(run)
    (run / "chat_template.jinja").write_text(tok.chat_template)
    (run / "manifest.json").write_text(json.dumps({
        "config": {"base_model": str(base), "base_model_path": str(base)},
        "model": {"id": None, "revision": None, "commit": None, "path": str(base), "dtype": "float32",
                  "quantization": None}}))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_run_exports_and_llamacpp_serves_it(family, tmp_path, artifacts_dir):
    pytest.importorskip("xllamacpp")
    from train.export import ExportConfig, export
    from train.modelfile import parse_modelfile

    run = make_run(family, tmp_path)
    quiet = dict(progress=False, prompts=3, max_new_tokens=8)
    merged = export(ExportConfig(run=run, format="merged", **quiet), log=lambda *_: None)
    assert merged["merge_max_abs_logit_diff"] < 1e-3 and merged["adapter_effect_max_abs_logit"] > 0.05
    result = {"family": family, "gguf_arch": GGUF_ARCH[family], "adapter_effect": merged["adapter_effect_max_abs_logit"]}
    for fmt, dtype in (("ollama", "f16"), ("gguf", "q8_0")):
        rep = export(ExportConfig(run=run, format=fmt, dtype=dtype, **quiet), log=lambda *_: None)
        g, lc = rep["gguf"], rep["gguf"]["llama_cpp"]
        assert rep["ok"] and lc["checked"] and lc["template_mismatches"] == [] and lc["tokenizer_mismatches"] == []
        result[dtype] = {"llama_cpp_identical": lc["identical_greedy_outputs"], "prompts": lc["prompts"],
                         "weights_readback_max_abs_logit_diff": g["weights_readback_max_abs_logit_diff"],
                         "llama_cpp_near_ties": [r.get("merged_margin") for r in lc["per_prompt"] if not r["identical"]],
                         "transformers_checked": g["transformers_checked"],
                         "transformers_identical": g.get("identical_greedy_outputs"),
                         "transformers_max_abs_logit_diff": g.get("max_abs_logit_diff"),
                         "transformers_top1": g.get("top1_agreement"),
                         "transformers_failures": g["transformers_failures"], "quantizer": rep["quantizer"]}
        if dtype == "f16":  # f16 reproduces the merged model: llama.cpp's greedy tokens are the same
            assert lc["identical_greedy_outputs"] == lc["prompts"] == 3, lc["per_prompt"]
            assert g["weights_readback_max_abs_logit_diff"] < 0.05
            m = rep["modelfile"]
            assert m["family"] == OLLAMA_FAMILY[family] and m["conversations_checked"] >= 4 + 3
            out = Path(rep["out"])
            assert dict(parse_modelfile((out / "Modelfile").read_text()))["model"] == "./model.gguf"
            result["modelfile"] = {k: m[k] for k in ("family", "conversations_checked", "stop",
                                                     "content_stripped_by_template")}
            result["llama_cpp_template_conversations"] = lc["template_conversations_checked"]
    (artifacts_dir / f"export_family_{family}.json").write_text(json.dumps(result, indent=2, default=str))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_k_quant_exports_load_in_llamacpp(family, tmp_path, artifacts_dir):
    """q5_k_m and q4_k_m on a 256-wide model (rows are whole 256-blocks, so real Q4_K/Q5_K/Q6_K tensors)."""
    pytest.importorskip("xllamacpp")
    import gguf

    from train.export import ExportConfig, export

    run = make_run(family, tmp_path, width=256)
    result = {}
    for dtype, kinds in (("q5_k_m", {"Q5_K", "Q6_K"}), ("q4_k_m", {"Q4_K", "Q6_K"})):
        rep = export(ExportConfig(run=run, format="gguf", dtype=dtype, progress=False, prompts=3, max_new_tokens=8),
                     log=lambda *_: None)
        lc = rep["gguf"]["llama_cpp"]
        types = {t.tensor_type.name for t in gguf.GGUFReader(str(Path(rep["out"]) / f"model-{dtype}.gguf")).tensors}
        assert rep["ok"] and lc["checked"] and kinds <= types, types
        assert lc["template_mismatches"] == [] and lc["tokenizer_mismatches"] == []
        result[dtype] = {"tensor_types": sorted(types), "llama_cpp_identical": lc["identical_greedy_outputs"],
                         "llama_cpp_identical_to_merged": lc["identical_to_merged"],
                         "weights_readback_max_abs_logit_diff": rep["gguf"]["weights_readback_max_abs_logit_diff"],
                         "prompts": lc["prompts"], "near_tie_margins": [r.get("merged_margin") for r in lc["per_prompt"]
                                                                        if not r["identical"]],
                         "transformers_top1": rep["gguf"].get("top1_agreement"),
                         "transformers_max_abs_logit_diff": rep["gguf"].get("max_abs_logit_diff"),
                         "quantizer": rep["quantizer"]}
    (artifacts_dir / f"export_kquant_{family}.json").write_text(json.dumps(result, indent=2, default=str))


def test_sentencepiece_style_tokenizer_matches_llamacpp(tmp_path):
    """A SentencePiece-style tokenizer.json (BPE with byte fallback, '▁' for spaces, as Mistral / Gemma / Phi-3
    ship) is written as llama.cpp's `llama` tokenizer: scores from the merge ranks, byte tokens, space prefix;
    llama.cpp must tokenize exactly like transformers."""
    pytest.importorskip("xllamacpp")
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from train.export import BUILTIN_PROMPTS, TOKENIZER_PROBES, llamacpp_server
    from train.gguf_writer import read_metadata, write_gguf

    corpus = [m["content"] for c in BUILTIN_PROMPTS for m in c] + TOKENIZER_PROBES
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]))
    tj = json.loads(tok.to_str())
    order = sorted(tj["model"]["vocab"], key=tj["model"]["vocab"].get)  # specials, then <0x00>..<0xFF> as SentencePiece
    vocab = order[:3] + [f"<0x{i:02X}>" for i in range(256)] + order[3:]
    tj["model"]["vocab"] = {t: i for i, t in enumerate(vocab)}
    d = tmp_path / "spm"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>")
    hf.save_pretrained(d)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    out = write_gguf(d, tmp_path / "spm.gguf", progress=False)
    meta = read_metadata(out)
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] is True
    probes = TOKENIZER_PROBES + corpus + ["émoji 💳 and ünïcödé not in the corpus: ß∂ƒ", "  two leading spaces"]
    with llamacpp_server(out, n_ctx=256) as post:
        for p in probes:
            got = post("/tokenize", {"content": p, "add_special": False, "parse_special": True})["tokens"]
            assert got == hf(p, add_special_tokens=False).input_ids, p
