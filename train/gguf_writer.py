"""Our GGUF writer: a merged Hugging Face folder -> one ``.gguf`` file llama.cpp and Ollama load.

Owns: turning a merged HF folder (``config.json`` + ``*.safetensors`` +
``tokenizer.json``) of one of the architectures in :data:`ARCHS` into a GGUF
file.  The ``gguf`` PyPI package (gguf-py, llama.cpp's own) provides the file
format (``GGUFWriter``), the tensor names (``get_tensor_name_map``), the
metadata keys and the Q8_0 quantiser; the conversion rules follow llama.cpp's
``convert_hf_to_gguf.py`` per architecture (written here, not copied):

=============  =========  ==============================================================
model_type     GGUF arch  what differs from the common path
=============  =========  ==============================================================
llama          llama      Q/K rows permuted to GGUF's interleaved RoPE layout; Llama 3.1
                          RoPE scaling -> ``rope_freqs`` tensor; linear scaling
mistral        llama      as llama (llama.cpp serves Mistral as the llama architecture, so a
                          sliding window shorter than the context is refused)
qwen2          qwen2      q/k/v biases
qwen3          qwen3      per-head q/k RMS norms
gemma2         gemma2     norm weights +1 (HF stores w, computes x*(1+w)); tied output;
                          attention/final logit soft-capping; sliding window (every 2nd layer)
gemma3_text    gemma3     norm weights +1 (q/k norms too); sliding window (5 of 6 layers,
                          local RoPE base 10000); linear RoPE scaling on global layers
phi3           phi3       fused qkv and gate_up projections; partial rotary; LongRoPE
                          factors as ``rope_factors_long/short`` tensors (llama.cpp disables
                          Phi-3's sliding window: a window shorter than the context is refused)
=============  =========  ==============================================================

Tokenizers: byte-level BPE (``tokenizer.ggml.model = gpt2``: tokens, token
types, merges, and llama.cpp's name for the split regex: ``gpt-2``,
``smollm``, ``llama-bpe``, ``qwen2``) and SentencePiece-style BPE with byte
fallback (``llama``: tokens, scores from the merge ranks, byte/control/
user-defined types, whether a space is prepended), plus the special-token ids,
``add_bos_token`` and ``tokenizer.chat_template``.

Dtypes (:data:`DTYPES`): ``f32``; ``f16``; ``q8_0`` (gguf-py's quantiser,
bit-identical to llama.cpp's); ``q4_k_m`` and ``q5_k_m``, llama.cpp's mixes
(output/tied embeddings Q6_K, attn_v and ffn_down Q6_K on the layers
llama.cpp's ``use_more_bits`` picks, the rest Q4_K/Q5_K, with llama.cpp's
fallbacks for rows that are not a multiple of 256), quantised by llama.cpp's
own ggml kernels (``ggml_quantize_chunk``) from the ``xllamacpp`` wheel.
1-D tensors (norms, biases, RoPE factors) stay f32, as llama.cpp wants.

Anything outside this (another architecture, a RoPE scaling or tokenizer we
do not convert) raises :class:`GGUFExportError` naming the file and field,
instead of writing a file that would tokenize or attend differently.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

DTYPES = ("f32", "f16", "q8_0", "q4_k_m", "q5_k_m")
# which package does the arithmetic for each dtype (docs/export.md repeats this)
QUANTIZER = {"f32": "numpy", "f16": "numpy", "q8_0": "gguf (gguf-py)",
             "q4_k_m": "xllamacpp (llama.cpp's ggml_quantize_chunk)", "q5_k_m": "xllamacpp (llama.cpp's ggml_quantize_chunk)"}


class GGUFExportError(ValueError):
    """The checkpoint has something this writer cannot faithfully convert."""


# ------------------------------------------------------------------ config

def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GGUFExportError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise GGUFExportError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def rope_params(cfg: dict, kind: str | None = None) -> dict:
    """RoPE settings as one dict (``rope_theta``, ``rope_type``, scaling fields) from either config layout:
    transformers 5 ``rope_parameters`` (per layer kind for Gemma 3) or 4.x ``rope_theta`` + ``rope_scaling``."""
    rp = cfg.get("rope_parameters") or {}
    if kind and isinstance(rp.get(kind), dict):
        rp = rp[kind]
    out = {**(cfg.get("rope_scaling") or {}), **{k: v for k, v in rp.items() if not isinstance(v, dict)}}
    out.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    out["rope_type"] = out.get("rope_type") or out.get("type") or "default"
    return out


@dataclass
class Ctx:
    """What the per-architecture hooks need: the config, its path, and the writer."""

    cfg: dict
    path: Path
    w: Any
    head_dim: int
    extra: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def fail(self, what: str) -> GGUFExportError:
        return GGUFExportError(f"{self.path}: {what}")


def _rope_scaling(c: Ctx, allowed: tuple[str, ...], kind: str | None = None) -> None:
    """Write the RoPE base and, for the scalings in ``allowed``, the scaling metadata/tensors."""
    import gguf

    rp = rope_params(c.cfg, kind)
    c.w.add_rope_freq_base(float(rp["rope_theta"]))
    rtype = rp["rope_type"]
    if rtype == "default":
        return
    if rtype not in allowed:
        raise c.fail(f"RoPE scaling {rtype!r} is not converted for model_type {c.cfg.get('model_type')!r} "
                     f"(supported here: default{', ' if allowed else ''}{', '.join(allowed)})")
    if rtype == "linear":
        c.w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        c.w.add_rope_scaling_factor(float(rp["factor"]))
    elif rtype == "llama3":  # Llama 3.1: per-frequency divisors, as llama.cpp's converter computes them
        dim, base = c.head_dim, float(rp["rope_theta"])
        factor, lo, hi = float(rp.get("factor", 8.0)), float(rp.get("low_freq_factor", 1.0)), float(rp.get("high_freq_factor", 4.0))
        old = float(rp.get("original_max_position_embeddings", 8192))
        out = []
        for f in 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim):
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(1.0)
            elif wavelen > old / lo:
                out.append(factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append(1 / ((1 - smooth) / factor + smooth))
        c.extra.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", np.array(out, dtype=np.float32)))
    elif rtype == "longrope":  # Phi-3 128k / 3.5: long and short factor tensors + attention factor
        orig = int(rp.get("original_max_position_embeddings") or c.cfg.get("original_max_position_embeddings"))
        scale = c.cfg["max_position_embeddings"] / orig
        attn = rp.get("attention_factor") or (math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
        long_f, short_f = rp.get("long_factor") or [], rp.get("short_factor") or []
        n_rot = int(c.head_dim * float(c.cfg.get("partial_rotary_factor", 1.0)))
        if not (len(long_f) == len(short_f) == n_rot // 2):
            raise c.fail(f"longrope factors have {len(long_f)}/{len(short_f)} entries, expected {n_rot // 2}")
        c.w.add_rope_scaling_attn_factors(float(attn))
        c.w.add_rope_scaling_orig_ctx_len(orig)
        for t, f in ((gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, long_f), (gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT, short_f)):
            c.extra.append((gguf.TENSOR_NAMES[t] + ".weight", np.array(f, dtype=np.float32)))


def _swa(c: Ctx, every: int) -> None:
    """Sliding-window metadata; llama.cpp hard-codes which layers slide (all but every ``every``-th)."""
    window, n = c.cfg.get("sliding_window"), c.cfg["num_hidden_layers"]
    if not window:
        return
    expected = ["sliding_attention" if i % every < every - 1 else "full_attention" for i in range(n)]
    got = c.cfg.get("layer_types") or expected
    if list(got) != expected:
        raise c.fail(f"layer_types {got} differ from llama.cpp's fixed pattern for this architecture "
                     f"(sliding except every {every}th layer)")
    c.w.add_sliding_window(int(window))


def _attn_scale(c: Ctx, big_layers: int) -> None:
    """llama.cpp scales queries by 1/sqrt(head_dim), except hidden/heads for the 27B shape."""
    q = c.cfg.get("query_pre_attn_scalar")
    ok = {c.head_dim} | ({c.cfg["hidden_size"] // c.cfg["num_attention_heads"]}
                         if c.cfg["num_hidden_layers"] == big_layers else set())
    if q is not None and int(q) not in ok:
        raise c.fail(f"query_pre_attn_scalar {q} is not what llama.cpp uses for this shape ({sorted(ok)})")


def _no_window(c: Ctx, why: str) -> None:
    """Refuse a model whose every layer slides over fewer tokens than its context: llama.cpp attends to all."""
    window, ctx = c.cfg.get("sliding_window"), c.cfg.get("max_position_embeddings") or 0
    if window and window < ctx and c.cfg.get("use_sliding_window", True):
        raise c.fail(f"sliding_window {window} < max_position_embeddings {ctx}: {why}, so tokens more than "
                     f"{window} apart would attend differently from training")


def _llama(c: Ctx) -> None:
    _no_window(c, f"llama.cpp runs {c.cfg.get('model_type')} as the llama architecture, which has no sliding window "
                  "(Mistral v0.2+ has none and exports)")
    _rope_scaling(c, ("linear", "llama3"))


def _qwen(c: Ctx) -> None:
    _rope_scaling(c, ())


def _gemma2(c: Ctx) -> None:
    _rope_scaling(c, ())
    _attn_scale(c, big_layers=46)
    for key, add in (("attn_logit_softcapping", c.w.add_attn_logit_softcapping),
                     ("final_logit_softcapping", c.w.add_final_logit_softcapping)):
        if c.cfg.get(key):
            add(float(c.cfg[key]))
    _swa(c, every=2)


def _gemma3(c: Ctx) -> None:
    _rope_scaling(c, ("linear",), kind="full_attention")
    local = rope_params(c.cfg, "sliding_attention")
    theta = float(local.get("rope_local_base_freq") or c.cfg.get("rope_local_base_freq") or local["rope_theta"])
    if "sliding_attention" in (c.cfg.get("rope_parameters") or {}) or c.cfg.get("rope_local_base_freq"):
        if theta != 10000.0 or local["rope_type"] != "default":
            raise c.fail(f"sliding-window layers use RoPE base {theta} ({local['rope_type']}); llama.cpp fixes 10000")
    if c.cfg.get("attn_logit_softcapping"):
        raise c.fail("attn_logit_softcapping is set, which llama.cpp's gemma3 does not apply")
    if c.cfg.get("final_logit_softcapping"):
        c.w.add_final_logit_softcapping(float(c.cfg["final_logit_softcapping"]))
    _attn_scale(c, big_layers=62)
    _swa(c, every=6)


def _phi3(c: Ctx) -> None:
    _no_window(c, "llama.cpp disables Phi-3's sliding window (Phi-3.5 / Phi-4-mini have none shorter than the context)")
    _rope_scaling(c, ("longrope",))
    if c.cfg.get("sliding_window"):
        c.w.add_sliding_window(int(c.cfg["sliding_window"]))


@dataclass(frozen=True)
class Arch:
    """One row of the architecture table.

    Fields:
        gguf: ``gguf.MODEL_ARCH`` member name.
        hparams: writes the architecture's own metadata (and extra tensors) after the common keys.
        permute_qk: Q/K rows go from HF's half-rotation RoPE layout to GGUF's interleaved one.
        norm_shift: added to every ``*norm.weight`` (Gemma's ``x * (1 + w)`` RMSNorm).
        always_tied: the output layer is the embedding matrix whatever the config says.
    """

    gguf: str
    hparams: Callable[[Ctx], None]
    permute_qk: bool = False
    norm_shift: float = 0.0
    always_tied: bool = False


ARCHS: dict[str, Arch] = {
    "llama": Arch("LLAMA", _llama, permute_qk=True),
    "mistral": Arch("LLAMA", _llama, permute_qk=True),
    "qwen2": Arch("QWEN2", _qwen),
    "qwen3": Arch("QWEN3", _qwen),
    "gemma2": Arch("GEMMA2", _gemma2, norm_shift=1.0, always_tied=True),
    "gemma3_text": Arch("GEMMA3", _gemma3, norm_shift=1.0),
    "phi3": Arch("PHI3", _phi3),
}


def arch_of(cfg: dict, path: Path) -> Arch:
    mt = cfg.get("model_type")
    if mt not in ARCHS:
        raise GGUFExportError(f"{path}: model_type {mt!r} has no GGUF conversion here; supported: "
                              f"{', '.join(ARCHS)}")
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise GGUFExportError(f"{path}: field {key!r} missing or not an integer")
    return ARCHS[mt]


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
    model: str = "gpt2"
    scores: list[float] | None = None
    add_space_prefix: bool = False
    rstrip_special: bool = False  # special added tokens swallow the whitespace after them (Phi-3's)


_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# byte-level BPE split regexes -> llama.cpp's pre-tokenizer names (llama.cpp implements each by name)
SPLIT_REGEXES = {_LLAMA3_SPLIT: "llama-bpe", _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"): "qwen2"}


def _bytelevel(p: dict) -> bool:
    return p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)


def _pre_tokenizer_name(tok_json: dict, path: Path) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, or an error if it is not one we support."""
    pre = tok_json.get("pre_tokenizer") or {}
    norm = tok_json.get("normalizer")
    if norm not in (None, {}) and norm.get("type") != "NFC":
        raise GGUFExportError(f"{path}: field 'normalizer' is {norm.get('type')!r}; byte-level BPE is supported "
                              "without a normalizer or with NFC")
    seq = pre.get("pretokenizers") or [] if pre.get("type") == "Sequence" else [pre]
    if len(seq) == 1 and _bytelevel(seq[0]) and seq[0].get("use_regex", True):
        return "gpt-2"  # ByteLevel's own GPT-2 regex
    if (len(seq) == 2 and seq[0].get("type") == "Digits" and seq[0].get("individual_digits")
            and _bytelevel(seq[1]) and seq[1].get("use_regex", True)):
        return "smollm"  # single digits, then the GPT-2 regex (the original SmolLM/SmolLM2 tokenizer.json)
    if (len(seq) == 2 and seq[0].get("type") == "Split" and _bytelevel(seq[1]) and not seq[1].get("use_regex", True)
            and (seq[0].get("pattern") or {}).get("Regex") in SPLIT_REGEXES):
        return SPLIT_REGEXES[seq[0]["pattern"]["Regex"]]
    raise GGUFExportError(
        f"{path}: field 'pre_tokenizer' is {json.dumps(pre)[:300]}; the GGUF writer supports ByteLevel (GPT-2 regex), "
        "digits + ByteLevel (SmolLM), and the Llama 3 / Qwen2 split regexes before ByteLevel")


def _merge_list(model: dict, path: Path) -> list[str]:
    merges = []
    for j, m in enumerate(model.get("merges") or []):
        if isinstance(m, str):
            merges.append(m)
        elif isinstance(m, (list, tuple)) and len(m) == 2:
            merges.append(f"{m[0]} {m[1]}")
        else:
            raise GGUFExportError(f"{path}: model.merges[{j}] is {m!r}, expected 'a b' or [a, b]")
    return merges


def _space_prefix(tj: dict) -> bool:
    """Whether a SentencePiece-style tokenizer puts '▁' before the text (llama.cpp's add_space_prefix)."""
    def walk(d):
        if isinstance(d, dict):
            yield d
            for v in d.get("normalizers") or d.get("pretokenizers") or []:
                yield from walk(v)
    parts = list(walk(tj.get("normalizer"))) + list(walk(tj.get("pre_tokenizer")))
    return any(p.get("type") == "Prepend" and p.get("prepend") == "▁" for p in parts) or any(
        p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") == "always" and p.get("add_prefix_space", True)
        for p in parts)


def tokenizer_meta(model_dir: Path, vocab_size: int) -> TokenizerMeta:
    """Read ``tokenizer.json`` (+ ``tokenizer_config.json``) into GGUF tokenizer facts."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    tj_path = model_dir / "tokenizer.json"
    tj = _load_json(tj_path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFExportError(f"{tj_path}: field 'model.type' is {model.get('type')!r}; only BPE is supported")
    spm = bool(model.get("byte_fallback"))
    pre = "default" if spm else _pre_tokenizer_name(tj, tj_path)

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
    merges = _merge_list(model, tj_path)
    # SentencePiece-style: llama.cpp merges the adjacent pair whose result scores highest, so a token's score
    # is minus the rank of the first merge that makes it (tokens no merge makes never come from a merge)
    rank = {}
    for r, m in enumerate(merges):
        rank.setdefault(m.replace(" ", "", 1), r)
    unk = model.get("unk_token")
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        t = by_id.get(i)
        if t is None:  # padding rows of the embedding matrix: no token maps here
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif spm and t == unk:
            types.append(TokenType.UNKNOWN)
        elif i in added and added[i].get("special"):
            types.append(TokenType.CONTROL)
        elif i in added:
            if spm:
                t = t.replace("▁", " ")  # llama.cpp expects user-defined SentencePiece tokens pre-normalised
            types.append(TokenType.USER_DEFINED)
        elif spm and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
        if t is not None:
            tokens.append(t)
        scores.append(-float(rank[t]) if t in rank else 0.0)

    tok = AutoTokenizer.from_pretrained(model_dir)
    probe = "hello"
    with_sp = tok(probe, add_special_tokens=True)["input_ids"]
    without = tok(probe, add_special_tokens=False)["input_ids"]
    add_bos = tok.bos_token_id is not None and len(with_sp) > len(without) and with_sp[0] == tok.bos_token_id
    add_eos = tok.eos_token_id is not None and len(with_sp) > len(without) and with_sp[-1] == tok.eos_token_id
    return TokenizerMeta(
        tokens=tokens, token_types=[int(t) for t in types], merges=[] if spm else merges, pre=pre,
        bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, unk_id=tok.unk_token_id, pad_id=tok.pad_token_id,
        add_bos=bool(add_bos), add_eos=bool(add_eos), model="llama" if spm else "gpt2",
        scores=scores if spm else None, add_space_prefix=spm and _space_prefix(tj),
        rstrip_special=any(a.get("special") and a.get("rstrip") for a in added.values()))


# ------------------------------------------------------------- quantisation

def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v / ffn_down get more bits in the _M mixes."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_qtype(gname: str, shape: tuple[int, ...], dtype: str, n_layer: int, tied: bool):
    """The ``GGMLQuantizationType`` llama.cpp's quantiser would pick for this tensor in the ``dtype`` mix."""
    from gguf import GGMLQuantizationType as Q

    ncols = shape[-1]
    if len(shape) < 2 or dtype == "f32" or gname.endswith("norm.weight"):
        return Q.F32
    if dtype == "f16":
        return Q.F16
    if dtype == "q8_0":
        return Q.Q8_0 if ncols % 32 == 0 else Q.F16
    base = {"q4_k_m": Q.Q4_K, "q5_k_m": Q.Q5_K}[dtype]
    m = re.match(r"blk\.(\d+)\.", gname)
    layer = int(m.group(1)) if m else 0
    if gname == "output.weight" or (tied and gname == "token_embd.weight"):
        q = Q.Q6_K if ncols % 256 == 0 else Q.Q8_0
    elif (".attn_v." in gname or ".attn_qkv." in gname or ".ffn_down." in gname) and _use_more_bits(layer, n_layer):
        q = Q.Q6_K
    else:
        q = base
    if ncols % 256:  # llama.cpp's fallbacks for rows that are not whole 256-blocks
        q = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}.get(q, q)
    return q if ncols % 32 == 0 else Q.F16


_GGML = None


def _ggml_quantize(arr: np.ndarray, qtype) -> np.ndarray:
    """Quantise rows with llama.cpp's own kernels (``ggml_quantize_chunk`` in the xllamacpp wheel)."""
    import ctypes
    import importlib.util

    import gguf

    global _GGML
    if _GGML is None:
        spec = importlib.util.find_spec("xllamacpp")
        libs = sorted(Path(spec.origin).parent.glob("xllamacpp*.so")) if spec and spec.origin else []
        if not libs:
            raise GGUFExportError("K-quant types (q4_k_m, q5_k_m) use llama.cpp's quantiser from the xllamacpp wheel, "
                                  "which is not installed: pip install xllamacpp (or export f16 / q8_0)")
        f = ctypes.CDLL(str(libs[0])).ggml_quantize_chunk
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_void_p]
        _GGML = f
    src = np.ascontiguousarray(arr.reshape(-1, arr.shape[-1]), dtype=np.float32)
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros((src.shape[0], src.shape[1] // block * nbytes), dtype=np.uint8)
    n = _GGML(int(qtype), src.ctypes.data, out.ctypes.data, 0, src.shape[0], src.shape[1], None)
    if n != out.nbytes:
        raise GGUFExportError(f"ggml_quantize_chunk wrote {n} bytes, expected {out.nbytes}")
    return out.reshape(*arr.shape[:-1], out.shape[-1])


def encode_tensor(arr: np.ndarray, qtype) -> tuple[np.ndarray, Any]:
    """``(data, raw_dtype)`` for ``GGUFWriter.add_tensor``."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    if qtype == Q.F32:
        return np.ascontiguousarray(arr, dtype=np.float32), None
    if qtype == Q.F16:
        return np.ascontiguousarray(arr, dtype=np.float16), None
    if qtype == Q.Q8_0:
        return gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), Q.Q8_0), Q.Q8_0
    return _ggml_quantize(arr, qtype), qtype


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


def _layer_order(name: str) -> tuple:
    m = re.search(r"\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def _transform(cfg: dict, arch: Arch, inverse: bool = False) -> Callable[[str, np.ndarray], np.ndarray]:
    """HF layout -> GGUF layout of one tensor (Llama's Q/K row order, Gemma's norm offset), or back."""
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head

    def f(gname: str, arr: np.ndarray) -> np.ndarray:
        if arch.permute_qk and (".attn_q." in gname or ".attn_k." in gname):
            heads = n_head if ".attn_q." in gname else n_kv
            arr = unpermute_rope(arr, heads) if inverse else permute_rope(arr, heads)
        if arch.norm_shift and gname.endswith("norm.weight"):
            arr = arr - arch.norm_shift if inverse else arr + arch.norm_shift
        return arr
    return f


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_rope`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_names(model_dir: Path, cfg: dict, arch: Arch, names: list[str]) -> dict[str, str]:
    """HF tensor name -> GGUF name, for the tensors the GGUF stores."""
    import gguf

    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf), cfg["num_hidden_layers"])
    tied = arch.always_tied or bool(cfg.get("tie_word_embeddings"))
    out = {}
    for hf_name in names:
        if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and tied):
            continue  # recomputed from the RoPE metadata / the output reuses token_embd
        gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise GGUFExportError(f"{model_dir}: tensor {hf_name!r} has no GGUF name for model_type "
                                  f"{cfg.get('model_type')!r} (gguf arch {arch.gguf.lower()})")
        out[hf_name] = gname
    return out


def gguf_tensors(model_dir: Path, cfg: dict, arch: Arch, cfg_path: Path):
    """``(gguf_name, array)`` for every weight, transformed as llama.cpp expects, in layer order."""
    tensors = dict(_iter_tensors(model_dir))
    tied = arch.always_tied or bool(cfg.get("tie_word_embeddings"))
    if tied and "lm_head.weight" in tensors and "model.embed_tokens.weight" in tensors:
        if not np.array_equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]):
            raise GGUFExportError(f"{cfg_path}: the output layer is tied to the embeddings for this model, "
                                  "but lm_head differs from embed_tokens")
    to_gguf = _transform(cfg, arch)
    for hf_name, gname in sorted(_gguf_names(model_dir, cfg, arch, list(tensors)).items(), key=lambda kv: _layer_order(kv[0])):
        yield gname, to_gguf(gname, tensors[hf_name])


def dequantized_model(model_dir: str | Path, gguf_path: str | Path):
    """The merged HF model with every weight replaced by the GGUF's (dequantised, transformed back): the exact
    weights llama.cpp computes with, in transformers, to tell conversion errors from quantisation error."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    cfg = _load_json(model_dir / "config.json")
    arch = arch_of(cfg, model_dir / "config.json")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stored = {t.name: t for t in gguf.GGUFReader(str(gguf_path)).tensors}
    from_gguf = _transform(cfg, arch, inverse=True)
    params = model.state_dict()
    with torch.no_grad():
        for hf_name, gname in _gguf_names(model_dir, cfg, arch, list(params)).items():
            t = stored[gname]
            arr = gguf.quants.dequantize(t.data, t.tensor_type).reshape(params[hf_name].shape)
            params[hf_name].copy_(torch.from_numpy(from_gguf(gname, np.array(arr, dtype=np.float32))))
    return model


# long: the conversion in file order (metadata, tokenizer, each tensor with its arch rule, write); a table drives it
def write_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    *,
    dtype: str = "f16",
    chat_template: str | None = None,
    name: str | None = None,
    progress: bool = True,
    add_bos: bool | None = None,
) -> Path:
    """Write ``model_dir`` (a merged HF folder of an architecture in :data:`ARCHS`) to ``out_path`` as GGUF.

    ``chat_template`` (Jinja) is stored as ``tokenizer.chat_template``; pass
    the serving form of the training template.  ``add_bos`` overrides
    ``tokenizer.ggml.add_bos_token`` (default: what the HF tokenizer does).
    Returns ``out_path``.
    """
    import gguf
    from tqdm import tqdm

    if dtype not in DTYPES:
        raise GGUFExportError(f"dtype {dtype!r} not in {DTYPES}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg_path = model_dir / "config.json"
    cfg = _load_json(cfg_path)
    arch = arch_of(cfg, cfg_path)

    n_layer, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    hidden, vocab_size = cfg["hidden_size"], cfg["vocab_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    tmeta = tokenizer_meta(model_dir, vocab_size)

    name = str(name or cfg.get("_model_name_or_path") or model_dir.name)
    if arch.gguf == "PHI3":
        # llama.cpp strips the whitespace after special tokens (as Phi-3's tokenizer.json says) only for a model
        # whose general.name contains "phi3" / "phi-3": name it so exactly when this tokenizer does that
        name = re.sub(r"(?i)phi-?3", "phi 3", name) + (" (phi3)" if tmeta.rstrip_special else "")
    w = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf)])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_file_type(int(getattr(gguf.LlamaFileType, {"f32": "ALL_F32", "f16": "MOSTLY_F16"}.get(dtype, f"MOSTLY_{dtype.upper()}"))))
    if dtype not in ("f32", "f16"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(int(cfg.get("max_position_embeddings") or 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or n_head)
    w.add_rope_dimension_count(int(head_dim * float(cfg.get("partial_rotary_factor", 1.0))))
    if head_dim != hidden // n_head or arch.norm_shift:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps") or 1e-6))
    w.add_vocab_size(vocab_size)
    ctx = Ctx(cfg, cfg_path, w, head_dim)
    arch.hparams(ctx)

    w.add_tokenizer_model(tmeta.model)
    w.add_tokenizer_pre(tmeta.pre)
    w.add_token_list(tmeta.tokens)
    if tmeta.scores is not None:
        w.add_token_scores(tmeta.scores)
    w.add_token_types(tmeta.token_types)
    if tmeta.merges:
        w.add_token_merges(tmeta.merges)
    for setter, value in ((w.add_bos_token_id, tmeta.bos_id), (w.add_eos_token_id, tmeta.eos_id),
                          (w.add_unk_token_id, tmeta.unk_id), (w.add_pad_token_id, tmeta.pad_id)):
        if value is not None:
            setter(int(value))
    w.add_add_bos_token(tmeta.add_bos if add_bos is None else bool(add_bos))
    w.add_add_eos_token(tmeta.add_eos)
    w.add_add_space_prefix(tmeta.add_space_prefix)
    if chat_template:
        w.add_chat_template(chat_template)

    tied = arch.always_tied or bool(cfg.get("tie_word_embeddings"))
    tensors = list(gguf_tensors(model_dir, cfg, arch, cfg_path)) + ctx.extra
    for gname, arr in tqdm(tensors, desc=f"GGUF {dtype}", disable=not progress, unit="tensor"):
        data, raw = encode_tensor(arr, tensor_qtype(gname, arr.shape, dtype, n_layer, tied))
        w.add_tensor(gname, data, raw_dtype=raw)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    return out_path


write_llama_gguf = write_gguf  # the name before other architectures were supported


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
