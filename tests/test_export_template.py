"""Fast tier: the Ollama Modelfile TEMPLATE reproduces the training chat template.

Uses the embedded SmolLM2 tokenizer (its ChatML template inserts a default
system prompt when a conversation has none).  No model weights are loaded.
The other template families are covered by ``test_export_families.py``.
"""
from __future__ import annotations

import dataclasses

import pytest

from train.modelfile import (
    PARITY_CONVERSATIONS,
    TemplateError,
    chatml_spec,
    derive_spec,
    go_template,
    modelfile_text,
    ollama_values,
    parse_modelfile,
    render_go,
    render_ollama,
    template_parity,
)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from curate.models import materialize_chat_model

    return AutoTokenizer.from_pretrained(materialize_chat_model())


def _render(tok, template=None):
    def r(msgs):
        kw = {"chat_template": template} if template else {}
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **kw)
    return r


def test_spec_reads_default_system_prompt(tok):
    spec = derive_spec(_render(tok))
    assert spec.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert spec.lead == ""


def test_go_template_matches_training_template(tok):
    tmpl = go_template(derive_spec(_render(tok)))
    results = template_parity(tmpl, _render(tok))
    kinds = {(any(m["role"] == "system" for m in r.conversation), sum(m["role"] == "user" for m in r.conversation) > 1)
             for r in results}
    assert kinds == {(False, False), (True, False), (False, True), (True, True)}  # all four cases covered
    assert all(r.ok for r in results), [r.diff() for r in results if not r.ok]
    # spot-check one exact string, so parity is not two equal wrong renderings
    single = render_ollama(tmpl, [{"role": "user", "content": "Hi"}])
    assert single == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("break_it", [
    lambda t: t.replace("{{ .Role }}\n", "{{ .Role }}"),                       # newline after the role missing
    lambda t: t.replace("trained by Hugging Face", "trained by HF"),           # different default system prompt
    lambda t: t.replace('{{ if and .Messages (ne (index .Messages 0).Role "system") }}', "{{ if false }}"),  # no default
    lambda t: t.replace("<|im_end|>\n{{ end }}<|im_start|>assistant", "<|im_end|>{{ end }}<|im_start|>assistant"),
    lambda t: t[: -len("<|im_start|>assistant\n")],                            # no generation prompt
])
def test_wrong_template_is_caught(tok, break_it):
    good = go_template(derive_spec(_render(tok)))
    bad = break_it(good)
    assert bad != good
    results = template_parity(bad, _render(tok))
    assert not all(r.ok for r in results)
    assert "first difference" in next(r for r in results if not r.ok).diff()


def test_wrong_spec_is_caught(tok):
    spec = derive_spec(_render(tok))
    bad = go_template(dataclasses.replace(spec, default_system="You are a helpful assistant."))
    failed = [r for r in template_parity(bad, _render(tok)) if not r.ok]
    # exactly the conversations without a system message differ
    assert failed and all(r.conversation[0]["role"] != "system" for r in failed)


def test_custom_training_templates(tok):
    """A run whose template has no default system prompt, or uses generation markers, still matches."""
    no_default = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    spec = derive_spec(_render(tok, no_default))
    assert spec.default_system is None
    assert all(r.ok for r in template_parity(go_template(spec), _render(tok, no_default)))

    from train.export import serving_template

    marked = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
              "{%- generation -%}{{ m['content'] + '<|im_end|>' }}{%- endgeneration -%}{{ '\n' }}"
              "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    served = serving_template(marked)
    assert "{%- generation" not in served and "endgeneration" not in served
    for conv in PARITY_CONVERSATIONS:
        assert _render(tok, served)(conv) == _render(tok, marked)(conv)
    spec = derive_spec(_render(tok, marked))
    assert all(r.ok for r in template_parity(go_template(spec), _render(tok, marked)))


def test_other_family_is_recognised_and_unknown_one_refused(tok):
    llama3ish = ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] "
                 "+ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
                 "<|end_header_id|>\n\n' }}{% endif %}")
    spec = derive_spec(_render(tok, llama3ish))
    assert spec.family.name == "llama3-instruct" and spec.default_system is None
    assert all(r.ok for r in template_parity(go_template(spec), _render(tok, llama3ish), spec=spec))
    alpaca = ("{% for m in messages %}{{ '### ' + m['role'] + ':\n' + m['content'] + '\n\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}")
    with pytest.raises(TemplateError, match="fits none of the Ollama template families"):
        derive_spec(_render(tok, alpaca))


def test_modelfile_content_and_ollama_parsing(tok):
    spec = derive_spec(_render(tok))
    tmpl = go_template(spec)
    text = modelfile_text(spec, tmpl, params={"num_ctx": 2048, "temperature": 0.2}, header="made by a test")
    assert text.splitlines()[0] == "# made by a test"
    cmds = parse_modelfile(text)
    assert cmds[0] == ("model", "./model.gguf")
    d = dict(cmds)
    assert d["template"] == tmpl  # Ollama reads back exactly what we rendered
    assert [v for k, v in cmds if k == "stop"] == ["<|im_end|>", "<|im_start|>"]
    assert d["num_ctx"] == "2048" and d["temperature"] == "0.2"
    with pytest.raises(TemplateError, match='"""'):
        modelfile_text(spec, 'x """ y')


def test_parse_modelfile_rules():
    cmds = parse_modelfile('# c\nFROM ./m.gguf\nSYSTEM   "two words"  \nTEMPLATE """a\n  b """\nPARAMETER stop "<|x|>"\n')
    assert cmds == [("model", "./m.gguf"), ("system", "two words"), ("template", "a\n  b "), ("stop", "<|x|>")]
    with pytest.raises(TemplateError, match="no FROM"):
        parse_modelfile("SYSTEM hi\n")
    with pytest.raises(TemplateError, match="end of file"):
        parse_modelfile('FROM x\nTEMPLATE """never closed\n')


def test_go_renderer_subset():
    vals = ollama_values([{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                          {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}])
    # Ollama keeps system messages in .Messages, sets .System, and merges consecutive same-role turns
    assert vals["System"] == "S" and [m.Role for m in vals["Messages"]] == ["system", "user", "assistant"]
    assert vals["Messages"][1].Content == "a\n\nb"
    t = ('{{- range $i, $m := .Messages }}{{ $i }}={{ $m.Role }}{{ if eq $i 0 }}!{{ else if eq .Role "user" }}?'
         '{{ else }}.{{ end }} {{ end -}}\n  |{{ len .Messages }}|{{ (index .Messages 1).Content }}|{{ .Nope }}'
         '|{{ or .Missing "dflt" }}|{{ and .System "yes" }}|{{ "{{" }}|{{/* comment */}}{{ not .Tools }}')
    assert render_go(t, vals) == '0=system! 1=user? 2=assistant. |3|a\n\nb|<no value>|dflt|yes|{{|true'
    with pytest.raises(TemplateError):
        render_go("{{ if .System }}unclosed", vals)
    with pytest.raises(TemplateError):
        render_go("{{ .Messages | len }}", vals)
    with pytest.raises(TemplateError, match="can't evaluate field"):
        render_go("{{ range .Messages }}{{ .Nope }}{{ end }}", vals)


def test_literal_braces_in_default_system_prompt(tok):
    spec = chatml_spec(default_system="Use {{ .System }} literally }}")
    tmpl = go_template(spec)
    out = render_ollama(tmpl, [{"role": "user", "content": "q"}])
    assert out.startswith("<|im_start|>system\nUse {{ .System }} literally }}<|im_end|>\n")
    assert dict(parse_modelfile(modelfile_text(spec, tmpl)))["template"] == tmpl
