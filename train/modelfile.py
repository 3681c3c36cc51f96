"""Ollama Modelfile for an exported run, and a Python renderer of its Go template.

Owns:

* :func:`derive_spec` — reads, by rendering probe conversations through the
  *training* chat template, what the serving template must reproduce: which of
  Ollama's published template families (:data:`TEMPLATE_FAMILIES`: chatml,
  llama3-instruct, gemma-instruct, mistral-instruct, phi-3) its turn markers
  are, the BOS text, the default system prompt (or system preamble) it inserts,
  where the system text goes when the family has no system turn, and whether
  it strips message content;
* :func:`go_template` / :func:`modelfile_text` — the Ollama ``TEMPLATE`` (Go
  ``text/template``) and the whole ``Modelfile`` (``FROM ./model.gguf``,
  ``TEMPLATE``, ``PARAMETER stop …`` with the family's stop strings);
* :func:`render_go` — a renderer for the subset of Go ``text/template`` that
  chat templates use (text, ``{{- -}}`` trimming, comments, fields, variables,
  string literals, ``if / else if / else``, ``range`` with optional
  ``$i, $m :=``, and the functions ``and or not eq ne lt le gt ge len index
  slice``), with Ollama's data model (:func:`ollama_values` mirrors
  ``template.Execute``/``collate`` in Ollama: ``.Messages`` keeps system
  messages, ``.System`` is every system message joined by a blank line,
  consecutive messages of one role are merged);
* :func:`parse_modelfile` — Ollama's Modelfile parsing rules (values trimmed,
  ``\"\"\"…\"\"\"`` kept verbatim, non-printable characters other than space,
  tab and newlines dropped), so a test can prove the TEMPLATE Ollama reads is
  the one we rendered;
* :func:`template_parity` — the check that the Go template renders exactly
  what ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``
  renders (after the BOS Ollama adds), for single- and multi-turn conversations
  with and without a system prompt that end with a user turn.

Nothing here needs Ollama installed; see docs/export.md for what was and was
not verified against a real Ollama.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

class TemplateError(ValueError):
    """The training template cannot be expressed, or a Go template is invalid."""


# ------------------------------------------------------------ template families

@dataclass(frozen=True)
class Family:
    """One of Ollama's published chat templates (``template/<name>.gotmpl`` in Ollama), as turn markers.

    Fields:
        name: the Ollama template this family mirrors.
        turns: role -> (prefix, suffix) around a message's content; ``system`` is absent when the family has
            no system turn and puts the system text inside a user turn instead.
        gen: the generation prompt (opens the assistant turn).
        stop: Ollama's ``PARAMETER stop`` strings for the family (from its ``<name>.json``).
        system_in: ``first`` / ``last``: the user turn that carries the system text when there is no system turn.
    """

    name: str
    turns: dict[str, tuple[str, str]]
    gen: str
    stop: tuple[str, ...]
    system_in: str = ""


TEMPLATE_FAMILIES: tuple[Family, ...] = (
    Family("chatml", {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ("system", "user", "assistant")},
           "<|im_start|>assistant\n", ("<|im_end|>", "<|im_start|>")),
    Family("llama3-instruct", {r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>")
                               for r in ("system", "user", "assistant")},
           "<|start_header_id|>assistant<|end_header_id|>\n\n", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    Family("gemma-instruct", {"user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
                              "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n")},
           "<start_of_turn>model\n", ("<start_of_turn>", "<end_of_turn>"), system_in="first"),
    Family("mistral-instruct", {"user": ("[INST] ", "[/INST]"), "assistant": (" ", "</s>")}, "",
           ("[INST]", "[/INST]"), system_in="last"),
    Family("phi-3", {r: (f"<|{r}|>\n", "<|end|>\n") for r in ("system", "user", "assistant")},
           "<|assistant|>\n", ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>")),
)


@dataclass
class ChatSpec:
    """What the serving template must do, read off the training template by rendering probe conversations.

    Fields:
        family: the Ollama template family whose turn markers the training template uses.
        default_system: system text used when the first message is not a system message (``None``: no
            system turn then).
        bos: the BOS text the training template starts with; Ollama adds the BOS token itself
            (``tokenizer.ggml.add_bos_token`` is set), so the TEMPLATE leaves it out.
        lead: other text before the first turn.
        preamble: text the template writes at the start of the system turn, before the system content
            (Llama 3.x: ``Cutting Knowledge Date: …``).
        sep: between the system text and the user text when ``family.system_in`` puts it in a user turn.
        trims: the training template strips whitespace around message content, which a Go template cannot
            do: served prompts match for content without leading/trailing whitespace (checked that way).
    """

    family: Family
    default_system: str | None = None
    bos: str = ""
    lead: str = ""
    preamble: str = ""
    sep: str = ""
    trims: bool = False

    @property
    def stop(self) -> list[str]:
        return list(self.family.stop)


def chatml_spec(default_system: str | None = None, lead: str = "") -> ChatSpec:
    return ChatSpec(TEMPLATE_FAMILIES[0], default_system=default_system, lead=lead)


_PU, _PS, _PA, _PU2 = "\x00U1\x00", "\x00S\x00", "\x00A1\x00", "\x00U2\x00"


def _msgs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def derive_spec(render: Callable[[list[dict]], str], bos_token: str | None = None) -> ChatSpec:
    """Probe ``render`` (training template, generation prompt on) for a :class:`ChatSpec`.

    Raises :class:`TemplateError` naming the probe whose rendering fits none of
    :data:`TEMPLATE_FAMILIES`.
    """
    one = render(_msgs(("user", _PU)))
    fam = next((f for f in TEMPLATE_FAMILIES if one.endswith(f.turns["user"][0] + _PU + f.turns["user"][1] + f.gen)),
               None)
    if fam is None:
        raise TemplateError(
            f"training chat template fits none of the Ollama template families "
            f"({', '.join(f.name for f in TEMPLATE_FAMILIES)}): a single user turn renders as {one!r}")
    pu, tail = fam.turns["user"][0], fam.turns["user"][1] + fam.gen
    head = one[: -len(pu + _PU + tail)]
    bos = bos_token if bos_token and head.startswith(bos_token) and not any(
        p.startswith(bos_token) for p, _ in fam.turns.values()) else ""
    head = head[len(bos):]
    with_sys = render(_msgs(("system", _PS), ("user", _PU)))
    spec = ChatSpec(fam, bos=bos)
    if not with_sys.startswith(bos) or not with_sys.endswith(_PU + tail) or _PS not in with_sys:
        raise TemplateError(f"training template ({fam.name}): a system + user conversation renders as {with_sys!r}")
    before, after = with_sys[len(bos):].split(_PS)
    after = after[: -len(_PU + tail)]
    if "system" in fam.turns:
        ps, ss = fam.turns["system"]
        if not (ps in before and after == ss + pu):
            raise TemplateError(f"training template ({fam.name}) renders the system turn as {with_sys!r}")
        spec.lead, spec.preamble = before.split(ps, 1)
        if head != spec.lead:
            m = re.fullmatch(re.escape(spec.lead + ps + spec.preamble) + "(.*)" + re.escape(ss + pu), head + pu, re.S)
            if not m:
                raise TemplateError(f"training template ({fam.name}) inserts {head!r} before the first turn, which is "
                                    "not a system turn")
            spec.default_system = m.group(1)
    else:
        if not before.endswith(pu):
            raise TemplateError(f"training template ({fam.name}) puts the system text at {with_sys!r}")
        spec.lead, spec.sep = before[: -len(pu)], after
        if head != spec.lead:
            raise TemplateError(f"training template ({fam.name}): text before the first turn differs with "
                                f"({spec.lead!r}) and without ({head!r}) a system message")
    spaced = render(_msgs(("system", f" {_PS} "), ("user", f" {_PU} "), ("assistant", f" {_PA} "), ("user", _PU2)))
    spec.trims = any(f" {p} " not in spaced for p in (_PS, _PU, _PA))
    return spec


derive_chatml_spec = derive_spec  # the name from when only ChatML was supported


# -------------------------------------------------------------- emit template

def _go_literal(text: str) -> str:
    """Template source that prints ``text`` verbatim (text, or a quoted action if it has braces)."""
    if not text:
        return ""
    if "{{" in text or "}}" in text or "\r" in text:
        return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"
    return text


def _role_pattern(fam: Family) -> tuple[str, str, str] | None:
    """``(before, after, suffix)`` when every role's turn is ``before + role + after … suffix`` (print ``.Role``)."""
    if set(fam.turns) != {"system", "user", "assistant"} or len({s for _, s in fam.turns.values()}) != 1:
        return None
    before, _, after = fam.turns["user"][0].partition("user")
    ok = all(p == before + r + after for r, (p, _) in fam.turns.items())
    return (before, after, fam.turns["user"][1]) if ok else None


def go_template(spec: ChatSpec) -> str:
    """The Ollama TEMPLATE reproducing the training template with a generation prompt.

    Modelled on Ollama's own template for ``spec.family`` (it ranges over
    ``.Messages``, which keep the system message), with the lead text,
    default system prompt and system preamble the training template renders.
    The BOS text is left out: Ollama adds the BOS token.
    """
    fam, L = spec.family, _go_literal
    # No {{- }} trimming next to literal text: it would eat the newlines the training template renders.
    out = []
    first_not_system = '{{ if and .Messages (ne (index .Messages 0).Role "system") }}'
    if spec.default_system is not None:
        ps, ss = fam.turns["system"]
        out.append(first_not_system + L(spec.lead + ps + spec.preamble + spec.default_system + ss)
                   + ("{{ else }}" + L(spec.lead) if spec.lead else "") + "{{ end }}")
    else:
        out.append(L(spec.lead))
    pattern = _role_pattern(fam)
    if pattern and not spec.preamble:
        before, after, suffix = pattern
        out.append("{{ range .Messages }}" + L(before) + "{{ .Role }}" + L(after) + "{{ .Content }}" + L(suffix)
                   + "{{ end }}")
    else:
        sys_text = '{{ if and (eq (index $.Messages 0).Role "system") %s }}{{ (index $.Messages 0).Content }}' \
                   + L(spec.sep) + "{{ end }}"
        inline = {"first": sys_text % "(eq $i 1)", "last": sys_text % "(eq (len (slice $.Messages $i)) 1)"}
        (pu, su), (pa, sa) = fam.turns["user"], fam.turns["assistant"]
        body = ["{{ range $i, $m := .Messages }}"]
        if "system" in fam.turns:
            ps, ss = fam.turns["system"]
            body.append('{{ if eq .Role "system" }}' + L(ps + spec.preamble) + "{{ .Content }}" + L(ss) + "{{ else ")
        else:
            body.append("{{ ")
        body.append('if eq .Role "user" }}' + L(pu) + inline.get(fam.system_in, "") + "{{ .Content }}" + L(su)
                    + '{{ else if eq .Role "assistant" }}' + L(pa) + "{{ .Content }}" + L(sa) + "{{ end }}{{ end }}")
        out.append("".join(body))
    out.append(L(fam.gen))
    return "".join(out)


def _param_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def modelfile_text(
    spec: ChatSpec,
    template: str | None = None,
    *,
    gguf_name: str = "model.gguf",
    params: dict[str, Any] | None = None,
    header: str = "",
) -> str:
    """The Modelfile: FROM, TEMPLATE (triple-quoted, verbatim) and PARAMETER lines."""
    template = go_template(spec) if template is None else template
    if '"""' in template:
        raise TemplateError('the Go template contains """, which a Modelfile cannot quote')
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append(f"FROM ./{gguf_name}")
    lines.append(f'TEMPLATE """{template}"""')
    for s in spec.stop:
        lines.append(f"PARAMETER stop {_param_value(s)}")
    for k, v in (params or {}).items():
        lines.append(f"PARAMETER {k} {_param_value(v)}")
    return "\n".join(lines) + "\n"



# ------------------------------------------------------- Modelfile parsing

def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """``[(command, args)]`` as Ollama's Modelfile parser reads ``text``.

    Follows the rules of Ollama's parser: a command name, a value that runs to
    the next space or newline unless it is quoted (``"…"`` or ``\"\"\"…\"\"\"``,
    which may span lines); values are whitespace-trimmed then unquoted; ``#``
    starts a comment line; runes that are not printable (other than space, tab,
    CR, LF) are dropped.  ``FROM`` is reported as ``model`` and ``PARAMETER x``
    as ``x``, as Ollama names them.
    """
    cmds: list[tuple[str, str]] = []
    state, buf, name = "nil", [], ""
    line = 1

    def unquote(s: str) -> tuple[str, bool]:
        if s.startswith('"""'):
            return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
        if s.startswith('"'):
            return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
        return s, True

    for ch in text:
        if ch in "\r\n":
            line += 1
        if state == "nil":
            if ch == "#":
                state = "comment"
            elif ch in " \t\r\n":
                pass
            else:
                state, buf = "name", [ch]
            continue
        if state == "comment":
            if ch in "\r\n":
                state = "nil"
            continue
        if state in ("name", "param"):
            ok = ch.isalpha() if state == "name" else (ch.isalnum() or ch == "_")
            if ok and ch.isascii():
                buf.append(ch)
                continue
            if ch not in " \t":
                raise TemplateError(f"Modelfile line {line}: invalid command character {ch!r}")
            word = "".join(buf)
            if state == "name":
                low = word.lower()
                if low not in ("from", "license", "template", "system", "adapter", "draft", "renderer",
                               "parser", "parameter", "message", "requires"):
                    raise TemplateError(f"Modelfile line {line}: unknown command {word!r}")
                if low == "parameter":
                    state, buf = "param", []
                    continue
                name = "model" if low == "from" else low
            else:
                name = word
            state, buf = "value", []
            continue
        # state == "value"
        if ch in " \t\r\n":
            s, ok = unquote("".join(buf).strip(" \t\r\n"))
            if not ok or ch in " \t":
                buf.append(ch)
                continue
            cmds.append((name, s))
            state, buf = "nil", []
            continue
        if ch.isprintable():
            buf.append(ch)
    if state == "value":
        s, ok = unquote("".join(buf).strip(" \t\r\n"))
        if not ok:
            raise TemplateError("Modelfile: unexpected end of file inside a quoted value")
        cmds.append((name, s))
    elif state not in ("nil", "comment"):
        raise TemplateError("Modelfile: unexpected end of file")
    if not any(c == "model" for c, _ in cmds):
        raise TemplateError("Modelfile: no FROM line")
    return cmds


# ------------------------------------------------------ Go template renderer

@dataclass
class GoMessage:
    """One element of Ollama's ``.Messages`` (the fields a template may read)."""

    Role: str
    Content: str
    Thinking: str = ""
    ToolName: str = ""
    Images: list | None = None
    ToolCalls: list | None = None


def ollama_values(messages: list[dict]) -> dict[str, Any]:
    """The data Ollama passes to a ``.Messages`` template for a chat request."""
    system: list[str] = []
    collated: list[GoMessage] = []
    for m in messages:
        if m["role"] == "system":
            system.append(m["content"])
        if collated and collated[-1].Role == m["role"] and m["role"] != "tool":
            collated[-1].Content += "\n\n" + m["content"]
        else:
            collated.append(GoMessage(Role=m["role"], Content=m["content"]))
    return {"System": "\n\n".join(system), "Messages": collated, "Tools": None, "Response": "",
            "Think": False, "IsThinkSet": False, "Query": "", "Document": "", "Instruction": ""}


_TOKEN_RE = re.compile(
    r'\s+|"(?:[^"\\]|\\.)*"|`[^`]*`|:=|[(),|=]|\$[A-Za-z0-9_]*|(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.'
    r"|-?\d+(?:\.\d+)?|[A-Za-z_][A-Za-z0-9_]*"
)


def _lex_action(src: str, where: str) -> list[tuple[str, bool]]:
    """Tokens of one action, each with whether whitespace preceded it."""
    out, pos, space = [], 0, True
    while pos < len(src):
        m = _TOKEN_RE.match(src, pos)
        if not m:
            raise TemplateError(f"{where}: cannot parse {src[pos:pos + 20]!r}")
        tok = m.group(0)
        pos = m.end()
        if tok.isspace():
            space = True
            continue
        out.append((tok, space))
        space = False
    return out


def _split_template(tmpl: str) -> list[tuple[str, str]]:
    """``[("text", s) | ("action", src)]`` with ``{{-``/``-}}`` trimming applied."""
    parts: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    while True:
        i = tmpl.find("{{", pos)
        text = tmpl[pos:] if i < 0 else tmpl[pos:i]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if i < 0:
            if text:
                parts.append(("text", text))
            return parts
        inner_start = i + 2
        trim_left = tmpl.startswith("- ", inner_start) or tmpl.startswith("-\t", inner_start) or tmpl.startswith("-\n", inner_start)
        if trim_left:
            text = text.rstrip(" \t\r\n")
            inner_start += 1
        if text:
            parts.append(("text", text))
        # find the closing braces, skipping string literals and comments
        j, in_str = inner_start, None
        while j < len(tmpl):
            c = tmpl[j]
            if in_str:
                if c == "\\" and in_str == '"':
                    j += 2
                    continue
                if c == in_str:
                    in_str = None
            elif c in '"`':
                in_str = c
            elif tmpl.startswith("}}", j):
                break
            j += 1
        else:
            raise TemplateError(f"Go template: unclosed action at offset {i}")
        inner = tmpl[inner_start:j]
        trim_next = False
        if inner.endswith(" -") or inner.endswith("\t-") or inner.endswith("\n-"):
            inner = inner[:-1]
            trim_next = True
        inner = inner.strip()
        if not (inner.startswith("/*") and inner.endswith("*/")):
            parts.append(("action", inner))
        pos = j + 2


def _parse(parts: list[tuple[str, str]]) -> list:
    """Nodes: ("text", s) | ("print", toks) | ("if", [(toks, body)], else_body)
    | ("range", vars, toks, body, else_body)."""
    pos = 0

    def block(stop: tuple[str, ...]) -> tuple[list, str, list]:
        nonlocal pos
        nodes: list = []
        while pos < len(parts):
            kind, src = parts[pos]
            pos += 1
            if kind == "text":
                nodes.append(("text", src))
                continue
            toks = _lex_action(src, f"action {{{{{src}}}}}")
            if not toks:
                raise TemplateError("Go template: empty action {{ }}")
            head = toks[0][0]
            if head in ("end", "else"):
                if head not in stop and not (head == "else" and "else" in stop):
                    raise TemplateError(f"Go template: unexpected {{{{{src}}}}}")
                return nodes, head, toks[1:]
            if head == "if":
                branches, else_body = [], []
                cond = toks[1:]
                while True:
                    body, ended, rest = block(("end", "else"))
                    branches.append((cond, body))
                    if ended == "end":
                        break
                    if rest and rest[0][0] == "if":
                        cond = rest[1:]
                        continue
                    if rest:
                        raise TemplateError(f"Go template: unsupported else form {{{{{src}}}}}")
                    else_body, ended, _ = block(("end",))
                    break
                nodes.append(("if", branches, else_body))
            elif head == "range":
                rest = toks[1:]
                names: list[str] = []
                if any(t == ":=" for t, _ in rest):
                    k = [t for t, _ in rest].index(":=")
                    names = [t for t, _ in rest[:k] if t != ","]
                    rest = rest[k + 1:]
                body, ended, _ = block(("end", "else"))
                else_body = []
                if ended == "else":
                    else_body, _, _ = block(("end",))
                nodes.append(("range", names, rest, body, else_body))
            elif head in ("with", "define", "template", "block", "break", "continue"):
                raise TemplateError(f"Go template: {{{{{head}}}}} is outside the supported subset")
            else:
                nodes.append(("print", toks))
        if stop:
            raise TemplateError(f"Go template: missing {{{{end}}}} (expected one of {stop})")
        return nodes, "", []

    nodes, _, _ = block(())
    return nodes


def _truth(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float, str, list, tuple, dict)):
        return bool(v)
    return True


def _to_str(v: Any) -> str:
    if v is None:
        return "<no value>"
    if v is True:
        return "true"
    if v is False:
        return "false"
    return str(v)


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)  # missingkey=zero
    if obj is None:
        raise TemplateError(f"Go template: nil pointer evaluating .{name}")
    if not hasattr(obj, name):
        raise TemplateError(f"Go template: can't evaluate field {name} in type {type(obj).__name__}")
    return getattr(obj, name)


class _Eval:
    def __init__(self, root: Any):
        self.root = root

    def pipeline(self, toks: list[tuple[str, bool]], dot: Any, env: dict) -> Any:
        if any(t == "|" for t, _ in toks):
            raise TemplateError("Go template: pipelines with | are outside the supported subset")
        if toks and toks[0][0] in _FUNCS:
            args = self._operands(toks[1:], dot, env)
            return _FUNCS[toks[0][0]](args)
        ops = self._operands(toks, dot, env)
        if len(ops) != 1:
            raise TemplateError(f"Go template: cannot evaluate {' '.join(t for t, _ in toks)}")
        return ops[0]()

    def _operands(self, toks, dot, env) -> list[Callable[[], Any]]:
        """Lazy operands (so and/or short-circuit like Go's)."""
        ops: list[Callable[[], Any]] = []
        i = 0
        while i < len(toks):
            tok, space = toks[i]
            if tok == "(":
                depth, j = 1, i + 1
                while j < len(toks) and depth:
                    depth += {"(": 1, ")": -1}.get(toks[j][0], 0)
                    j += 1
                if depth:
                    raise TemplateError("Go template: unbalanced parentheses")
                inner = toks[i + 1:j - 1]
                op = (lambda inner=inner: self.pipeline(inner, dot, env))
                i = j
            elif tok.startswith('"'):
                op = (lambda v=json.loads(tok): v)
                i += 1
            elif tok.startswith("`"):
                op = (lambda v=tok[1:-1]: v)
                i += 1
            elif tok in ("true", "false"):
                op = (lambda v=(tok == "true"): v)
                i += 1
            elif tok == "nil":
                op = (lambda: None)
                i += 1
            elif re.fullmatch(r"-?\d+(\.\d+)?", tok):
                op = (lambda v=(float(tok) if "." in tok else int(tok)): v)
                i += 1
            elif tok == ".":
                op = (lambda: dot)
                i += 1
            elif tok.startswith("$"):
                if tok not in env:
                    raise TemplateError(f"Go template: undefined variable {tok}")
                op = (lambda v=env[tok]: v)
                i += 1
            elif tok.startswith("."):
                op = (lambda path=tok[1:].split("."): self._walk(dot, path))
                i += 1
            elif tok in _FUNCS:
                raise TemplateError(f"Go template: function {tok} used as an argument needs parentheses")
            else:
                raise TemplateError(f"Go template: unknown identifier {tok!r}")
            # field chain right after an operand: (index .Messages 0).Role, $m.Content
            while i < len(toks) and toks[i][0].startswith(".") and toks[i][0] != "." and not toks[i][1]:
                path = toks[i][0][1:].split(".")
                op = (lambda base=op, path=path: self._walk(base(), path))
                i += 1
            ops.append(op)
        return ops

    @staticmethod
    def _walk(obj: Any, path: list[str]) -> Any:
        for name in path:
            obj = _field(obj, name)
        return obj

    def run(self, nodes: list, dot: Any, env: dict, out: list[str]) -> None:
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "print":
                out.append(_to_str(self.pipeline(node[1], dot, env)))
            elif kind == "if":
                for cond, body in node[1]:
                    if _truth(self.pipeline(cond, dot, env)):
                        self.run(body, dot, env, out)
                        break
                else:
                    self.run(node[2], dot, env, out)
            elif kind == "range":
                _, names, toks, body, else_body = node
                seq = self.pipeline(toks, dot, env)
                if seq is None:
                    seq = []
                if not isinstance(seq, (list, tuple)):
                    raise TemplateError(f"Go template: range over {type(seq).__name__}")
                if not seq:
                    self.run(else_body, dot, env, out)
                for idx, item in enumerate(seq):
                    inner = dict(env)
                    if len(names) == 1:
                        inner[names[0]] = item
                    elif len(names) == 2:
                        inner[names[0]], inner[names[1]] = idx, item
                    self.run(body, item, inner, out)


def _cmp(op: Callable[[Any, Any], bool]) -> Callable:
    def f(args):
        a, b = args[0](), args[1]()
        return op(a, b)
    return f


def _eq(args):
    a = args[0]()
    return any(a == b() for b in args[1:])


def _and(args):
    v = None
    for a in args:
        v = a()
        if not _truth(v):
            return v
    return v


def _or(args):
    v = None
    for a in args:
        v = a()
        if _truth(v):
            return v
    return v


def _index(args):
    v = args[0]()
    for a in args[1:]:
        k = a()
        try:
            v = v[k]
        except (IndexError, KeyError, TypeError):
            raise TemplateError(f"Go template: index {k!r} out of range") from None
    return v


def _slice(args):
    v = args[0]()
    idx = [a() for a in args[1:]]
    return v[idx[0]:idx[1]] if len(idx) == 2 else v[idx[0]:] if idx else v


_FUNCS: dict[str, Callable] = {
    "and": _and, "or": _or, "not": lambda a: not _truth(a[0]()),
    "eq": _eq, "ne": lambda a: not _eq(a),
    "lt": _cmp(lambda x, y: x < y), "le": _cmp(lambda x, y: x <= y),
    "gt": _cmp(lambda x, y: x > y), "ge": _cmp(lambda x, y: x >= y),
    "len": lambda a: len(a[0]() or []), "index": _index, "slice": _slice,
}


def render_go(template: str, values: dict[str, Any]) -> str:
    """Render ``template`` (Go text/template subset) with ``values`` as dot."""
    nodes = _parse(_split_template(template))
    out: list[str] = []
    _Eval(values).run(nodes, values, {"$": values}, out)
    return "".join(out)


def render_ollama(template: str, messages: list[dict]) -> str:
    """The prompt Ollama would build from ``template`` for a chat request."""
    return render_go(template, ollama_values(messages))


# ------------------------------------------------------------------- parity

PARITY_CONVERSATIONS: list[list[dict]] = [
    [{"role": "user", "content": "I lost my card, what do I do?"}],
    [{"role": "system", "content": "You classify banking questions."},
     {"role": "user", "content": "I lost my card, what do I do?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "My transfer\nhas not arrived.\n\nIt was  sent {{ .System }} yesterday. "}],
    [{"role": "system", "content": "Be brief.\nAnswer in one line."},
     {"role": "user", "content": "Ça coûte combien ? 💳"}, {"role": "assistant", "content": "Rien."},
     {"role": "user", "content": "  spaces around  "}],
    [{"role": "user", "content": "What is my balance?"}, {"role": "assistant", "content": "balance"}],
]


@dataclass
class ParityResult:
    conversation: list[dict]
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got

    def diff(self) -> str:
        e, g = self.expected, self.got
        i = next((k for k in range(min(len(e), len(g))) if e[k] != g[k]), min(len(e), len(g)))
        return f"first difference at char {i}: training {e[max(0, i - 30):i + 30]!r} vs served {g[max(0, i - 30):i + 30]!r}"


def serving_conversations(conversations: list[list[dict]], spec: ChatSpec | None = None) -> list[list[dict]]:
    """The conversations a parity check compares: those ending with a user turn (the serving case: a trailing
    assistant message is a prefill for Ollama and llama.cpp), with contents stripped when the training
    template strips them (``spec.trims``: a Go template cannot)."""
    out = []
    for c in conversations:
        if not c or c[-1]["role"] != "user":
            continue
        out.append([{**m, "content": m["content"].strip()} for m in c] if spec is not None and spec.trims else c)
    return out


def template_parity(
    template: str,
    train_render: Callable[[list[dict]], str],
    conversations: list[list[dict]] | None = None,
    spec: ChatSpec | None = None,
) -> list[ParityResult]:
    """Render each serving conversation with the Go template (as Ollama would, plus the BOS text Ollama adds as
    a token) and with the training template."""
    convs = serving_conversations(conversations if conversations is not None else PARITY_CONVERSATIONS, spec)
    bos = spec.bos if spec is not None else ""
    return [ParityResult(c, train_render(c), bos + render_ollama(template, c)) for c in convs]
