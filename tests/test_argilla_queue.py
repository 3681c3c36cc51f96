"""Argilla queue mapping (fast tier): records → Argilla items, responses → review events,
schema checks, connection resolution and errors — all against ``respx`` HTTP mocks
shaped like the real server's answers (captured from argilla-server 2.8.0)."""
from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import httpx
import respx

from curate import argilla_queue as aq
from curate import cli
from curate.example import Example, Source
from curate.review import DEFAULT_REJECT_REASONS

URL = "http://argilla.test"
KEY = "owner.key.123"
WS_ID = "655c6b04-2dd6-432d-93d8-4b67b45bdb33"
DS_ID = "86cdbda8-8222-44b4-8c0b-774093c76d60"
USERS = {"u-alice": "alice", "u-bob": "bob"}
ME = {"id": "6649f143-3ab2-4eb5-a101-5e4cb854a92e", "first_name": "Owner", "last_name": None, "username": "owner",
      "role": "owner", "inserted_at": "2026-11-25T03:53:23.975383", "updated_at": "2026-11-25T03:53:23.975383"}
ROOT = Path(__file__).resolve().parent.parent


def ex(user: str, reply: str, **kw) -> Example:
    return Example(messages=[{"role": "system", "content": "Classify."}, {"role": "user", "content": user},
                             {"role": "assistant", "content": reply}],
                   source=Source(kind="ticket", file="t.csv", loc=f"row {len(user)}"), **kw)


def remote_schema(drop: str | None = None, **patch) -> dict[str, list[dict]]:
    """The REST shape of a queue dataset's schema (fields/questions/metadata-properties items)."""
    exp = aq.expected_schema()
    out: dict[str, list[dict]] = {}
    for part, items in exp.items():
        out[part] = []
        for name, want in items.items():
            if name == drop:
                continue
            settings = {"type": want["type"]}
            if "options" in want:
                settings["options"] = [{"value": o, "text": o, "description": None} for o in want["options"]]
            item = {"id": f"q-{name}", "name": name, "title": name, "required": name in ("decision", "chat", "context"),
                    "settings": settings}
            item.update(patch.get(name, {}))
            out[part].append(item)
    return out


def mock_server(m: respx.Router, schema: dict | None = None, records: list[dict] | None = None, datasets: bool = True):
    schema = schema or remote_schema()
    m.get("/api/v1/me").respond(200, json=ME)
    m.get("/api/v1/me/workspaces").respond(200, json={"items": [{"id": WS_ID, "name": "workbench"}]})
    m.get("/api/v1/me/datasets").respond(200, json={"items": [{"id": DS_ID, "name": "q1", "workspace_id": WS_ID}] if datasets else []})
    m.get(f"/api/v1/datasets/{DS_ID}/fields").respond(200, json={"items": schema["fields"]})
    m.get(f"/api/v1/datasets/{DS_ID}/questions").respond(200, json={"items": schema["questions"]})
    m.get(f"/api/v1/me/datasets/{DS_ID}/metadata-properties").respond(200, json={"items": schema["metadata"]})
    recs = records if records is not None else []

    def page(request: httpx.Request) -> httpx.Response:
        off, lim = int(request.url.params.get("offset", 0)), int(request.url.params.get("limit", 50))
        return httpx.Response(200, json={"items": recs[off : off + lim], "total": len(recs)})

    m.get(f"/api/v1/datasets/{DS_ID}/records").mock(side_effect=page)
    for uid, name in USERS.items():
        m.get(f"/api/v1/users/{uid}").respond(200, json={"id": uid, "username": name, "role": "annotator"})
    return recs


def response(rid: str, user: str, status: str, values: dict | None, at: str = "2026-11-25T04:00:00") -> dict:
    return {"id": rid, "values": values, "status": status, "record_id": "srv", "user_id": user,
            "inserted_at": at, "updated_at": at}


def vals(decision=None, reasons=None, comment=None, reply=None) -> dict:
    v = {}
    for k, x in (("decision", decision), ("reasons", reasons), ("comment", comment), ("edited_reply", reply)):
        if x is not None:
            v[k] = {"value": x}
    return v


def rec(e: Example, responses: list[dict], **kw) -> dict:
    return {"id": f"srv-{e.id}", "external_id": e.id, "status": "pending", "fields": {}, "metadata": {},
            "responses": responses, "suggestions": [], "dataset_id": DS_ID, **kw}


def conn_config(ws: Path) -> None:
    (ws / "config.toml").write_text(f'min_approvals = 1\n\n[argilla]\nurl = "{URL}"\napi_key = "{KEY}"\n')


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    o = capsys.readouterr()
    return rc, o.out, o.err


# ---------------------------------------------------------------------------
def test_sdk_settings_match_the_expected_schema():
    with respx.mock(base_url=URL) as m:
        m.get("/api/v1/me").respond(200, json=ME)
        client = aq.sdk_client(aq.Connection(URL, KEY, "test"))
        ser = aq.build_settings(client, min_submitted=2).serialize()
    assert aq.schema_problems(ser) == ([], [])
    reasons = next(q for q in ser["questions"] if q["name"] == "reasons")
    assert [o["value"] for o in reasons["settings"]["options"]] == list(DEFAULT_REJECT_REASONS)
    assert ser["distribution"]["min_submitted"] == 2


def test_schema_problems_name_each_difference():
    errs, warns = aq.schema_problems(remote_schema(drop="edited_reply"))
    assert errs == ["question 'edited_reply' is missing"]
    bad = remote_schema(decision={"settings": {"type": "label_selection", "options": [{"value": "yes"}, {"value": "no"}]}},
                        split={"settings": {"type": "integer"}})
    errs, _ = aq.schema_problems(bad)
    assert errs == ["question 'decision' has options ['yes', 'no'], expected ['approve', 'reject']",
                    "metadata property 'split' has type 'integer', expected 'terms'"]
    extra = remote_schema()
    extra["questions"].append({"name": "sentiment", "required": False, "settings": {"type": "rating"}})
    extra["questions"].append({"name": "topic", "required": True, "settings": {"type": "label_selection"}})
    errs, warns = aq.schema_problems(extra)
    assert warns == ["extra question 'sentiment' is ignored"]
    assert errs == ["extra required question 'topic' (labelers must answer something we do not read)"]


def test_metadata_never_null_and_suggestions_follow_signals():
    plain = ex("where is my card", "card_arrival")
    md = aq.record_metadata(plain)
    assert md == {"source_kind": "ticket", "origin": "human", "split": "unknown", "label": "none",
                  "duplicate": "no", "leak": "no", "pii": "no"}  # no reward key at all rather than null
    assert aq.signal_verdict(plain) == (None, [], 0.0)
    qids = {"decision": "qd", "reasons": "qr", "edited_reply": "qe"}
    assert aq.record_suggestions(plain, qids) == [{"question_id": "qe", "value": "card_arrival", "agent": aq.AGENT}]

    leaky = ex("what is my limit", "card_limit", label="card_limit",
               signals={"leakage": [{"heldout_id": "h1", "score": 0.97, "text": "my limit?"}], "duplicate_of": "abc",
                        "reward": {"score": 2.0, "rationale": "terse"}})
    md = aq.record_metadata(leaky)
    assert (md["leak"], md["duplicate"], md["reward_score"], md["label"]) == ("yes", "yes", 2.0, "card_limit")
    verdict, reasons, conf = aq.signal_verdict(leaky)
    assert verdict == "reject" and conf == 0.9
    assert reasons == ["leaks held-out / eval data", "duplicate", "unhelpful or off-policy reply"]
    assert set(reasons) <= set(DEFAULT_REJECT_REASONS)
    sugg = aq.record_suggestions(leaky, qids)
    assert sugg[0] == {"question_id": "qd", "value": "reject", "score": 0.9, "agent": aq.AGENT}
    assert sugg[1]["value"] == reasons and sugg[1]["score"] == [0.9] * 3
    ctx = aq.context_markdown(leaky)
    assert "`h1`" in ctx and "duplicate of** `abc`" in ctx and "terse" in ctx and "t.csv" in ctx

    synth = ex("refund?", "refund_request", origin={"kind": "synthetic", "model": "m", "strategy": "paraphrase"},
               signals={"reward": {"score": 1.5}})
    assert aq.signal_verdict(synth)[1] == ["low quality synthetic"]
    good = ex("top up", "top_up", signals={"reward": {"score": 4.5}})
    assert aq.signal_verdict(good) == ("approve", [], 0.9)
    item = aq.to_argilla_item(good, qids)
    assert item["external_id"] == good.id and item["fields"]["chat"] == good.messages
    assert item["metadata"]["reward_score"] == 4.5


def test_plan_event_maps_answers():
    e = ex("where is my card", "card_arrival")
    assert aq.plan_event(e, vals("approve", reply="card_arrival")) == {"action": "approve", "reason": None}
    assert aq.plan_event(e, vals("approve", reply="  card_arrival \n")) == {"action": "approve", "reason": None}
    assert aq.plan_event(e, vals("reject", ["wrong label", "other"], "see ticket")) == \
        {"action": "reject", "reason": "wrong label; other; see ticket"}
    plan = aq.plan_event(e, vals("approve", reply="card_delivery_estimate"))
    assert plan["action"] == "edit" and plan["messages"][-1] == {"role": "assistant", "content": "card_delivery_estimate"}
    assert plan["messages"][:-1] == e.messages[:-1]
    assert aq.plan_event(e, vals(reasons=["other"]))["action"] is None
    assert "without a valid decision" in aq.plan_event(e, None)["problem"]


def test_pull_maps_responses_idempotently(workspace, capsys):
    from curate.store import open_store

    conn_config(workspace)
    store = open_store(workspace)
    a, b, c, d, e, f = (ex(f"question {i}", f"label_{i}") for i in range(6))
    store.add_examples([a, b, c, d, e, f])
    store.add_event(f.id, "carol", "approve", frontend="streamlit")
    records = [
        rec(a, [response("r1", "u-alice", "submitted", vals("approve", reply="label_0"))]),
        rec(b, [response("r2", "u-bob", "submitted", vals("reject", ["wrong answer"], "nope"))]),
        rec(c, [response("r3", "u-alice", "submitted", vals("approve", reply="label_fixed"))]),
        rec(d, [response("r4", "u-alice", "discarded", {}), response("r5", "u-bob", "draft", vals("approve"))]),
        rec(e, []),
        rec(f, [response("r6", "u-bob", "submitted", vals("reject", ["duplicate"]))]),
        {**rec(ex("elsewhere", "x"), [response("r7", "u-bob", "submitted", vals("approve"))]), "external_id": "not-ours"},
    ]
    with respx.mock(base_url=URL, assert_all_called=False) as m:
        mock_server(m, records=records)
        rc, out, err = run(capsys, "review", "pull", "--queue", "q1", "--workspace", str(workspace), "--json")
        assert rc == 0, err
        rep = json.loads(out)
        assert rep["events_added"] == {"approve": 1, "reject": 2, "edit": 1, "undo": 0}
        assert (rep["submitted"], rep["discarded"], rep["draft"]) == (4, 1, 1)  # responses on known records
        assert rep["discarded_records"] == [{"record_id": d.id, "reviewer": "alice", "response_id": "r4", "at": "2026-11-25T04:00:00"}]
        assert rep["unknown_records"] == ["not-ours"]
        assert [x["record_id"] for x in rep["conflicts_with_other_frontends"]] == [f.id]
        store = open_store(workspace)
        ev = lambda r: [(x["reviewer"], x["action"], x["frontend"], x["reason"], x["external_id"]) for x in store.events(record_id=r)]
        assert ev(a.id) == [("alice", "approve", "argilla", None, "argilla:r1:2026-11-25T04:00:00")]
        assert ev(b.id) == [("bob", "reject", "argilla", "wrong answer; nope", "argilla:r2:2026-11-25T04:00:00")]
        assert [x[:3] for x in ev(c.id)] == [("alice", "edit", "argilla")]
        new = store.get(store.events(record_id=c.id)[0]["new_record_id"])
        assert new.parent_id == c.id and new.messages[-1]["content"] == "label_fixed" and new.status == "pending"
        assert ev(d.id) == [] and ev(e.id) == []
        assert {s.id: s.status for s in store.get_many([a.id, b.id, c.id, d.id])} == {a.id: "approved", b.id: "rejected", c.id: "edited", d.id: "pending"}
        assert store.get(f.id).status == "rejected"  # carol approved in Streamlit, bob rejected in Argilla: any reject wins
        assert store.meta_get("argilla:q1:discarded")[0]["record_id"] == d.id
        n = len(store.events())

        # pulling again adds nothing
        rc, out, err = run(capsys, "review", "pull", "--queue", "q1", "--workspace", str(workspace), "--json")
        rep = json.loads(out)
        assert rep["events_added"] == {"approve": 0, "reject": 0, "edit": 0, "undo": 0} and rep["already_pulled"] == 4
        assert len(open_store(workspace).events()) == n

        # alice changes her mind on a (approve -> reject), bob's draft on d is submitted, bob withdraws b (discard)
        records[0]["responses"] = [response("r1", "u-alice", "submitted", vals("reject", ["wrong label"]), at="2026-11-25T05:00:00")]
        records[3]["responses"][1] = response("r5", "u-bob", "submitted", vals("approve"), at="2026-11-25T05:00:00")
        records[1]["responses"] = [response("r2", "u-bob", "discarded", vals("reject"), at="2026-11-25T05:00:00")]
        rc, out, err = run(capsys, "review", "pull", "--queue", "q1", "--workspace", str(workspace), "--json")
        rep = json.loads(out)
        assert rep["events_added"] == {"approve": 1, "reject": 1, "edit": 0, "undo": 2}
        store = open_store(workspace)
        assert [x[1] for x in ev(a.id)] == ["approve", "undo", "reject"] and store.get(a.id).status == "rejected"
        assert [x[1] for x in ev(b.id)] == ["reject", "undo"] and store.get(b.id).status == "pending"
        assert [x[1] for x in ev(d.id)] == ["approve"] and store.get(d.id).status == "approved"
        rc, out, err = run(capsys, "review", "pull", "--queue", "q1", "--workspace", str(workspace), "--json")
        assert json.loads(out)["events_added"] == {"approve": 0, "reject": 0, "edit": 0, "undo": 0}


def test_push_adds_new_refreshes_unanswered_and_never_touches_answered(workspace, capsys):
    from curate.store import open_store

    conn_config(workspace)
    store = open_store(workspace)
    a, b, c, d = (ex(f"question {i}", f"label_{i}") for i in range(4))
    store.add_examples([a, b, c, d])
    qids = {q["name"]: q["id"] for q in remote_schema()["questions"]}
    fresh_c = aq.to_argilla_item(store.get(c.id), qids)
    records = [
        rec(a, [response("r1", "u-alice", "draft", vals("approve"))], metadata={"stale": 1}),  # answered (draft): untouched
        rec(b, [], metadata={"stale": 1}),  # unanswered, stale: refreshed
        rec(c, [], metadata=fresh_c["metadata"], fields=fresh_c["fields"],
            suggestions=[{"question_id": s["question_id"], "value": s["value"]} for s in fresh_c["suggestions"]]),
    ]
    with respx.mock(base_url=URL, assert_all_called=False) as m:
        mock_server(m, records=records)
        bulk = m.put(f"/api/v1/datasets/{DS_ID}/records/bulk").respond(200, json={"items": [], "updated_item_ids": []})
        rc, out, err = run(capsys, "review", "push", "--queue", "q1", "--workspace", str(workspace), "--json")
        assert rc == 0, err
        rep = json.loads(out)
        assert (rep["selected"], rep["added"], rep["refreshed"], rep["already_answered"], rep["unchanged"]) == (4, 1, 1, 1, 1)
        assert bulk.call_count == 1
        items = json.loads(bulk.calls[0].request.content)["items"]
        assert [i.get("external_id") for i in items] == [d.id, b.id]
        assert "id" not in items[0] and items[1]["id"] == f"srv-{b.id}"
        assert items[0]["fields"]["chat"] == d.messages and items[0]["metadata"]["split"] in ("train", "heldout")
        assert all(v is not None for i in items for v in i["metadata"].values())


def test_push_creates_workspace_and_dataset_through_the_sdk(workspace, capsys):
    from curate.store import open_store

    conn_config(workspace)
    open_store(workspace).add_examples([ex("hello", "greeting")])
    with respx.mock(base_url=URL, assert_all_called=False) as m:
        mock_server(m, datasets=False)
        m.get("/api/v1/me/workspaces").mock(side_effect=[httpx.Response(200, json={"items": []}),
                                                          httpx.Response(200, json={"items": [{"id": WS_ID, "name": "team-ws"}]})])
        ws_post = m.post("/api/v1/workspaces").respond(201, json={"id": WS_ID, "name": "team-ws"})
        # the SDK's dataset creation fails on this mock server: the error must be clear, without traceback
        rc, out, err = run(capsys, "review", "push", "--queue", "q1", "--workspace", str(workspace), "--workspace-name", "team-ws")
    assert ws_post.call_count == 1 and json.loads(ws_post.calls[0].request.content) == {"name": "team-ws"}
    assert rc == 1 and "creating the Argilla dataset 'q1' in workspace 'team-ws' failed" in err and "Traceback" not in err


def test_clear_errors(workspace, capsys, monkeypatch):
    monkeypatch.delenv("ARGILLA_API_KEY", raising=False)
    monkeypatch.delenv("ARGILLA_API_URL", raising=False)
    rc, out, err = run(capsys, "review", "pull", "--queue", "q1", "--workspace", str(workspace))
    assert rc == 1 and "no Argilla server configured" in err and "make argilla-up" in err
    rc, out, err = run(capsys, "review", "pull", "--queue", "q1", "--workspace", str(workspace), "--argilla-url", URL)
    assert rc == 1 and "no API key for http://argilla.test: export ARGILLA_API_KEY" in err
    rc, out, err = run(capsys, "review", "pull", "--queue", "bad name!", "--workspace", str(workspace))
    assert rc == 1 and "bad --queue" in err

    conn_config(workspace)
    with respx.mock(base_url=URL) as m:
        m.get("/api/v1/me").mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
        rc, out, err = run(capsys, "review", "push", "--queue", "q1", "--workspace", str(workspace))
    assert rc == 1 and f"cannot reach the Argilla server at {URL}" in err and "Traceback" not in err
    with respx.mock(base_url=URL) as m:
        m.get("/api/v1/me").respond(401, json={"detail": "Could not validate credentials"})
        rc, out, err = run(capsys, "review", "pull", "--queue", "q1", "--workspace", str(workspace))
    assert rc == 1 and "rejected the API key from" in err and "config.toml [argilla].api_key" in err
    with respx.mock(base_url=URL, assert_all_called=False) as m:
        mock_server(m, schema=remote_schema(drop="decision"))
        rc, out, err = run(capsys, "review", "pull", "--queue", "q1", "--workspace", str(workspace))
    assert rc == 1 and "changed by hand" in err and "question 'decision' is missing" in err
    with respx.mock(base_url=URL, assert_all_called=False) as m:
        mock_server(m, datasets=False)
        rc, out, err = run(capsys, "review", "pull", "--queue", "q1", "--workspace", str(workspace))
    assert rc == 1 and "no Argilla dataset 'q1' in workspace 'workbench'" in err and "review push --queue q1" in err


def test_connection_precedence(workspace, monkeypatch):
    from curate.store import open_store

    conn_config(workspace)
    store = open_store(workspace)
    ns = lambda **kw: type("A", (), {"argilla_url": None, "api_key_env": None, "workspace_name": None, **kw})()
    monkeypatch.setenv("ARGILLA_API_KEY", "env-key")
    c = aq.resolve_connection(ns(), store)
    assert (c.url, c.api_key, c.workspace) == (URL, KEY, "workbench")  # the config wins over a stray env key
    monkeypatch.setenv("TEAM_KEY", "team-key")
    c = aq.resolve_connection(ns(api_key_env="TEAM_KEY", workspace_name="team"), store)
    assert (c.api_key, c.key_source, c.workspace) == ("team-key", "$TEAM_KEY", "team")
    c = aq.resolve_connection(ns(argilla_url="https://argilla.example.com/"), store)
    assert (c.url, c.api_key) == ("https://argilla.example.com", "env-key")


def test_argilla_up_writes_only_its_table(tmp_path):
    spec = importlib.util.spec_from_file_location("argilla_local", ROOT / "scripts" / "argilla_local.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = tmp_path / "config.toml"
    cfg.write_text('min_approvals = 2\n\n[argilla]\nurl = "http://old"\nworkspace = "x"\n\n[labelers]\nann = "pw"\n')
    mod.write_argilla_table(cfg, {"url": "http://127.0.0.1:6900", "api_key": 'k"ey', "username": "owner"})
    got = tomllib.loads(cfg.read_text())
    assert got == {"min_approvals": 2, "labelers": {"ann": "pw"},
                   "argilla": {"url": "http://127.0.0.1:6900", "api_key": 'k"ey', "username": "owner"}}
    mod.write_argilla_table(tmp_path / "new.toml", {"url": "http://u"})
    assert tomllib.loads((tmp_path / "new.toml").read_text()) == {"argilla": {"url": "http://u"}}
