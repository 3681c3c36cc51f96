"""Functions stay short enough to read at once: none over 80 lines in curate/, synth/, train/, evaluate/
unless the line above its ``def`` (or its decorators) is a ``# long: <reason>`` comment."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 80


def _long_functions() -> list[str]:
    out = []
    for pkg in ("curate", "synth", "train", "evaluate"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if node.end_lineno - node.lineno + 1 <= LIMIT:
                    continue
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                above = lines[first - 2].strip() if first >= 2 else ""
                if not above.startswith("# long:") or len(above) < len("# long: ") + 10:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                               f"({node.end_lineno - node.lineno + 1} lines)")
    return out


def test_no_unexplained_long_function():
    assert _long_functions() == []
