"""Documents (Markdown, plain text, HTML, knowledge-base JSON) → :class:`Chunk`s.

A document is not a chat pair: it becomes stored chunks (``store.chunks()``)
that doc-grounded synthesis turns into Q&A. Each chunk keeps its provenance:
``file``, ``title`` (the heading path, ``"FAQ > Cards > Lost card"``) and
``loc`` (heading path and line range, ``"FAQ > Cards; lines 12-30"``).

**Chunking**: the text is cut into blocks (paragraphs, list items, table rows,
code blocks) under the current heading path. Blocks are packed greedily into
chunks of about ``TARGET_MIN``–``TARGET_MAX`` words (200–400): a new chunk
starts when the next block would pass ``TARGET_MAX``, or at a heading once the
current chunk has ``TARGET_MIN`` words. A single block longer than
``TARGET_MAX`` is cut at sentence ends. The heading line(s) are kept in the
chunk text so a chunk reads on its own.

**Formats**

* ``.md .markdown`` — ATX headings (``#``…``######``) and setext headings
  (``===`` / ``---`` underlines); fenced code blocks are kept whole.
* ``.txt`` — paragraphs separated by blank lines (no headings).
* ``.html .htm`` — parsed with the standard library's ``html.parser``; text of
  ``p, li, td, th, pre, blockquote, dd, dt`` (and stray text) becomes blocks,
  ``h1``–``h6`` set the heading path; ``script, style, nav, header, footer,
  noscript, svg`` are skipped. ``<title>`` is the root of the heading path
  when there is no ``h1``.
* ``.json`` — a knowledge base / guideline file: an object of nested objects
  (e.g. ABCD ``guidelines.json`` and ``kb.json``). Object keys become the
  heading path, strings and lists of strings become paragraphs
  (``key: value``), objects inside lists become one paragraph each
  (``type: … · button: … · text: …``). ``loc`` is the JSON path.
"""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

from .common import Chunk, ReadOptions, Reject, read_text

TARGET_MIN = 200
TARGET_MAX = 400
ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
SENT_END = re.compile(r"(?<=[.!?])\s+")


class Block:
    __slots__ = ("path", "text", "first", "last", "heading")

    def __init__(self, path: tuple[str, ...], text: str, first: int, last: int, heading: bool = False):
        self.path, self.text, self.first, self.last, self.heading = path, text, first, last, heading


def _words(s: str) -> int:
    return len(s.split())


def _split_long(b: Block) -> list[Block]:
    if _words(b.text) <= TARGET_MAX:
        return [b]
    out, cur = [], []
    for sent in SENT_END.split(b.text):
        if cur and _words(" ".join(cur + [sent])) > TARGET_MAX // 1.3:
            out.append(Block(b.path, " ".join(cur), b.first, b.last))
            cur = []
        cur.append(sent)
    if cur:
        out.append(Block(b.path, " ".join(cur), b.first, b.last))
    # a "sentence" longer than the limit (no punctuation): cut by words
    final = []
    for x in out:
        w = x.text.split()
        for i in range(0, len(w), TARGET_MAX):
            final.append(Block(x.path, " ".join(w[i:i + TARGET_MAX]), x.first, x.last))
    return final


def pack(blocks: list[Block], file: str, unit: str = "lines") -> Iterator[Chunk]:
    """Greedy packing of blocks into ~200-400-word chunks (rule in the module docstring)."""
    cur: list[Block] = []
    n = 0

    def emit() -> Chunk | None:
        body = [b for b in cur if not b.heading]
        if not body:
            return None
        path = body[0].path
        title = " > ".join(path)
        first, last = cur[0].first, cur[-1].last
        if unit == "json":
            rng = f"{first} .. {last}" if first != last else str(first)
        else:
            rng = f"{unit} {first}-{last}" if first != last else f"{unit[:-1] if unit.endswith('s') else unit} {first}"
        loc = f"{title}; {rng}" if title else rng
        text = "\n\n".join(b.text for b in cur)
        return Chunk(file=file, loc=loc, text=text, title=title)

    for b in (x for blk in blocks for x in _split_long(blk)):
        words = sum(_words(x.text) for x in cur)
        if cur and ((words + _words(b.text) > TARGET_MAX) or (b.heading and words >= TARGET_MIN)):
            c = emit()
            if c is not None:
                n += 1
                yield c
            cur = []
        cur.append(b)
    c = emit()
    if c is not None:
        yield c


# -- Markdown / text ------------------------------------------------------------------
def markdown_blocks(text: str, headings: bool = True) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    path: list[str] = []
    para: list[str] = []
    start = 0
    in_fence = False

    def end_para(last: int) -> None:
        nonlocal para
        if para:
            blocks.append(Block(tuple(path), "\n".join(para).strip(), start, last))
            para = []

    for i, ln in enumerate(lines, 1):
        if headings and FENCE.match(ln):
            if not in_fence:
                end_para(i - 1)
                start = i
            para.append(ln)
            in_fence = not in_fence
            if not in_fence:
                end_para(i)
            continue
        if in_fence:
            para.append(ln)
            continue
        m = ATX.match(ln) if headings else None
        if m:
            end_para(i - 1)
            level = len(m.group(1))
            path[:] = path[: level - 1] + [m.group(2).strip()]
            blocks.append(Block(tuple(path), ln.strip(), i, i, heading=True))
            continue
        if headings and para and len(para) == 1 and SETEXT.match(ln) and not ln.strip().startswith("- "):
            title = para[0].strip()
            para = []
            level = 1 if ln.strip().startswith("=") else 2
            path[:] = path[: level - 1] + [title]
            blocks.append(Block(tuple(path), f"{'#' * level} {title}", i - 1, i, heading=True))
            continue
        if not ln.strip():
            end_para(i - 1)
            continue
        if not para:
            start = i
        para.append(ln.rstrip())
    end_para(len(lines))
    return blocks


# -- HTML -----------------------------------------------------------------------------
class _HTMLBlocks(HTMLParser):
    SKIP = {"script", "style", "nav", "header", "footer", "noscript", "svg", "template"}
    BLOCK = {"p", "li", "td", "th", "pre", "blockquote", "dd", "dt", "div", "section", "article", "main",
             "ul", "ol", "table", "tr", "br", "body", "figcaption", "summary", "details"}
    HEAD = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.path: list[str] = []
        self.buf: list[str] = []
        self.start = 1
        self.skip = 0
        self.heading: int | None = None
        self.title = ""
        self.in_title = False
        self.pre = 0

    def _flush(self) -> None:
        raw = "".join(self.buf)
        text = raw.strip() if self.pre else " ".join(raw.split())
        self.buf = []
        if not text:
            return
        line = self.getpos()[0]
        if self.heading is not None:
            level = self.heading
            self.path[:] = self.path[: level - 1] + [text]
            self.blocks.append(Block(tuple(self.path), "#" * level + " " + text, self.start, line, heading=True))
        else:
            path = tuple(self.path) if self.path else ((self.title,) if self.title else ())
            self.blocks.append(Block(path, text, self.start, line))

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.SKIP:
            self.skip += 1
            return
        if tag == "title":
            self.in_title = True
            return
        if tag in self.HEAD or tag in self.BLOCK:
            self._flush()
            self.start = self.getpos()[0]
            if tag in self.HEAD:
                self.heading = self.HEAD[tag]
            if tag == "pre":
                self.pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "title":
            self.in_title = False
            return
        if tag in self.HEAD or tag in self.BLOCK:
            self._flush()
            if tag in self.HEAD:
                self.heading = None
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            self.start = self.getpos()[0]

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += " ".join(data.split())
            return
        if self.skip:
            return
        if not "".join(self.buf).strip():
            self.start = self.getpos()[0]
        self.buf.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def html_blocks(text: str) -> list[Block]:
    p = _HTMLBlocks()
    p.feed(text)
    p.close()
    return p.blocks


# -- knowledge-base JSON --------------------------------------------------------------
def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


def json_blocks(obj: Any, path: tuple[str, ...] = (), jpath: str = "$") -> list[Block]:
    """Nested objects → heading path; strings / lists of strings → paragraphs."""
    out: list[Block] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = str(k)
            jp = f"{jpath}.{key}" if re.match(r"^\w+$", key) else f"{jpath}[{json.dumps(key)}]"
            if isinstance(v, dict):
                out.append(Block(path + (key,), "#" * min(6, len(path) + 1) + " " + key, jp, jp, heading=True))  # type: ignore[arg-type]
                out += json_blocks(v, path + (key,), jp)
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                out.append(Block(path + (key,), "#" * min(6, len(path) + 1) + " " + key, jp, jp, heading=True))  # type: ignore[arg-type]
                for i, x in enumerate(v):
                    parts = []
                    for kk, vv in x.items():
                        if _scalar(vv) and str(vv if vv is not None else "").strip():
                            parts.append(f"{kk}: {vv}")
                        elif isinstance(vv, list) and vv and all(_scalar(y) for y in vv):
                            parts.append(f"{kk}: " + "; ".join(str(y) for y in vv))
                        elif isinstance(vv, (dict, list)) and vv:
                            parts.append(f"{kk}: {json.dumps(vv, ensure_ascii=False)}")
                    if parts:
                        out.append(Block(path + (key,), " · ".join(parts), 0, 0))
                        out[-1].first = out[-1].last = f"{jp}[{i}]"  # type: ignore[assignment]
            elif isinstance(v, list):
                txt = f"{key}: " + ", ".join(str(x) for x in v if _scalar(x))
                out.append(Block(path, txt, jp, jp))  # type: ignore[arg-type]
            elif _scalar(v) and str(v if v is not None else "").strip():
                out.append(Block(path, f"{key}: {v}", jp, jp))  # type: ignore[arg-type]
    return out


def is_knowledge_json(data: Any) -> bool:
    """The detection rule for docs JSON: an object whose top-level values are all
    objects or lists of scalars (no list of records, no top-level text fields)."""
    return (
        isinstance(data, dict)
        and bool(data)
        and all(isinstance(v, dict) or (isinstance(v, list) and all(_scalar(x) for x in v)) for v in data.values())
    )


def read(path: Path, opts: ReadOptions, display: str | None = None) -> Iterator[Any]:
    file = display or str(path)
    text, rej = read_text(path, file)
    if rej:
        yield rej
        return
    s = path.suffix.lower()
    if s in (".md", ".markdown"):
        blocks = markdown_blocks(text)
    elif s in (".html", ".htm"):
        blocks = html_blocks(text)
    elif s == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            why = "truncated JSON" if e.pos >= len(text.rstrip()) - 1 else "invalid JSON"
            yield Reject(file, f"line {e.lineno}", f"{why}: {e.msg} at line {e.lineno} column {e.colno}", "json")
            return
        if not isinstance(data, (dict, list)):
            yield Reject(file, "file", f"expected a JSON object of sections, got {type(data).__name__}")
            return
        blocks = json_blocks(data if isinstance(data, dict) else {"items": data})
        for b in blocks:
            b.first, b.last = str(b.first), str(b.last)
    else:
        blocks = markdown_blocks(text, headings=False)
    n = 0
    for c in pack(blocks, file, unit="json" if s == ".json" else "lines"):
        n += 1
        yield c
    if n == 0:
        yield Reject(file, "file", "no text found in the document", "file")
