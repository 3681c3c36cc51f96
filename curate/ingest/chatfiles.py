"""Existing chat datasets → examples: OpenAI messages, ShareGPT, Alpaca.

Each item is detected on its own keys (a file may mix them), in ``.jsonl`` /
``.ndjson`` (streamed, ``loc`` = ``line N``) or ``.json`` (an array, or an
object holding one; ``loc`` = ``item N``):

* **OpenAI messages** — ``{"messages": [{"role", "content"}, …]}``. ``content``
  may be a string or a list of parts; ``text`` parts are joined, any other part
  type (image, audio …) rejects the item. Roles ``tool``/``function`` and
  assistant ``tool_calls`` are rejected (not supported for SFT here).
* **ShareGPT** — ``{"conversations": [{"from", "value"}, …]}`` with ``from``
  ``human|user`` → user, ``gpt|assistant|chatgpt|bing|bard|model`` → assistant,
  ``system`` → system.
* **Alpaca** — ``{"instruction", "input", "output"}``: user =
  instruction (+ blank line + input when non-empty), assistant = output;
  an optional ``system`` string becomes the system turn.
* **Prompt/completion** (TRL's format) — ``{"prompt", "completion"}``: two
  strings (user, assistant; an optional ``system`` string first), or two lists
  of chat turns (``prompt`` + ``completion`` read as OpenAI messages).

An optional ``label`` (string) is kept as the record's label; ``id`` goes to
``source.ref``. The conversation is validated as is (no trimming): an item
that breaks a message rule is a reject naming the rule and the turn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from ..example import Source
from .common import err_field, ReadOptions, Reject, iter_json_items, make_example

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "model": "assistant",
    "system": "system",
}
ITEM_KEYS = ("messages", "conversations", "instruction")  # any of these makes an item (and a .jsonl file) chat


def _openai(obj: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str | None, str | None]:
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        return None, "messages", f"messages must be a list, got {type(msgs).__name__}"
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return None, f"messages[{i}]", f"turn {i} must be an object with role/content"
        role = m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            return None, f"messages[{i}]", f"turn {i}: tool/function calls are not supported (role {role!r})"
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    return None, f"messages[{i}].content", f"turn {i}: content part of type {kind!r} is not supported (text only)"
            content = "\n".join(texts)
        out.append({"role": role, "content": content})
    return out, "messages", None


def _sharegpt(obj: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str | None, str | None]:
    conv = obj["conversations"]
    if not isinstance(conv, list):
        return None, "conversations", f"conversations must be a list, got {type(conv).__name__}"
    out = []
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        out.append({"role": "system", "content": obj["system"]})
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            return None, f"conversations[{i}]", f"turn {i} must be an object with 'from' and 'value'"
        role = SHAREGPT_ROLES.get(str(t["from"]).strip().lower())
        if role is None:
            return None, f"conversations[{i}].from", f"turn {i}: unknown speaker {t['from']!r} (expected human/gpt/system)"
        out.append({"role": role, "content": t["value"]})
    return out, "conversations", None


def _alpaca(obj: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str | None, str | None]:
    for k in ("instruction", "output"):
        if not isinstance(obj.get(k), str) or not obj[k].strip():
            return None, k, f"missing or empty {k!r}"
    inp = obj.get("input")
    if inp is not None and not isinstance(inp, str):
        return None, "input", f"'input' must be a string, got {type(inp).__name__}"
    user = obj["instruction"].strip() + (("\n\n" + inp.strip()) if inp and inp.strip() else "")
    out = []
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        out.append({"role": "system", "content": obj["system"]})
    out += [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
    return out, "output", None


def _prompt_completion(obj: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str | None, str | None]:
    prompt, completion = obj["prompt"], obj["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        return _openai({"messages": prompt + completion})
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return None, "prompt", ("prompt and completion must both be strings or both lists of chat turns, got "
                                f"{type(prompt).__name__} and {type(completion).__name__}")
    out = []
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        out.append({"role": "system", "content": obj["system"]})
    return out + [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], "completion", None


FORMATS = (("messages", "openai", _openai), ("conversations", "sharegpt", _sharegpt),
           ("instruction", "alpaca", _alpaca), ("completion", "prompt-completion", _prompt_completion))


def is_chat_item(keys: Any) -> bool:
    """Whether an item (or a table) with these keys/columns is one of the chat formats above."""
    keys = set(keys)
    return bool(keys & set(ITEM_KEYS)) or {"prompt", "completion"} <= keys


def item_example(obj: dict[str, Any], file: str, loc: str, opts: ReadOptions) -> Any:
    """One chat item (any format above) → an Example, or a Reject naming the format and the field."""
    hit = next(((fmt, conv) for key, fmt, conv in FORMATS if key in obj and (key != "completion" or "prompt" in obj)),
               None)
    if hit is None:
        return Reject(file, loc, f"unknown chat format: expected one of {list(ITEM_KEYS)} keys or prompt/completion, "
                                 f"got {sorted(obj)[:8]}")
    fmt, conv = hit
    msgs, fld, why = conv(obj)
    if why:
        return Reject(file, loc, f"{fmt}: {why}", fld)
    label = obj.get("label") if isinstance(obj.get("label"), str) and obj["label"].strip() else None
    ref = str(obj["id"]) if obj.get("id") not in (None, "") else ""
    out = make_example(msgs, Source("chat-file", file, loc, ref), opts, label=label, field_name=fld,
                       signals={"format": fmt})
    if isinstance(out, Reject):
        out.reason = f"{fmt}: {out.reason}"
    return out


def read_items(items: Iterable[tuple[str, Any, str | None]], file: str, opts: ReadOptions) -> Iterator[Any]:
    """Examples and rejects of ``(loc, object, error)`` items (:func:`~curate.ingest.common.iter_json_items`,
    or the rows of a table: :mod:`curate.ingest.tables`)."""
    for loc, obj, err in items:
        yield Reject(file, loc, err, err_field(err)) if err else item_example(obj, file, loc, opts)


def read(path: Path, opts: ReadOptions, display: str | None = None) -> Iterator[Any]:
    file = display or str(path)
    s = path.suffix.lower()
    if s not in (".jsonl", ".ndjson", ".json"):
        yield Reject(file, "file", f"unsupported chat file format {s!r} (use .jsonl or .json)")
        return
    yield from read_items(iter_json_items(path, ITEM_KEYS), file, opts)
