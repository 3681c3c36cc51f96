"""The chat template we train and serve with, and the preflight that proves it.

SmolLM2's ChatML template has no ``{% generation %}`` markers, which TRL needs
for ``assistant_only_loss``. :data:`CHATML_WITH_GENERATION` is the same
template with the assistant content (and its ``<|im_end|>``) wrapped in
generation markers; it renders byte-identical text — including SmolLM2's
default system prompt when a conversation has none. :func:`preflight` checks
that on real snapshot rows and that the serving prompt (``add_generation_prompt``)
is an exact prefix, in text and in token ids, of what training saw.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CHATML_WITH_GENERATION = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


_GEN_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


def serving_template(train_template: str) -> str:
    """The training template without ``{% generation %}`` markers (same rendering).

    The markers only tell transformers which tokens are assistant tokens; Jinja
    engines used for serving (llama.cpp's, Ollama's importer) do not know the
    tag.  Each is replaced by an always-true ``if`` keeping its whitespace
    control, so the rendered text is identical.
    """
    return _GEN_TAG.sub(lambda m: "{%" + m.group(1) + (" endif " if m.group(2) else " if true ") + m.group(3) + "%}",
                        train_template)


class TemplateMismatch(RuntimeError):
    pass


def is_chatml(tokenizer) -> bool:
    return "<|im_start|>" in (tokenizer.chat_template or "") and "<|im_start|>" in tokenizer.get_vocab()


def training_template(tokenizer) -> str:
    """The template to train with: ours for ChatML models, the model's own if it already has markers."""
    tpl = tokenizer.chat_template or ""
    if "{% generation %}" in tpl:
        return tpl
    if is_chatml(tokenizer):
        return CHATML_WITH_GENERATION
    raise TemplateMismatch(
        "the base model's chat template has no {% generation %} markers and is not ChatML; "
        "give a template with markers (assistant-only loss needs them)"
    )


def render(tokenizer, messages, template: str, **kw) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kw)


def marked_example(tokenizer, messages, template: str) -> str:
    """One rendered example with the trained (assistant) spans shown as ⟦…⟧."""
    out = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
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


def preflight(tokenizer, rows: Sequence[dict[str, Any]], train_template: str, serve_template: str,
              base_template: str | None = None, n: int = 8) -> str:
    """Raise :class:`TemplateMismatch` unless serving renders prompts exactly as training did.

    Checks on the first ``n`` rows: (1) the serving template renders the whole
    conversation identically to the training template; (2) the base model's own
    template (if given) renders it identically too (so the base model in
    evaluation sees the same prompt); (3) the serving prompt for the last
    assistant turn is a prefix of the training text and its token ids are a
    prefix of the training ids; (4) some tokens are trained.
    Returns the marked rendering of the first row for printing.
    """
    for i, row in enumerate(list(rows)[:n]):
        msgs = list(row["messages"])
        full_t = render(tokenizer, msgs, train_template)
        full_s = render(tokenizer, msgs, serve_template)
        if full_t != full_s:
            raise TemplateMismatch(f"row {i}: serving template renders the conversation differently from training:\n"
                                   f"train: {full_t!r}\nserve: {full_s!r}")
        if base_template:
            full_b = render(tokenizer, msgs, base_template)
            if full_b != full_t:
                raise TemplateMismatch(f"row {i}: the base model's template renders differently from ours:\n"
                                       f"ours: {full_t!r}\nbase: {full_b!r}")
        prompt = render(tokenizer, msgs[:-1], serve_template, add_generation_prompt=True)
        if not full_t.startswith(prompt):
            raise TemplateMismatch(f"row {i}: the serving prompt is not a prefix of the training text:\n"
                                   f"prompt: {prompt!r}\ntrain:  {full_t!r}")
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(full_t, add_special_tokens=False)["input_ids"]
        if f_ids[: len(p_ids)] != p_ids:
            raise TemplateMismatch(f"row {i}: the serving prompt tokenizes differently from the same text in training")
        out = tokenizer.apply_chat_template(msgs, chat_template=train_template, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        if not any(out["assistant_masks"]):
            raise TemplateMismatch(f"row {i}: no assistant tokens are marked for training")
    return marked_example(tokenizer, list(rows)[0]["messages"], train_template)
