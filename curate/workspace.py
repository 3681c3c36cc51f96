"""Workspace resolution and the workspace config (``<workspace>/config.toml``).

A workspace is a folder holding ``store.sqlite`` (the source of truth),
``snapshots/``, ``reports/`` and ``rejects/``. It is chosen by, in order:
``--workspace DIR``, the ``WORKBENCH_HOME`` environment variable, and the
default ``data/workspace`` (relative to the current directory).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_WORKSPACE = "data/workspace"


def resolve(workspace: str | os.PathLike | None = None) -> Path:
    ws = Path(workspace or os.environ.get("WORKBENCH_HOME") or DEFAULT_WORKSPACE)
    ws.mkdir(parents=True, exist_ok=True)
    for sub in ("snapshots", "reports", "rejects"):
        (ws / sub).mkdir(exist_ok=True)
    return ws


@dataclass
class WorkspaceConfig:
    """Settings read from ``<workspace>/config.toml`` (all optional)."""

    heldout_fraction: float = 0.2
    """Fraction of groups assigned to the held-out split."""
    split_seed: int = 13
    """Seed mixed into the group hash that decides the split."""
    min_approvals: int = 1
    """Approvals needed (with no open rejection) for a record to count as approved."""
    labelers: dict[str, str] = field(default_factory=dict)
    """Optional ``name = "password"`` table; when non-empty the review app asks for a password."""
    argilla: dict[str, Any] = field(default_factory=dict)
    """``url``, ``api_key`` … written by ``make argilla-up`` for the local server."""

    @classmethod
    def load(cls, workspace: Path) -> "WorkspaceConfig":
        p = Path(workspace) / "config.toml"
        if not p.exists():
            return cls()
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: invalid TOML: {e}") from e
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{p}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**raw)
