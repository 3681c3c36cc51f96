"""The chat template we train and serve with — the base model's own — and the assistant spans in it.

Rules:

* Training renders every conversation with the base model's own chat template, unchanged: no other
  family's system prompt is injected and the exported model serves with the same template.
* The trained tokens are each assistant turn, from the end of its generation prompt to the end of the
  turn's closing text (the end-of-turn token: ``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``</s>``,
  ``<|end|>``...), so the model learns to stop. Where the template has ``{% generation %}`` markers, their
  spans are used; otherwise the spans are found by render-and-diff (:func:`assistant_spans`): the prompt
  rendered up to the turn with ``add_generation_prompt`` must be a prefix of the whole conversation, the
  turn's text must follow it, and the closing text is what the template renders after the turn when the
  conversation ends there. A template where any of these fails is refused naming the turn.
* A template that refuses the system role (Gemma 2) gets the system text merged into the first user
  turn, as Gemma 3's own template does (:func:`conform_messages`).

:func:`preflight` checks all of this on real snapshot rows, plus that the serving prompt is an exact
prefix, in text and in token ids, of what training saw.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Sequence

from .packing import IGNORE

_GEN_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


class TemplateMismatch(RuntimeError):
    pass


def has_generation_markers(template: str) -> bool:
    return bool(_GEN_TAG.search(template or ""))


def serving_template(train_template: str) -> str:
    """The training template without ``{% generation %}`` markers (same rendering).

    The markers only tell transformers which tokens are assistant tokens; Jinja engines used for serving
    (llama.cpp's, Ollama's importer) do not know the tag. Each is replaced by an always-true ``if`` keeping
    its whitespace control, so the rendered text is identical. A template without markers is returned as is.
    """
    return _GEN_TAG.sub(lambda m: "{%" + m.group(1) + (" endif " if m.group(2) else " if true ") + m.group(3) + "%}",
                        train_template)


def training_template(tokenizer) -> str:
    """The template to train with: the base model's own. A model without one cannot be trained as a chat model."""
    tpl = tokenizer.chat_template
    if isinstance(tpl, dict):  # several named templates: the default one renders chat
        tpl = tpl.get("default")
    if not tpl:
        raise TemplateMismatch(f"the base model's tokenizer ({tokenizer.name_or_path}) has no chat template; "
                               f"use an instruct/chat model or add a chat_template to its tokenizer_config.json")
    return tpl


def render(tokenizer, messages, template: str, **kw) -> str:
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False, **kw)


@functools.lru_cache(maxsize=32)
def _accepts_system(tokenizer, template: str) -> bool:
    try:
        render(tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], template)
        return True
    except Exception:  # noqa: BLE001 — jinja's raise_exception (TemplateError) or a template bug
        return False


def conform_messages(tokenizer, messages: Sequence[dict[str, Any]], template: str) -> list[dict[str, Any]]:
    """The conversation as the template accepts it: a leading system turn is merged into the first user turn
    (``system + "\\n\\n" + user``) when the template refuses the system role."""
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0].get("role") == "system" and not _accepts_system(tokenizer, template):
        sys_text = msgs.pop(0)["content"]
        if msgs and msgs[0].get("role") == "user":
            msgs[0]["content"] = f"{sys_text}\n\n{msgs[0]['content']}"
        else:
            msgs.insert(0, {"role": "user", "content": sys_text})
    return msgs


def _safe_render(tokenizer, messages, template: str, what: str, **kw) -> str:
    try:
        return render(tokenizer, messages, template, **kw)
    except Exception as e:  # noqa: BLE001 — surface the template's own message
        raise TemplateMismatch(f"the chat template cannot render {what}: {type(e).__name__}: {e}") from None


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def assistant_spans(tokenizer, messages: Sequence[dict[str, Any]], template: str) -> tuple[str, list[tuple[int, int]]]:
    """(training text, [(start, end) character spans of the trained assistant turns]) by render-and-diff.

    Normally the training text is the whole conversation rendered, and every assistant turn is trained. A
    template that renders the conversation differently from its own prompts (Mistral's drops the system text
    unless the conversation ends with a user turn) cannot be trained turn by turn and served alike: then the
    training text is the serving prompt of the last assistant turn plus that turn (earlier turns are context)."""
    msgs = list(messages)
    full = _safe_render(tokenizer, msgs, template, "the conversation")
    turns = [i for i, m in enumerate(msgs) if m.get("role") == "assistant"]
    prompts = {i: _safe_render(tokenizer, msgs[:i], template, f"the prompt of assistant turn {i}",
                               add_generation_prompt=True) for i in turns}
    if all(full.startswith(prompts[i]) for i in turns):
        return full, [_turn_span(tokenizer, msgs, template, full, i, prompts[i]) for i in turns]
    i = turns[-1]
    completion = _completion(tokenizer, msgs, template, i, prompts[i])
    return prompts[i] + completion, [(len(prompts[i]), len(prompts[i]) + len(completion))]


def _turn_span(tokenizer, msgs, template: str, full: str, i: int, prompt: str) -> tuple[int, int]:
    """Assistant turn ``i`` in ``full``: from the end of its prompt to the end of its closing text."""
    where = f"assistant turn {i}"
    through = _safe_render(tokenizer, msgs[: i + 1], template, f"the conversation ending at {where}")
    content = str(msgs[i].get("content") or "").strip()
    at = full.find(content, len(prompt))
    own = through.rfind(content) if through.startswith(prompt) else -1
    if at < 0 or own < len(prompt):
        raise TemplateMismatch(f"{where} could not be located: its text does not follow its prompt in the rendering")
    end = at + len(content)
    return len(prompt), end + len(_closing(tokenizer, msgs[: i + 1], template, content, through, full[end:]))


def _closing(tokenizer, msgs, template: str, content: str, through: str, rest: str) -> str:
    """The turn's closing text (its end-of-turn token): what the template renders after the turn's text both
    when the conversation ends there and when it goes on (so a final eos the template appends is not part of
    it), in whole tokens, trailing space cut."""
    tail = through[through.rfind(content) + len(content):]
    more = _safe_render(tokenizer, [*msgs, {"role": "user", "content": "?"}], template, "a continued conversation")
    common = _common_prefix(_common_prefix(tail, rest), more[more.rfind(content) + len(content):])
    ends = [0]
    pos = 0
    for t in tokenizer(tail, add_special_tokens=False)["input_ids"]:  # token boundaries of the tail
        pos += len(tokenizer.decode([t]))
        ends.append(pos)
    cut = max((e for e in ends if e <= len(common) and tail[:e] == common[:e]), default=0)
    return tail[:cut].rstrip()


def _completion(tokenizer, msgs, template: str, i: int, prompt: str) -> str:
    """The text the template renders for assistant turn ``i`` after its serving prompt: anchored on the text of
    the turn before it, the rendering ending at turn ``i`` must continue the prompt's ending."""
    where = f"assistant turn {i}"
    through = _safe_render(tokenizer, msgs[: i + 1], template, f"the conversation ending at {where}")
    anchor = str(msgs[i - 1].get("content") or "").strip() if i else ""
    a, b = prompt.rfind(anchor), through.rfind(anchor)
    tail_p, tail_t = prompt[a + len(anchor):], through[b + len(anchor):]
    if not anchor or a < 0 or b < 0 or not tail_t.startswith(tail_p):
        raise TemplateMismatch(f"{where} could not be located: the template renders the conversation up to it "
                               f"differently from its serving prompt, and the turn's text could not be anchored")
    completion = tail_t[len(tail_p):].rstrip()
    if str(msgs[i].get("content") or "").strip() not in completion:
        raise TemplateMismatch(f"{where} could not be located: its text is not in the rendered turn {completion!r}")
    return completion


def tokenize_with_mask(tokenizer, messages: Sequence[dict[str, Any]], template: str) -> tuple[list[int], list[int]]:
    """(input ids, assistant mask) of one conversation with the template's trained tokens marked 1."""
    msgs = conform_messages(tokenizer, messages, template)
    if has_generation_markers(template):
        out = tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return list(out["input_ids"]), list(out["assistant_masks"])
    text, spans = assistant_spans(tokenizer, msgs, template)
    a, b = spans[-1] if spans else (len(text), len(text))
    # the last reply is tokenized on its own after its serving prompt, as the model generates it at inference
    # (a BPE merge across the boundary would otherwise give training other ids than serving); earlier replies
    # are context tokenized with the prompt, their tokens found by offset
    head = tokenizer(text[:a], add_special_tokens=False, return_offsets_mapping=len(spans) > 1)
    ids = list(head["input_ids"])
    mask = [0] * len(ids)
    if len(spans) > 1:
        mask = [int(any(x <= s < y for x, y in spans[:-1])) for s, _e in head["offset_mapping"]]
    for piece, m in ((text[a:b], 1), (text[b:], 0)):
        if piece:
            got = tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += got
            mask += [m] * len(got)
    return ids, mask


def stop_token_ids(tokenizer, template: str) -> list[int]:
    """Token ids that end an assistant turn: the eos token(s) and the special tokens of the template's closing
    text (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>``...), found by rendering a probe turn."""
    probe = conform_messages(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}],
                             template)
    ids = set()
    try:
        text, spans = assistant_spans(tokenizer, probe, template)
        closing = text[text.rfind("Yes", *spans[-1]) + 3: spans[-1][1]]
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        ids = {i for i in tokenizer(closing, add_special_tokens=False)["input_ids"] if i in special}
    except TemplateMismatch:
        pass
    eos = tokenizer.eos_token_id
    return sorted(ids | ({eos} if eos is not None else set()))


def labels_from_mask(ids: Sequence[int], mask: Sequence[int]) -> list[int]:
    return [t if m else IGNORE for t, m in zip(ids, mask)]


def marked_example(tokenizer, messages, template: str) -> str:
    """One rendered example with the trained (assistant) spans shown as ⟦…⟧."""
    ids, mask = tokenize_with_mask(tokenizer, messages, template)
    text, cur, span = [], [], None
    for tid, m in zip(ids, mask):
        if span is None or m != span:
            if cur:
                s = tokenizer.decode(cur)
                text.append(f"⟦{s}⟧" if span else s)
            cur, span = [], m
        cur.append(tid)
    if cur:
        s = tokenizer.decode(cur)
        text.append(f"⟦{s}⟧" if span else s)
    return "".join(text)


def _check_row(tokenizer, i: int, msgs: list[dict], train_template: str, serve_template: str,
               base_template: str | None) -> None:
    full_t = render(tokenizer, msgs, train_template)
    full_s = render(tokenizer, msgs, serve_template)
    if full_t != full_s:
        raise TemplateMismatch(f"row {i}: serving template renders the conversation differently from training:\n"
                               f"train: {full_t!r}\nserve: {full_s!r}")
    if base_template and render(tokenizer, msgs, base_template) != full_t:
        raise TemplateMismatch(f"row {i}: the base model's template renders differently from ours:\n"
                               f"ours: {full_t!r}\nbase: {render(tokenizer, msgs, base_template)!r}")
    prompt = render(tokenizer, msgs[:-1], serve_template, add_generation_prompt=True)
    if not has_generation_markers(train_template):
        full_t = assistant_spans(tokenizer, msgs, train_template)[0]  # the text training sees
    if not full_t.startswith(prompt):
        raise TemplateMismatch(f"row {i}: the serving prompt is not a prefix of the training text:\n"
                               f"prompt: {prompt!r}\ntrain:  {full_t!r}")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids, mask = tokenize_with_mask(tokenizer, msgs, train_template)
    if ids[: len(p_ids)] != p_ids:
        raise TemplateMismatch(f"row {i}: the serving prompt tokenizes differently from the same text in training")
    if not any(mask[len(p_ids):]):
        raise TemplateMismatch(f"row {i}: the last assistant turn has no token marked for training after its "
                               f"serving prompt")


def preflight(tokenizer, rows: Sequence[dict[str, Any]], train_template: str, serve_template: str,
              base_template: str | None = None, n: int = 8) -> str:
    """Raise :class:`TemplateMismatch` unless serving renders prompts exactly as training did.

    Checks on the first ``n`` rows: (1) the serving template renders the whole conversation identically to
    the training template; (2) the base model's own template (if given) renders it identically too (so the
    base model in evaluation sees the same prompt); (3) the serving prompt for the last assistant turn is a
    prefix of the training text and its token ids are a prefix of the training ids; (4) some tokens are
    trained after the serving prompt (the served reply). Returns the marked rendering of the first row for printing.
    """
    rows = list(rows)[:n]
    for i, row in enumerate(rows):
        _check_row(tokenizer, i, conform_messages(tokenizer, row["messages"], train_template), train_template,
                   serve_template, base_template)
    return marked_example(tokenizer, rows[0]["messages"], train_template)
