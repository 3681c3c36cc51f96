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

An optional ``label`` (string) is kept as the record's label; ``id`` goes to
``source.ref``. The conversation is validated as is (no trimming): an item
that breaks a message rule is a reject naming the rule and the turn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..example import Source
from .common import err_field, ReadOptions, Reject, iter_json_items, make_example

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "model": "assistant",
    "system": "system",
}
ITEM_KEYS = ("messages", "conversations", "instruction")


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


def read(path: Path, opts: ReadOptions, display: str | None = None) -> Iterator[Any]:
    file = display or str(path)
    s = path.suffix.lower()
    if s not in (".jsonl", ".ndjson", ".json"):
        yield Reject(file, "file", f"unsupported chat file format {s!r} (use .jsonl or .json)")
        return
    for loc, obj, err in iter_json_items(path, ITEM_KEYS):
        if err:
            yield Reject(file, loc, err, err_field(err))
            continue
        if "messages" in obj:
            fmt, conv = "openai", _openai
        elif "conversations" in obj:
            fmt, conv = "sharegpt", _sharegpt
        elif "instruction" in obj:
            fmt, conv = "alpaca", _alpaca
        else:
            yield Reject(file, loc, f"unknown chat format: expected one of {list(ITEM_KEYS)} keys, got {sorted(obj)[:8]}")
            continue
        msgs, fld, why = conv(obj)
        if why:
            yield Reject(file, loc, f"{fmt}: {why}", fld)
            continue
        label = obj.get("label") if isinstance(obj.get("label"), str) and obj["label"].strip() else None
        ref = str(obj["id"]) if obj.get("id") not in (None, "") else ""
        out = make_example(msgs, Source("chat-file", file, loc, ref), opts, label=label, field_name=fld,
                           signals={"format": fmt})
        if isinstance(out, Reject):
            out.reason = f"{fmt}: {out.reason}"
        yield out
