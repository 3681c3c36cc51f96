"""Our own GGUF writer for Llama-architecture Hugging Face checkpoints.

Owns: turning a merged HF folder (``config.json`` + ``*.safetensors`` +
``tokenizer.json``) into one ``.gguf`` file that llama.cpp, Ollama and
transformers' GGUF loader can read. It uses the ``gguf`` PyPI package for the
file format (``GGUFWriter``), the tensor names (``TensorNameMap``) and the
quantisers (``gguf.quants``); the conversion logic is ours.

What it writes
--------------
* hyper-parameters under ``llama.*`` (context length, widths, heads, RoPE base,
  RMS-norm epsilon, vocab size);
* every weight under its GGUF name.  Q and K projections are permuted from
  HF's "rotate halves" RoPE layout to the interleaved-pairs layout GGUF
  readers expect: rows of head *h* are ordered ``(h, 2, d/2) -> (h, d/2, 2)``.
  transformers' loader applies the inverse when reading back, which the
  export parity check relies on;
* the byte-level BPE tokenizer (GPT-2 style, as SmolLM2 uses): every token by
  id, its type (normal / control for special added tokens / user-defined for
  other added tokens / unused padding), the merges, the bos/eos/unk/pad ids,
  whether a BOS is added, and ``tokenizer.chat_template``.

Dtypes: ``f32``, ``f16`` (every matrix in half precision) and ``q8_0`` (every
matrix whose row length is a multiple of 32 in 8-bit blocks, else f16).
1-D tensors (norm weights, biases) stay f32 in every mode, as llama.cpp wants.

Only what we can check is supported: Llama architecture, default RoPE (no
scaling), ByteLevel BPE with the GPT-2 split regex (optionally after
single-digit splitting, llama.cpp's "smollm").  Anything else raises
:class:`GGUFExportError` naming the field, instead of writing a file that
would tokenize or attend differently from training.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DTYPES = ("f32", "f16", "q8_0")


class GGUFExportError(ValueError):
    """The checkpoint has something this writer cannot faithfully convert."""


@dataclass
class TokenizerMeta:
    """The tokenizer facts written under ``tokenizer.*``."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GGUFExportError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise GGUFExportError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF half-rotation layout -> GGUF interleaved layout for a Q or K matrix.

    ``w`` has ``n_head * head_dim`` rows; within each head, row ``i`` of the
    first half and row ``i`` of the second half become neighbours ``2i, 2i+1``.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise GGUFExportError(f"cannot permute a {w.shape} matrix for {n_head} heads")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------ tokenizer

def _pre_tokenizer_name(tok_json: dict, path: Path) -> str:
    """llama.cpp's name for the pre-tokenizer, or an error if it is not one we support."""
    pre = tok_json.get("pre_tokenizer") or {}
    norm = tok_json.get("normalizer")
    if norm not in (None, {}):
        raise GGUFExportError(f"{path}: field 'normalizer' is {norm.get('type')!r}; only byte-level BPE without a normalizer is supported")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        # Byte-level BPE split with the GPT-2 regex: llama.cpp calls this "gpt-2".
        return "gpt-2"
    seq = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(seq) == 2 and seq[0].get("type") == "Digits"
            and seq[0].get("individual_digits") and seq[1].get("type") == "ByteLevel"
            and seq[1].get("use_regex", True) and not seq[1].get("add_prefix_space", False)):
        # Digits split one by one, then the GPT-2 regex (the original SmolLM/SmolLM2 tokenizer.json):
        # llama.cpp calls this "smollm".
        return "smollm"
    raise GGUFExportError(
        f"{path}: field 'pre_tokenizer' is {json.dumps(pre)[:200]}; the GGUF writer supports ByteLevel "
        "(GPT-2 regex, no prefix space), optionally after single-digit splitting (SmolLM2's two forms)"
    )


def tokenizer_meta(model_dir: Path, vocab_size: int) -> TokenizerMeta:
    """Read ``tokenizer.json`` (+ ``tokenizer_config.json``) into GGUF tokenizer facts."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    tj_path = model_dir / "tokenizer.json"
    tj = _load_json(tj_path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFExportError(f"{tj_path}: field 'model.type' is {model.get('type')!r}; only BPE is supported")
    pre = _pre_tokenizer_name(tj, tj_path)

    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["id"]: a for a in tj.get("added_tokens") or []}
    for tid, a in added.items():
        vocab.setdefault(a["content"], tid)
    by_id: dict[int, str] = {}
    for tokstr, tid in vocab.items():
        if tid in by_id and by_id[tid] != tokstr:
            raise GGUFExportError(f"{tj_path}: token id {tid} is both {by_id[tid]!r} and {tokstr!r}")
        by_id[tid] = tokstr
    n_tok = max(by_id) + 1
    if n_tok > vocab_size:
        raise GGUFExportError(f"{tj_path}: tokenizer has {n_tok} ids but config vocab_size is {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # padding rows of the embedding matrix: no token maps here
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            types.append(int(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(TokenType.NORMAL))

    merges = []
    for j, m in enumerate(model.get("merges") or []):
        if isinstance(m, str):
            merges.append(m)
        elif isinstance(m, (list, tuple)) and len(m) == 2:
            merges.append(f"{m[0]} {m[1]}")
        else:
            raise GGUFExportError(f"{tj_path}: model.merges[{j}] is {m!r}, expected 'a b' or [a, b]")

    tok = AutoTokenizer.from_pretrained(model_dir)
    probe = "hello"
    with_sp = tok(probe, add_special_tokens=True)["input_ids"]
    without = tok(probe, add_special_tokens=False)["input_ids"]
    add_bos = tok.bos_token_id is not None and len(with_sp) > len(without) and with_sp[0] == tok.bos_token_id
    add_eos = tok.eos_token_id is not None and len(with_sp) > len(without) and with_sp[-1] == tok.eos_token_id
    return TokenizerMeta(
        tokens=tokens,
        token_types=types,
        merges=merges,
        pre=pre,
        bos_id=tok.bos_token_id,
        eos_id=tok.eos_token_id,
        unk_id=tok.unk_token_id,
        pad_id=tok.pad_token_id,
        add_bos=bool(add_bos),
        add_eos=bool(add_eos),
    )


# -------------------------------------------------------------------- weights

def _iter_tensors(model_dir: Path):
    """Yield ``(hf_name, float32 numpy array)`` from every safetensors file."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise GGUFExportError(f"{model_dir}: no *.safetensors weights (save the merged model with safe_serialization)")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                yield name, st.get_tensor(name).float().numpy()


def _check_config(cfg: dict, path: Path) -> None:
    if cfg.get("model_type") != "llama":
        raise GGUFExportError(f"{path}: field 'model_type' is {cfg.get('model_type')!r}; the GGUF writer supports 'llama' only")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rtype = rope.get("rope_type") or rope.get("type") or "default"
    if rtype != "default":
        raise GGUFExportError(f"{path}: RoPE type {rtype!r} is not supported (only unscaled RoPE)")
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise GGUFExportError(f"{path}: field {key!r} missing or not an integer")


def _rope_theta(cfg: dict) -> float:
    rope = cfg.get("rope_parameters") or {}
    return float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0)


def write_llama_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    *,
    dtype: str = "f16",
    chat_template: str | None = None,
    name: str | None = None,
    progress: bool = True,
) -> Path:
    """Write ``model_dir`` (a merged HF Llama folder) to ``out_path`` as GGUF.

    ``chat_template`` (Jinja) is stored as ``tokenizer.chat_template``; pass
    the serving form of the training template.  Returns ``out_path``.
    """
    import gguf
    from tqdm import tqdm

    if dtype not in DTYPES:
        raise GGUFExportError(f"dtype {dtype!r} not in {DTYPES}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg_path = model_dir / "config.json"
    cfg = _load_json(cfg_path)
    _check_config(cfg, cfg_path)

    n_layer = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    vocab_size = cfg["vocab_size"]
    tmeta = tokenizer_meta(model_dir, vocab_size)

    w = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or cfg.get("_model_name_or_path") or model_dir.name)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    w.add_file_type(int(file_type))
    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(int(cfg.get("max_position_embeddings") or 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps") or 1e-6))
    w.add_vocab_size(vocab_size)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tmeta.pre)
    w.add_token_list(tmeta.tokens)
    w.add_token_types(tmeta.token_types)
    w.add_token_merges(tmeta.merges)
    for setter, value in ((w.add_bos_token_id, tmeta.bos_id), (w.add_eos_token_id, tmeta.eos_id),
                          (w.add_unk_token_id, tmeta.unk_id), (w.add_pad_token_id, tmeta.pad_id)):
        if value is not None:
            setter(int(value))
    w.add_add_bos_token(tmeta.add_bos)
    w.add_add_eos_token(tmeta.add_eos)
    w.add_add_space_prefix(False)
    if chat_template:
        w.add_chat_template(chat_template)

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, n_layer)
    seen: set[str] = set()
    tensors = list(_iter_tensors(model_dir))
    tied = bool(cfg.get("tie_word_embeddings"))
    have = {n for n, _ in tensors}
    if tied and "lm_head.weight" in have and "model.embed_tokens.weight" in have:
        emb = next(a for n, a in tensors if n == "model.embed_tokens.weight")
        head = next(a for n, a in tensors if n == "lm_head.weight")
        if not np.array_equal(emb, head):
            raise GGUFExportError(f"{cfg_path}: tie_word_embeddings is true but lm_head differs from embed_tokens")
    for hf_name, arr in tqdm(tensors, desc=f"GGUF {dtype}", disable=not progress, unit="tensor"):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope.freq_base by every reader
        if hf_name == "lm_head.weight" and tied:
            continue  # tied: readers reuse token_embd
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise GGUFExportError(f"{model_dir}: tensor {hf_name!r} has no GGUF name for the llama architecture")
        if ".attn_q." in gname:
            arr = permute_rope(arr, n_head)
        elif ".attn_k." in gname:
            arr = permute_rope(arr, n_kv)
        if arr.ndim == 1 or dtype == "f32":
            w.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float32))
        elif dtype == "q8_0" and arr.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float16))
        seen.add(gname)
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{t}.weight" for i in range(n_layer)
        for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    }
    if not tied:
        expected.add("output.weight")
    missing = sorted(expected - seen)
    if missing:
        raise GGUFExportError(f"{model_dir}: weights missing for {missing[:5]}{' …' if len(missing) > 5 else ''}")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    return out_path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (arrays summarised by length)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    out: dict[str, Any] = {}
    for k, f in r.fields.items():
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            out[k] = f"<array of {len(f.data)}>"
        else:
            out[k] = f.contents()
    out["_tensor_types"] = sorted({t.tensor_type.name for t in r.tensors})
    out["_tensor_count"] = len(r.tensors)
    return out
