"""Argilla queues against a real Argilla server (integration tier), plus one labeler in its real web UI.

The module fixture runs ``scripts/argilla.sh up`` with a temporary state
folder and workspace (the first run installs ``.venv-argilla``: minutes), and
``down`` at the end. The test pushes 50 banking77 records, answers them as two
annotators through the REST API (approve, reject with reasons, edit, discard,
draft, disagreement, a conflicting Streamlit decision), pulls, and checks the
exact events and statuses; reruns are no-ops; a changed answer is re-pulled;
a schema changed by hand, a wrong key and a stopped server give clear errors.
"""
from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest

from curate import cli
from curate.store import open_store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "argilla.sh"
QUEUE = "banking-review"


def sh(*args: str, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("argilla")
    ws, state = base / "ws", base / "state"
    env = dict(os.environ, ARGILLA_STATE_DIR=str(state), ARGILLA_PORT="0", HF_HUB_OFFLINE="1")
    up = sh("up", "--workspace", str(ws), env=env)
    assert up.returncode == 0, f"argilla up failed:\n{up.stdout}\n{up.stderr}"
    assert "API key:" in up.stdout and "URL:" in up.stdout
    cfg = tomllib.loads((ws / "config.toml").read_text())["argilla"]
    try:
        yield {"ws": ws, "state": state, "env": env, "url": cfg["url"], "key": cfg["api_key"]}
    finally:
        down = sh("down", "--state-dir", str(state), env=env, timeout=120)
        assert down.returncode == 0, down.stderr


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def rest(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"X-Argilla-Api-Key": key}, timeout=60)


def make_annotator(owner: httpx.Client, ws_id: str, name: str) -> str:
    r = owner.post("/api/v1/users", json={"first_name": name.title(), "username": name, "password": name + "-pass-123",
                                         "role": "annotator"})
    assert r.status_code == 201, r.text
    uid = r.json()["id"]
    r = owner.post(f"/api/v1/workspaces/{ws_id}/users", json={"user_id": uid})
    assert r.status_code == 201, r.text
    return owner.get(f"/api/v1/users/{uid}").json()["api_key"]


def dataset_records(client: httpx.Client, ds_id: str) -> dict[str, dict]:
    r = client.get(f"/api/v1/datasets/{ds_id}/records", params={"include": ["responses", "suggestions"], "limit": 1000})
    assert r.status_code == 200, r.text
    return {x["external_id"]: x for x in r.json()["items"]}


def answer(client: httpx.Client, record: dict, status: str, decision: str | None = None, reasons=None,
           comment: str | None = None, reply: str | None = None) -> dict:
    values = {}
    if decision:
        values["decision"] = {"value": decision}
    if reasons:
        values["reasons"] = {"value": reasons}
    if comment:
        values["comment"] = {"value": comment}
    if reply is not None:
        values["edited_reply"] = {"value": reply}
    r = client.post(f"/api/v1/records/{record['id']}/responses", json={"values": values, "status": status})
    assert r.status_code == 201, r.text
    return r.json()


def test_labeler_in_the_real_argilla_ui(stack, capsys, tmp_path, artifacts_dir):
    """A labeler clicks in Argilla's web UI (headless Chromium): approve, edit the pre-filled reply,
    reject with a reason, discard; pull maps exactly that (the UI submits the pre-filled reply too)."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is required (make system-deps)"
    ws = tmp_path / "ui-ws"
    ws.mkdir()
    cfg = tomllib.loads((stack["ws"] / "config.toml").read_text())["argilla"]
    (ws / "config.toml").write_text("[argilla]\n" + "".join(f'{k} = "{v}"\n' for k, v in cfg.items()))
    rc, out, err = run_cli(capsys, "ingest", str(ROOT / "data" / "banking77_demo"), "--workspace", str(ws))
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "review", "push", "--queue", "ui-check", "--workspace", str(ws), "--limit", "4")
    assert rc == 0, err
    store = open_store(ws)
    ids = [e.id for e in store.query({}, limit=4)]
    owner = rest(stack["url"], stack["key"])
    ds_id = next(d["id"] for d in owner.get("/api/v1/me/datasets").json()["items"] if d["name"] == "ui-check")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.goto(stack["url"] + "/sign-in")
            pg.fill("input[type=text]", cfg["username"])
            pg.fill("input[type=password]", cfg["password"])
            pg.keyboard.press("Enter")
            pg.wait_for_url("**/")
            pg.goto(f"{stack['url']}/dataset/{ds_id}/annotation-mode")
            submit = pg.get_by_role("button", name="Submit")
            shown: list[str] = []

            def current_record() -> str:  # the UI's order is its own: read the record id from the context field
                pg.get_by_text("Context (source, signals)").wait_for()
                rid = re.search(r"record ([0-9a-f]{24})", pg.get_by_text(re.compile(r"record [0-9a-f]{24}")).first.inner_text())
                shown.append(rid.group(1))
                return rid.group(1)

            def answered(n: int) -> None:  # wait until the server holds n responses and the next record is shown
                for _ in range(80):
                    if sum(bool(r["responses"]) for r in dataset_records(owner, ds_id).values()) >= n:
                        pg.wait_for_timeout(500)
                        return
                    pg.wait_for_timeout(250)
                raise AssertionError(f"the UI did not store response {n}")

            def choose(label: str) -> None:
                pg.get_by_text(label, exact=True).first.click()

            current_record()
            choose("approve")
            submit.click()
            answered(1)
            current_record()
            choose("approve")
            pg.locator("[contenteditable=true]").last.click()
            pg.keyboard.press("Control+A")
            pg.keyboard.type("edited_in_the_ui")
            submit.click()
            answered(2)
            current_record()
            choose("reject")
            choose("wrong label")
            submit.click()
            answered(3)
            current_record()
            pg.get_by_role("button", name="Discard").click()
            answered(4)
            pg.screenshot(path=str(artifacts_dir / "argilla_ui_after.png"))
        finally:
            browser.close()
    rc, out, err = run_cli(capsys, "review", "pull", "--queue", "ui-check", "--workspace", str(ws))
    assert rc == 0, err
    store = open_store(ws)
    assert sorted(shown) == sorted(ids), "the UI showed each pushed record once"
    evs = {i: [(e["reviewer"], e["action"], e["reason"]) for e in store.events(record_id=i)] for i in shown}
    assert evs == {shown[0]: [("owner", "approve", None)], shown[1]: [("owner", "edit", None)],
                   shown[2]: [("owner", "reject", "wrong label")], shown[3]: []}
    new = store.get(store.events(record_id=shown[1])[0]["new_record_id"])
    assert new.messages[-1]["content"] == "edited_in_the_ui" and new.parent_id == shown[1]
    assert [store.get(i).status for i in shown] == ["approved", "edited", "rejected", "pending"]


def test_push_answer_pull_rerun_and_errors(stack, capsys):
    ws, url = stack["ws"], stack["url"]
    rc, out, err = run_cli(capsys, "ingest", str(ROOT / "data" / "banking77_demo"), "--workspace", str(ws))
    assert rc == 0, err
    store = open_store(ws)
    ids = [e.id for e in store.query({}, limit=50)]
    leak_id, dup_id = ids[45], ids[46]
    store.update_signals({leak_id: {"leakage": [{"heldout_id": "h1", "score": 0.97, "text": "what is my card limit"}]}})

    # -- push 50 -----------------------------------------------------------
    rc, out, err = run_cli(capsys, "review", "push", "--queue", QUEUE, "--workspace", str(ws), "--limit", "50", "--all-statuses", "--json")
    assert rc == 0, err
    assert '"added": 50' in out and '"dataset_created": true' in out
    owner = rest(url, stack["key"])
    ws_id = next(w["id"] for w in owner.get("/api/v1/me/workspaces").json()["items"] if w["name"] == "workbench")
    ds_id = next(d["id"] for d in owner.get("/api/v1/me/datasets").json()["items"] if d["name"] == QUEUE)
    recs = dataset_records(owner, ds_id)
    assert sorted(recs) == sorted(ids)
    qname = {q["id"]: q["name"] for q in owner.get(f"/api/v1/datasets/{ds_id}/questions").json()["items"]}
    sugg = {qname[s["question_id"]]: s["value"] for s in recs[leak_id]["suggestions"]}
    assert sugg["decision"] == "reject" and sugg["reasons"] == ["leaks held-out / eval data"]
    ex0 = store.get(ids[0])
    assert recs[ids[0]]["fields"]["chat"] == ex0.messages
    assert recs[ids[0]]["metadata"] == {"source_kind": "ticket", "origin": "human", "split": ex0.split, "label": ex0.label,
                                        "duplicate": "no", "leak": "no", "pii": "yes" if ex0.signals.get("pii") else "no"}
    assert recs[leak_id]["metadata"]["leak"] == "yes"
    assert all(None not in r["metadata"].values() for r in recs.values())

    # signals change after the push: an unanswered record is refreshed, then nothing
    store.update_signals({dup_id: {"duplicate_of": ids[0], "dedup_at": 1.0}})
    rc, out, err = run_cli(capsys, "review", "push", "--queue", QUEUE, "--workspace", str(ws), "--limit", "50", "--all-statuses", "--json")
    assert rc == 0, err
    assert '"refreshed": 1' in out and '"added": 0' in out
    assert dataset_records(owner, ds_id)[dup_id]["metadata"]["duplicate"] == "yes"

    # -- two annotators answer --------------------------------------------
    alice = rest(url, make_annotator(owner, ws_id, "alice"))
    bob = rest(url, make_annotator(owner, ws_id, "bob"))
    orig = {i: store.get(i).messages[-1]["content"] for i in ids}
    for i in ids[0:20]:
        answer(alice, recs[i], "submitted", "approve", reply=orig[i])  # the UI submits the pre-filled reply
    for i in ids[20:25]:
        answer(alice, recs[i], "submitted", "reject", reasons=["wrong label"])
    for i in ids[25:35]:
        answer(bob, recs[i], "submitted", "approve")
    for i in ids[35:38]:
        answer(bob, recs[i], "submitted", "reject", reasons=["wrong answer", "other"], comment="label is for a different intent")
    new_reply = "card_arrival (corrected by bob)"
    answer(bob, recs[ids[38]], "submitted", "approve", reply=new_reply)
    answer(alice, recs[ids[39]], "discarded")
    answer(bob, recs[ids[40]], "draft", "approve")
    answer(alice, recs[ids[41]], "submitted", "approve")
    answer(bob, recs[ids[41]], "submitted", "reject", reasons=["wrong answer"])
    answer(alice, recs[ids[42]], "submitted", "approve")
    # a Streamlit labeler rejects record 42 meanwhile
    store.add_event(ids[42], "carol", "reject", frontend="streamlit", reason="duplicate")
    # the owner approves the leaking record in Argilla
    owner_resp = answer(owner, recs[leak_id], "submitted", "approve")

    # -- pull ----------------------------------------------------------------
    rc, out, err = run_cli(capsys, "review", "pull", "--queue", QUEUE, "--workspace", str(ws), "--json")
    assert rc == 0, err
    import json

    rep = json.loads(out)
    assert rep["events_added"] == {"approve": 20 + 10 + 2 + 1, "reject": 5 + 3 + 1, "edit": 1, "undo": 0}
    assert rep["submitted"] == 43 and rep["discarded"] == 1 and rep["draft"] == 1
    assert [d["record_id"] for d in rep["discarded_records"]] == [ids[39]]
    assert [c["record_id"] for c in rep["conflicts_with_other_frontends"]] == [ids[42]]
    store = open_store(ws)

    def evs(i):
        return [(e["reviewer"], e["action"], e["frontend"], e["reason"]) for e in store.events(record_id=i)]

    for i in ids[0:20]:
        assert evs(i) == [("alice", "approve", "argilla", None)] and store.get(i).status == "approved"
    for i in ids[20:25]:
        assert evs(i) == [("alice", "reject", "argilla", "wrong label")] and store.get(i).status == "rejected"
    for i in ids[25:35]:
        assert evs(i) == [("bob", "approve", "argilla", None)] and store.get(i).status == "approved"
    for i in ids[35:38]:
        assert evs(i) == [("bob", "reject", "argilla", "wrong answer; other; label is for a different intent")]
        assert store.get(i).status == "rejected"
    assert evs(ids[38]) == [("bob", "edit", "argilla", None)] and store.get(ids[38]).status == "edited"
    new_id = store.events(record_id=ids[38])[0]["new_record_id"]
    new = store.get(new_id)
    assert new.parent_id == ids[38] and new.status == "pending" and new.messages[-1]["content"] == new_reply
    assert new.messages[:-1] == store.get(ids[38]).messages[:-1]
    assert evs(ids[39]) == [] and store.get(ids[39]).status == "pending"  # discarded: no event
    assert evs(ids[40]) == [] and store.get(ids[40]).status == "pending"  # draft: ignored
    assert evs(ids[41]) == [("alice", "approve", "argilla", None), ("bob", "reject", "argilla", "wrong answer")]
    assert store.get(ids[41]).status == "rejected"  # any open reject wins
    assert evs(ids[42]) == [("carol", "reject", "streamlit", "duplicate"), ("alice", "approve", "argilla", None)]
    assert store.get(ids[42]).status == "rejected"  # the one status rule, whatever the front-end
    assert evs(leak_id) == [("owner", "approve", "argilla", None)] and store.get(leak_id).status == "approved"
    for i in ids[43:45] + ids[46:50]:
        assert evs(i) == [] and store.get(i).status == "pending"
    n_events = len(store.events())
    assert n_events == 20 + 5 + 10 + 3 + 1 + 2 + 2 + 1

    # -- rerun push and pull: nothing changes ------------------------------
    before = dataset_records(owner, ds_id)
    rc, out, err = run_cli(capsys, "review", "push", "--queue", QUEUE, "--workspace", str(ws), "--limit", "50", "--all-statuses", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert (rep["added"], rep["refreshed"], rep["already_answered"]) == (0, 0, 44)
    assert dataset_records(owner, ds_id) == before
    rc, out, err = run_cli(capsys, "review", "pull", "--queue", QUEUE, "--workspace", str(ws), "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["events_added"] == {"approve": 0, "reject": 0, "edit": 0, "undo": 0} and rep["already_pulled"] == 43
    assert len(open_store(ws).events()) == n_events

    # -- the owner changes their mind: the old event is undone, the new one counts
    r = owner.put(f"/api/v1/responses/{owner_resp['id']}",
                  json={"values": {"decision": {"value": "reject"}, "reasons": {"value": ["leaks held-out / eval data"]}},
                        "status": "submitted"})
    assert r.status_code == 200, r.text
    rc, out, err = run_cli(capsys, "review", "pull", "--queue", QUEUE, "--workspace", str(ws), "--json")
    assert json.loads(out)["events_added"] == {"approve": 0, "reject": 1, "edit": 0, "undo": 1}
    store = open_store(ws)
    assert [a for _, a, _, _ in evs(leak_id)] == ["approve", "undo", "reject"] and store.get(leak_id).status == "rejected"

    # -- schema changed by hand: refused with the difference ----------------
    rc, out, err = run_cli(capsys, "review", "push", "--queue", "handmade", "--workspace", str(ws), "--limit", "2")
    assert rc == 0, err
    hd = next(d["id"] for d in owner.get("/api/v1/me/datasets").json()["items"] if d["name"] == "handmade")
    mp = next(m for m in owner.get(f"/api/v1/me/datasets/{hd}/metadata-properties").json()["items"] if m["name"] == "pii")
    assert owner.delete(f"/api/v1/metadata-properties/{mp['id']}").status_code == 200
    rc, out, err = run_cli(capsys, "review", "pull", "--queue", "handmade", "--workspace", str(ws))
    assert rc == 1 and "changed by hand" in err and "metadata property 'pii' is missing" in err and "Traceback" not in err

    # -- wrong key ----------------------------------------------------------
    os.environ["WB_BAD_KEY"] = "not-a-key-123"
    try:
        rc, out, err = run_cli(capsys, "review", "pull", "--queue", QUEUE, "--workspace", str(ws), "--argilla-url", url,
                               "--api-key-env", "WB_BAD_KEY")
    finally:
        del os.environ["WB_BAD_KEY"]
    assert rc == 1 and "rejected the API key from $WB_BAD_KEY" in err

    # -- server stopped: clear error, no traceback ------------------------
    down = sh("down", "--state-dir", str(stack["state"]), env=stack["env"], timeout=120)
    assert down.returncode == 0 and "stopped server" in down.stdout, down.stdout + down.stderr
    rc, out, err = run_cli(capsys, "review", "pull", "--queue", QUEUE, "--workspace", str(ws))
    assert rc == 1 and "cannot reach the Argilla server at " + url in err and "make argilla-up" in err
    assert "Traceback" not in err
    rc, out, err = run_cli(capsys, "review", "push", "--queue", QUEUE, "--workspace", str(ws))
    assert rc == 1 and "cannot reach the Argilla server" in err
