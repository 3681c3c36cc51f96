"""Reader for docs (to be completed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .common import ReadOptions, Reject


def read(path: Path, opts: ReadOptions, display: str | None = None) -> Iterator[Any]:
    yield Reject(str(path), "file", "docs reader not implemented yet")
