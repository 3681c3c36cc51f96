"""Datasets out: ``snapshot export`` as OpenAI JSONL / ShareGPT / a datasets folder; re-ingest gives the same ids."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate import snapshot as snap
from curate.cli import main
from curate.example import Example, Source
from curate.ingest import ingest_paths
from curate.store import open_store

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def snapshot_store(store):
    """A snapshot of ingested data: labelled queries, chat files, transcripts with PII (already scrubbed)."""
    exs = [Example([{"role": "system", "content": "classify"}, {"role": "user", "content": f"query number {i}  "},
                    {"role": "assistant", "content": f"label_{i % 3}"}], Source("ticket", "t.csv", f"row {i}"),
                   label=f"label_{i % 3}") for i in range(30)]
    store.add_examples(exs)
    ingest_paths(store, [DATA / "samples", DATA / "abcd" / "abcd_sample.json"], workers=0)
    for e in store.iter_records({}):
        store.add_event(e.id, "alice", "approve")
    snap.create(store, "v1")
    return store


def _snapshot_ids(store, split="all"):
    splits = ("train", "heldout") if split == "all" else (split,)
    return {(r["id"], r["label"]) for s in splits for r in snap.load(store, "v1", s)}


def _reingest(tmp_path: Path, path: Path, name: str) -> set:
    s = open_store(tmp_path / f"re-{name}")
    rep = ingest_paths(s, [path], workers=0)
    assert rep.totals()["rejected"] == 0
    ids = {(e.id, e.label) for e in s.iter_records({})}
    s.close()
    return ids


@pytest.mark.parametrize("fmt,out", [("openai-jsonl", "v1.jsonl"), ("openai-jsonl", "dir"), ("sharegpt", "sg.jsonl"),
                                     ("hf-dataset", "hf")])
def test_export_reingests_to_the_same_record_ids(snapshot_store, tmp_path, fmt, out):
    r = snap.export(snapshot_store, "v1", fmt, tmp_path / out)
    want = _snapshot_ids(snapshot_store)
    assert sum(r["rows"].values()) == len(want) > 40
    if out == "dir":
        assert sorted(Path(f).name for f in r["files"]) == ["heldout.jsonl", "train.jsonl"]
    assert _reingest(tmp_path, tmp_path / out, f"{fmt}-{out}") == want


def test_jsonl_lines_and_one_split(snapshot_store, tmp_path):
    snap.export(snapshot_store, "v1", "sharegpt", tmp_path / "train.jsonl", split="train")
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(lines) == len(_snapshot_ids(snapshot_store, "train")) and {x["split"] for x in lines} == {"train"}
    first = next(x for x in lines if x.get("label"))
    assert [t["from"] for t in first["conversations"]] == ["system", "human", "gpt"] and len(first["id"]) == 24
    snap.export(snapshot_store, "v1", "openai-jsonl", tmp_path / "bare.jsonl", messages_only=True)
    assert all(set(json.loads(x)) == {"messages"} for x in (tmp_path / "bare.jsonl").read_text().splitlines())


def test_hf_dataset_folder_loads_with_datasets(snapshot_store, tmp_path):
    import datasets

    snap.export(snapshot_store, "v1", "hf-dataset", tmp_path / "hf")
    dd = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(dd) == {"train", "heldout"} and dd["train"][0]["messages"][0]["role"] in ("system", "user")
    snap.export(snapshot_store, "v1", "hf-dataset", tmp_path / "hf-train", split="train")
    assert isinstance(datasets.load_from_disk(str(tmp_path / "hf-train")), datasets.Dataset)


def test_existing_out_and_unknown_snapshot_are_errors(snapshot_store, tmp_path, capsys):
    (tmp_path / "taken.jsonl").write_text("x\n")
    ws = str(snapshot_store.workspace)
    assert main(["snapshot", "export", "v1", "--format", "openai-jsonl", "--out", str(tmp_path / "taken.jsonl"),
                 "--workspace", ws]) == 1
    assert "already exists" in capsys.readouterr().err and (tmp_path / "taken.jsonl").read_text() == "x\n"
    assert main(["snapshot", "export", "nope", "--format", "sharegpt", "--out", str(tmp_path / "n"), "--workspace", ws]) == 1
    assert "no snapshot named 'nope'" in capsys.readouterr().err


def test_push_without_a_token_is_a_clear_error(snapshot_store, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(snap, "_hub_token", lambda: None)
    rc = main(["snapshot", "export", "v1", "--format", "hf-dataset", "--out", str(tmp_path / "hf"),
               "--push-to-hub", "acme/tickets", "--workspace", str(snapshot_store.workspace)])
    err = capsys.readouterr().err
    assert rc == 1 and "needs a Hugging Face token" in err and "HF_TOKEN" in err and not (tmp_path / "hf").exists()


def test_push_to_hub_with_the_hub_client_mocked(snapshot_store, tmp_path, monkeypatch, capsys):
    import datasets

    pushed = []

    def fake_push(self, repo_id, **kw):
        pushed.append((type(self).__name__, repo_id, kw, {s: d.num_rows for s, d in self.items()}
                       if isinstance(self, datasets.DatasetDict) else self.num_rows))

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_push)
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_push)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    rc = main(["snapshot", "export", "v1", "--format", "openai-jsonl", "--out", str(tmp_path / "v1.jsonl"),
               "--push-to-hub", "acme/tickets", "--workspace", str(snapshot_store.workspace), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["pushed"] == "https://huggingface.co/datasets/acme/tickets"
    (kind, repo, kw, rows), = pushed
    assert kind == "DatasetDict" and repo == "acme/tickets" and kw["token"] == "hf_test_token" and kw["private"] is True
    assert rows == out["rows"] and (tmp_path / "v1.jsonl").exists()
    rc = main(["snapshot", "export", "v1", "--format", "hf-dataset", "--split", "heldout", "--push-to-hub",
               "acme/tickets", "--public", "--workspace", str(snapshot_store.workspace)])
    assert rc == 0 and pushed[-1][0] == "Dataset" and pushed[-1][2]["private"] is False
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, *a, **k: (_ for _ in ()).throw(OSError("no route")))
    rc = main(["snapshot", "export", "v1", "--format", "hf-dataset", "--split", "train", "--push-to-hub", "acme/tickets",
               "--workspace", str(snapshot_store.workspace)])
    assert rc == 1 and "push to acme/tickets failed: OSError: no route" in capsys.readouterr().err
