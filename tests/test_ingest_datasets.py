"""Datasets in: Parquet / Arrow / Feather files, saved ``datasets`` folders and ``hf://`` ids through ingest."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.cli import build_parser, main
from curate.example import SOURCE_KINDS
from curate.ingest import KINDS, detect_kind, ingest_paths, walk
from curate.ingest import tables
from curate.ingest.common import ReadOptions, Reject

INTENTS = ["top_up", "card_declined", "card_arrival"]
QUERIES = ["How do I top up my card?", "Why was my card declined at the shop?", "Where is my new card?",
           "Can I top up by bank transfer?"]


def _labelled(tmp_path: Path):
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=INTENTS)})
    return datasets.Dataset.from_dict({"text": QUERIES, "label": [0, 1, 2, 0]}, features=feats)


def _records(store):
    return sorted(store.iter_records({}), key=lambda e: e.source.loc)


def test_kinds_and_cli_choices_come_from_one_list():
    assert "dataset" in KINDS
    p = build_parser("ingest")
    sub = next(a for a in p._actions if a.dest == "cmd").choices
    assert tuple(next(a for a in sub["ingest"]._actions if a.dest == "kind").choices) == KINDS
    review = next(a for a in sub["review"]._actions if a.dest == "review_cmd").choices["approve"]
    assert tuple(next(a for a in review._actions if a.dest == "source_kind").choices) == SOURCE_KINDS
    assert "doc" in SOURCE_KINDS


def test_parquet_file_ingests_text_and_label(tmp_path, store):
    p = tmp_path / "b77.parquet"
    pq.write_table(pa.table({"text": QUERIES, "label": ["top_up", "card_declined", "card_arrival", "top_up"]}), p)
    assert detect_kind(p) == "dataset"
    rep = ingest_paths(store, [p], workers=0)
    assert rep.totals()["added"] == 4 and rep.totals()["rejected"] == 0 and rep.files[0].kind == "dataset"
    recs = _records(store)
    assert [r.label for r in recs] == ["top_up", "card_declined", "card_arrival", "top_up"]
    assert recs[0].messages == [{"role": "user", "content": QUERIES[0]}, {"role": "assistant", "content": "top_up"}]
    assert recs[0].source.kind == "ticket" and recs[0].source.loc == "row 0" and recs[0].source.file == str(p)


def test_saved_datasets_folder_ingests_with_its_labels(tmp_path, store):
    """Dataset.from_dict(...).save_to_disk: a folder, detected by dataset_info.json + state.json; ClassLabel
    integers become their names, as BANKING77's labels do."""
    d = tmp_path / "saved"
    _labelled(tmp_path).save_to_disk(str(d))
    assert detect_kind(d) == "dataset"
    rep = ingest_paths(store, [d], workers=0)
    assert rep.totals()["added"] == 4 and rep.totals()["rejected"] == 0
    assert [r.label for r in _records(store)] == ["top_up", "card_declined", "card_arrival", "top_up"]
    assert {m["content"] for r in _records(store) for m in r.messages if m["role"] == "assistant"} == set(INTENTS)


def test_walking_a_folder_reads_a_saved_dataset_once_and_a_dataset_dict_by_split(tmp_path, store):
    import datasets

    root = tmp_path / "in"
    ds = _labelled(tmp_path)
    ds.save_to_disk(str(root / "one"))
    datasets.DatasetDict({"train": ds.select([0, 1]), "test": ds.select([2])}).save_to_disk(str(root / "dd"))
    found = list(walk([root]))
    assert found == [root / "dd", root / "one"]  # not their .arrow / .json files
    rep = ingest_paths(store, [root], workers=0)
    assert rep.totals()["read"] == 3 + 4 and rep.totals()["rejected"] == 0 and rep.totals()["added"] == 4
    first = next(r for r in store.iter_records({}) if r.messages[0]["content"] == QUERIES[0])
    assert {loc for _, loc in store.occurrences(first.id)} >= {"train row 0", "row 0"}  # DatasetDict rows: "<split> row N"


def test_chat_tables_arrow_feather_prompt_completion_and_rejects(tmp_path, store):
    import pyarrow.feather as feather

    msgs = [[{"role": "user", "content": "hi, my email is ann@example.com"}, {"role": "assistant", "content": "hello"}],
            [{"role": "assistant", "content": "greeting first"}, {"role": "user", "content": "hi"}]]
    pq.write_table(pa.table({"messages": msgs, "label": [7, None]}), tmp_path / "chat.parquet")
    with pa.OSFile(str(tmp_path / "stream.arrow"), "wb") as f:  # IPC stream format, as datasets writes it
        t = pa.table({"prompt": ["2+2?", ""], "completion": ["4", "empty prompt"]})
        with pa.ipc.new_stream(f, t.schema) as w:
            w.write_table(t)
    feather.write_feather(pa.table({"instruction": ["Say hi"], "input": [""], "output": ["hi"]}), tmp_path / "a.feather")
    rep = ingest_paths(store, [tmp_path / "chat.parquet", tmp_path / "stream.arrow", tmp_path / "a.feather"], workers=0)
    t = rep.totals()
    assert t["read"] == 5 and t["added"] == 3 and t["rejected"] == 2
    by_fmt = {r.signals["format"]: r for r in store.iter_records({})}
    assert set(by_fmt) == {"openai", "prompt-completion", "alpaca"}
    assert by_fmt["openai"].label == "7" and "[EMAIL]" in by_fmt["openai"].messages[0]["content"]
    assert all(r.source.kind == "chat-file" for r in by_fmt.values())
    rejects = [json.loads(ln) for ln in Path(rep.rejects_file).read_text().splitlines()]
    assert {(r["file"].rsplit("/", 1)[-1], r["loc"]) for r in rejects} == {("chat.parquet", "row 1"), ("stream.arrow", "row 1")}
    assert any("roles-alternate" in r["reason"] for r in rejects) and any("no-empty-turns" in r["reason"] for r in rejects)


def test_unreadable_and_empty_tables_are_rejects(tmp_path, store):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}), empty)
    items = list(tables.read(bad, ReadOptions())) + list(tables.read(empty, ReadOptions()))
    assert all(isinstance(i, Reject) for i in items) and len(items) == 2
    assert items[0].reason.startswith("cannot read Parquet file") and items[1].reason == "empty dataset: no rows"


def test_parquet_and_csv_of_the_same_rows_give_the_same_records(tmp_path):
    """Ticket tables go through the CSV fast path (tickets.build_batch, work sharing): same ids, labels, splits."""
    from curate.store import open_store

    rows = [{"ticket_id": f"T{i}", "text": f"query {i} about my card, call 415-555-01{i % 10}2", "category": INTENTS[i % 3]}
            for i in range(60)]
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    mapping = {"columns": {"user": "text", "assistant": "category", "label": "category", "group": "ticket_id"},
               "system": "Classify."}
    seen = []
    for name, workers in (("t.csv", 1), ("t.parquet", 0), ("t.parquet", 1)):
        s = open_store(tmp_path / f"ws-{name}-{workers}")
        rep = ingest_paths(s, [tmp_path / name], mapping=mapping, batch_size=25, workers=workers)
        assert rep.totals()["added"] == 60
        seen.append(sorted((e.id, e.label, e.group, e.split, json.dumps(e.signals)) for e in s.iter_records({})))
        s.close()
    assert seen[0] == seen[1] == seen[2]


def test_hf_id_loads_through_load_dataset(monkeypatch, store):
    import datasets

    calls = []

    def fake_load(repo, split=None, **kw):
        calls.append((repo, split))
        ds = datasets.Dataset.from_dict({"text": QUERIES[:2], "label": [1, 2]},
                                        features=datasets.Features({"text": datasets.Value("string"),
                                                                    "label": datasets.ClassLabel(names=INTENTS)}))
        return ds if split else datasets.DatasetDict({"train": ds, "test": ds.select([0])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(tables, "_hub_access", lambda: _Ctx("online"))
    rep = ingest_paths(store, ["hf://PolyAI/banking77:train"], workers=0)
    assert calls == [("PolyAI/banking77", "train")] and rep.files[0].file == "hf://PolyAI/banking77:train"
    assert rep.totals()["added"] == 2 and {r.label for r in store.iter_records({})} == {"card_declined", "card_arrival"}
    rep = ingest_paths(store, ["hf://PolyAI/banking77"], workers=0)
    assert calls[-1] == ("PolyAI/banking77", None) and rep.totals()["read"] == 3 and rep.totals()["already_present"] == 3


class _Ctx:
    def __init__(self, v):
        self.v = v

    def __enter__(self):
        return self.v

    def __exit__(self, *a):
        return False


def test_hf_id_without_network_or_cache_is_one_clear_error(monkeypatch, tmp_path, capsys):
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    rc = main(["ingest", "hf://workbench-tests/absent-dataset:train", "--workspace", str(tmp_path / "ws"), "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot load hf://workbench-tests/absent-dataset:train")
    assert "HF cache" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_forced_kind_on_a_dataset_folder_is_a_reject(tmp_path, store):
    d = tmp_path / "saved"
    _labelled(tmp_path).save_to_disk(str(d))
    rep = ingest_paths(store, [d], kind="tickets", workers=0)
    assert rep.totals()["rejected"] == 1 and rep.totals()["added"] == 0
    assert store.count() == 0


def test_parquet_bench_smoke(tmp_path):
    """bench/ingest_parquet.py at a tiny size: both formats ingest the same records; the JSON has the ratio."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "b.json"
    p = subprocess.run([sys.executable, str(root / "bench" / "ingest_parquet.py"), "--rows", "300", "--rounds", "1",
                        "--out", str(out)], capture_output=True, text=True, cwd=root, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["same_records"] is True and res["parquet_vs_csv"]["cpu"] > 0
    assert {r["records"] for f in res["runs"].values() for r in f} == {300}
