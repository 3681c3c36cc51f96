"""The model card (README.md) written into every export folder: HF metadata for the format, the export's facts
from its export_report.json and files, the run's card from the run's files.

Fast tier: a merged export of a tiny llama run through the CLI. Slow tier: an Ollama export (GGUF, llama.cpp).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_export_families import make_run


def _tiny_run(tmp_path: Path) -> Path:
    run = make_run("llama3", tmp_path)
    man = json.loads((run / "manifest.json").read_text())
    man.update(steps=37, tokens_seen=4242, snapshot={"name": "v1", "train_rows": 12, "heldout_rows": 3})
    (run / "manifest.json").write_text(json.dumps(man))
    return run


def _header(card: str) -> str:
    assert card.startswith("---\n")
    return card.split("---\n")[1]


def _cell(card: str, row: str) -> str:
    """The value column of the card's table row that starts with ``row``."""
    m = re.search(r"^\| " + re.escape(row) + r" \| (.+?) \|", card, re.M)
    assert m, row
    return m.group(1)


def _file_row(card: str, name: str) -> tuple[int, float]:
    m = re.search(r"^\| " + re.escape(name) + r" \| (\d+) \| ([\d.]+) \|$", card, re.M)
    assert m, name
    return int(m.group(1)), float(m.group(2))


def test_merged_export_writes_a_card_from_its_report_and_the_run(tmp_path: Path):
    from train.export import main

    run, out = _tiny_run(tmp_path), tmp_path / "served"
    assert main(["--run", str(run), "--format", "merged", "--out", str(out), "--quiet"]) == 0
    card = (out / "README.md").read_text()
    head = _header(card)
    assert "library_name: transformers" in head and f"base_model: {run.parent / 'base'}" in head
    assert "- safetensors" in head and "quantization: none" in head
    rep = json.loads((out / "export_report.json").read_text())
    # numbers recomputed from the export's files: the weights' size, and the merge check of export_report.json
    size = (out / "model.safetensors").stat().st_size
    assert _file_row(card, "model.safetensors") == (size, round(size / 1e6, 1))
    assert _cell(card, r"merged vs base+adapter (PEFT) max \|Δlogit\|") == f"{rep['merge_max_abs_logit_diff']:.3g}"
    assert _cell(card, r"adapter effect vs base max \|Δlogit\|") == f"{rep['adapter_effect_max_abs_logit']:.3g}"
    # the run's own card sections, from the run's manifest
    assert _cell(card, "steps") == "37" and _cell(card, "tokens seen") == "4242"
    assert "12 train rows, 3 held-out rows" in card and "## Evaluation" in card


def test_run_card_header_is_unchanged(tmp_path: Path):
    from train.card import write_card

    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"base_model": "org/base"}, "quantization": "nf4"}))
    card = write_card(tmp_path).read_text()
    assert card.startswith("---\nbase_model: org/base\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n"
                           "- workbench\n- peft\n- qlora\n- sft\n---\n\n# ")


@pytest.mark.slow
def test_ollama_export_card_has_gguf_metadata_and_parity(tmp_path: Path):
    pytest.importorskip("xllamacpp")
    from train.export import ExportConfig, export

    run = _tiny_run(tmp_path)
    rep = export(ExportConfig(run=run, format="ollama", dtype="f16", progress=False, prompts=2, max_new_tokens=6),
                 log=lambda *_: None)
    out = Path(rep["out"])
    card = (out / "README.md").read_text()
    head = _header(card)
    assert "library_name: gguf" in head and "quantization: f16" in head
    assert all(f"- {t}\n" in head for t in ("gguf", "ollama", "llama.cpp", "f16"))
    size = (out / "model.gguf").stat().st_size
    assert _file_row(card, "model.gguf") == (size, round(size / 1e6, 1))
    lc = json.loads((out / "export_report.json").read_text())["gguf"]["llama_cpp"]
    row = next(k for k in card.splitlines() if k.startswith(f"| llama.cpp {lc['version']}: greedy tokens"))
    assert f"| {lc['identical_greedy_outputs']}/{lc['prompts']}" in row
    assert "Modelfile TEMPLATE" in card and "ollama create" in card
    # the merged folder built on the way has its own card
    assert "library_name: transformers" in (run / "export" / "merged" / "README.md").read_text()
