"""Shared fixtures. Tiers: default (fast), ``integration`` (real servers, browser,
subprocesses), ``slow`` (real training / generation)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def store(workspace: Path):
    from curate.store import open_store

    s = open_store(workspace)
    yield s
    s.close()


@pytest.fixture
def artifacts_dir() -> Path:
    d = ROOT / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d
