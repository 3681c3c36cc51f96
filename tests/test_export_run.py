"""Fast tier: reading a run folder for export (adapter location, base model, held-out prompts, CLI errors)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.export import ExportError, build_parser, heldout_prompts, locate_run, main, serving_template

ROOT = Path(__file__).resolve().parent.parent


def make_snapshot(workspace: Path, name: str = "v1", limit: int = 40) -> Path:
    """A small approved snapshot of the banking77 demo, made through the curate API."""
    from curate import review, snapshot
    from curate.cli import main as curate_main
    from curate.store import open_store

    assert curate_main(["ingest", str(ROOT / "data" / "banking77_demo"), "--workspace", str(workspace)]) == 0
    store = open_store(workspace)
    try:
        ids = review.select_ids(store, (), {"status": "pending"}, limit)
        review.decide(store, ids, "approve", "tester")
        snapshot.create(store, name)
    finally:
        store.close()
    return workspace / "snapshots" / name


def _run(tmp_path: Path, manifest: dict | None, adapter_sub: str | None = "adapter", base_in_adapter: str = "") -> Path:
    run = tmp_path / "run"
    ad = run / adapter_sub if adapter_sub else run
    ad.mkdir(parents=True)
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base_in_adapter}))
    (ad / "adapter_model.safetensors").write_bytes(b"x")
    (run / "tokenizer_config.json").write_text("{}")
    if manifest is not None:
        (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_locate_run_adapter_in_subfolder_or_root(tmp_path: Path):
    info = locate_run(_run(tmp_path, {"config": {"base_model": "embedded:smollm2-135m-instruct"}}))
    assert info.adapter_dir.name == "adapter" and info.base_model == "embedded:smollm2-135m-instruct"
    assert info.base_field == "manifest.json:config.base_model"
    info = locate_run(_run(tmp_path / "b", None, adapter_sub=None, base_in_adapter="/models/x"))
    assert info.adapter_dir == tmp_path / "b" / "run" and info.base_model == "/models/x"
    assert "adapter_config.json" in info.base_field


def test_locate_run_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(ExportError, match="does not exist"):
        locate_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no adapter_config.json"):
        locate_run(tmp_path / "empty")
    run = _run(tmp_path / "c", None)
    with pytest.raises(ExportError, match="no base model named"):
        locate_run(run)
    (run / "manifest.json").write_text("{\n  bad json")
    with pytest.raises(ExportError, match=r"manifest.json:2: invalid JSON"):
        locate_run(run)


def test_heldout_prompts_from_snapshot(tmp_path: Path):
    snap = make_snapshot(tmp_path / "ws")
    held = json.loads((snap / "manifest.json").read_text())["files"]["heldout.parquet"]["rows"]
    assert held > 0
    # the train helper's manifest layout is not fixed: a workspace + snapshot name anywhere is enough
    info = locate_run(_run(tmp_path, {"snapshot": {"name": "v1", "sha256": "…"}, "workspace": str(tmp_path / "ws"),
                                      "config": {"base_model": "embedded"}}))
    prompts, source = heldout_prompts(info, 3)
    assert "held-out split" in source and len(prompts) == min(3, held)
    for p in prompts:
        assert p[-1]["role"] == "user" and all(m["content"] for m in p)
    # no snapshot reachable: built-in prompts, and the report says so
    info = locate_run(_run(tmp_path / "d", {"config": {"base_model": "embedded"}}))
    prompts, source = heldout_prompts(info, 2)
    assert source.startswith("built-in") and len(prompts) == 2


def test_serving_template_keeps_whitespace_control():
    t = "A {%- generation -%}  B  {%- endgeneration %} C{% generation %}D{% endgeneration %}"
    s = serving_template(t)
    assert s == "A {%- if true -%}  B  {%- endif %} C{% if true %}D{% endif %}"
    from jinja2 import Environment

    assert Environment().from_string(s).render() == "AB C" + "D"


def test_cli_help_and_bad_args(tmp_path: Path, capsys):
    help_text = build_parser().format_help()
    for word in ("--run", "--format", "merged", "gguf", "ollama", "--dtype", "q8_0", "parity"):
        assert word in help_text
    with pytest.raises(SystemExit):
        main(["--run", str(tmp_path), "--format", "onnx"])
    assert main(["--run", str(tmp_path / "missing"), "--format", "merged", "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_out_folder_with_other_data_is_never_replaced(tmp_path: Path):
    from train.export import ExportConfig, export

    run = _run(tmp_path, {"config": {"base_model": "embedded"}})
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a previous export"):
        export(ExportConfig(run=run, format="merged", out=precious, progress=False), log=lambda *_: None)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_base_model_path_prefers_the_runs_resolved_folder(tmp_path: Path):
    from train.export import base_model_path

    resolved, other = tmp_path / "resolved", tmp_path / "other"
    for d in (resolved, other):
        d.mkdir()
        (d / "config.json").write_text("{}")
    man = {"config": {"base_model": "org/name", "base_model_path": str(other)}, "model": {"path": str(resolved)}}
    assert base_model_path(locate_run(_run(tmp_path / "a", man))) == resolved  # manifest model.path first
    man["model"]["path"] = str(tmp_path / "gone")  # a folder that no longer exists: the next field
    assert base_model_path(locate_run(_run(tmp_path / "b", man))) == other
    # --base overrides what the manifest says
    assert base_model_path(locate_run(_run(tmp_path / "c", man), base=str(resolved))) == resolved
