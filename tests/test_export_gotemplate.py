"""Integration tier: the Modelfile TEMPLATE executed by Go's real ``text/template``.

A tiny Go program (standard library only) executes the template the way
Ollama's ``template.Execute`` does for a chat request (``missingkey=zero``;
``.Messages`` as pointers to a Message struct, system messages kept and joined
into ``.System``, consecutive same-role messages merged) and prints the
prompts.  They must equal the training template's renderings and our Python
renderer's.  Needs a Go toolchain (Debian ``golang-go``); skipped without one.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from train.modelfile import PARITY_CONVERSATIONS, derive_spec, go_template, render_ollama

pytestmark = pytest.mark.integration

GO_MAIN = r'''
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role      string
	Content   string
	Thinking  string
	ToolName  string
	Images    []string
	ToolCalls []string
}

type Case struct {
	Template string              `json:"template"`
	Messages []map[string]string `json:"messages"`
}

func collate(msgs []map[string]string) (string, []*Message) {
	var system []string
	var out []*Message
	for _, m := range msgs {
		if m["role"] == "system" {
			system = append(system, m["content"])
		}
		if len(out) > 0 && out[len(out)-1].Role == m["role"] && m["role"] != "tool" {
			out[len(out)-1].Content += "\n\n" + m["content"]
		} else {
			out = append(out, &Message{Role: m["role"], Content: m["content"]})
		}
	}
	return strings.Join(system, "\n\n"), out
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	var results []string
	for _, c := range cases {
		tmpl, err := template.New("").Option("missingkey=zero").Parse(c.Template)
		if err != nil {
			panic(err)
		}
		system, msgs := collate(c.Messages)
		var b strings.Builder
		err = tmpl.Execute(&b, map[string]any{
			"System": system, "Messages": msgs, "Tools": nil, "Response": "", "Think": false,
			"IsThinkSet": false, "Query": "", "Document": "", "Instruction": "",
		})
		if err != nil {
			panic(err)
		}
		results = append(results, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(results)
}
'''


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (apt-get install golang-go) to execute the template with text/template")
    d = tmp_path_factory.mktemp("gotmpl")
    (d / "main.go").write_text(GO_MAIN)
    env = {"GOCACHE": str(d / "cache"), "GOPATH": str(d / "gopath"), "GOFLAGS": "-mod=mod", "GO111MODULE": "off",
           "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(d)}
    p = subprocess.run([go, "build", "-o", str(d / "render"), str(d / "main.go")], env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr

    def render(template: str, conversations: list[list[dict]]) -> list[str]:
        cases = [{"template": template, "messages": c} for c in conversations]
        r = subprocess.run([str(d / "render")], input=json.dumps(cases), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    return render


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from curate.models import materialize_chat_model

    return AutoTokenizer.from_pretrained(materialize_chat_model())


def test_go_text_template_renders_training_prompts(go_render, tok):
    train = lambda c: tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)  # noqa: E731
    template = go_template(derive_spec(train))
    convs = PARITY_CONVERSATIONS + [
        [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
    ]
    got = go_render(template, convs)
    for conv, g in zip(convs, got):
        assert g == render_ollama(template, conv)  # our Python renderer agrees with Go
    for conv, g in zip(PARITY_CONVERSATIONS, got):
        assert g == train(conv)  # and Go reproduces training


def test_go_and_python_renderers_agree_on_the_subset(go_render):
    t = ('{{- range $i, $m := .Messages }}{{ $i }}={{ $m.Role }}{{ if eq $i 0 }}!{{ else if eq .Role "user" }}?'
         '{{ else }}.{{ end }} {{ end -}}\n  |{{ len .Messages }}|{{ (index .Messages 1).Content }}|{{ .Nope }}'
         '|{{ or .Missing "dflt" }}|{{ and .System "yes" }}|{{ "{{" }}|{{/* comment */}}{{ not .Tools }}'
         '|{{ if and .Messages (ne (index .Messages 0).Role "system") }}nosys{{ else }}sys{{ end }}'
         '|{{ slice .System 0 1 }}|{{ range .Tools }}x{{ else }}none{{ end }}')
    conv = [{"role": "system", "content": "S1"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"}]
    [go_out] = go_render(t, [conv])
    assert go_out == render_ollama(t, conv)


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"])
def test_go_text_template_renders_each_familys_training_prompts(go_render, family):
    """Every family's TEMPLATE (Ollama's form for it), executed by Go, gives the training prompt after the BOS
    token Ollama adds (contents stripped where the training template strips them)."""
    from families import build_tokenizer

    from train.export import bos_text, renderer
    from train.modelfile import serving_conversations, template_parity

    tok = build_tokenizer(family)
    render = renderer(tok)
    spec = derive_spec(render, bos_text(tok, render))
    template = go_template(spec)
    convs = serving_conversations(PARITY_CONVERSATIONS, spec)
    got = go_render(template, convs)
    for r, g in zip(template_parity(template, render, convs, spec), got):
        assert g == r.got[len(spec.bos):]  # our Python renderer agrees with Go
        assert spec.bos + g == r.expected  # and Go reproduces training
