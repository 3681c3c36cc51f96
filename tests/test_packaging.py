import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_evaluate_is_ours_not_huggingface():
    mod = importlib.import_module("evaluate")
    assert Path(mod.__file__).resolve().parent == ROOT / "evaluate"


def test_top_level_packages_import():
    for name in ("curate", "synth", "train", "evaluate"):
        mod = importlib.import_module(name)
        assert Path(mod.__file__).resolve().is_relative_to(ROOT)
