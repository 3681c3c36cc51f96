"""The review app in a real browser (integration): ``streamlit run app.py`` on 127.0.0.1 driven by Playwright
in Debian's headless chromium, two browser contexts as two labelers.

Flow: both sign in and see the same record; alice approves it with the ``a`` key; bob, still looking at the
old version, presses Approve and is refused with the conflict message and the fresh record; bob rejects the
fresh version with a reason; alice edits the next record and undoes the edit with ``u``; alice adjudicates
the conflict on the Agreement page and creates a snapshot. Then the exact events in the store are asserted.
Screenshots of every page go to ``test-artifacts/``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_app import build_workspace

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (scripts/system-deps.sh installs it)")
    ws = tmp_path / "ws"
    ids = build_workspace(ws)
    port = _free_port()
    env = dict(os.environ, WORKBENCH_HOME=str(ws), HF_HUB_OFFLINE="1")
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url, ws, ids
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _login(page, url: str, name: str):
    from playwright.sync_api import expect

    page.goto(url)
    page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"Signed in as {name}")).to_be_visible(timeout=30_000)
    expect(page.locator(".st-key-btn_approve button")).to_be_visible(timeout=30_000)


def _idle(page):
    """Wait until the app has finished its rerun (no 'running' status widget)."""
    page.wait_for_timeout(300)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000)


def test_two_labelers_in_a_real_browser(server, artifacts_dir):
    from playwright.sync_api import expect, sync_playwright

    from curate.store import open_store

    url, ws, ids = server
    shots = artifacts_dir / "app"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            alice_ctx = browser.new_context(viewport={"width": 1440, "height": 1100})
            bob_ctx = browser.new_context(viewport={"width": 1440, "height": 1100})
            alice, bob = alice_ctx.new_page(), bob_ctx.new_page()

            alice.goto(url)
            expect(alice.get_by_text("Sign in to review")).to_be_visible(timeout=30_000)
            assert alice.locator(".st-key-btn_approve").count() == 0  # no actions before sign-in
            alice.screenshot(path=str(shots / "01-login.png"))
            _login(alice, url, "alice")
            _login(bob, url, "bob")
            for pg in (alice, bob):  # both look at the same record, same version
                expect(pg.get_by_text(ids[0][:16])).to_be_visible()
                expect(pg.get_by_text("version 0")).to_be_visible()
            expect(alice.locator("mark.pii", has_text="[EMAIL]").first).to_be_visible()
            _idle(alice)
            alice.screenshot(path=str(shots / "02-review.png"), full_page=True)

            # alice approves with the keyboard shortcut
            alice.wait_for_function("typeof window.document.__wbShortcuts === \"function\"", timeout=30_000)
            alice.locator("h3").first.click()
            alice.keyboard.press("a")
            expect(alice.get_by_text(f"Approved {ids[0][:12]}")).to_be_visible(timeout=30_000)
            expect(alice.get_by_text(ids[1][:16])).to_be_visible()
            _idle(alice)
            alice.screenshot(path=str(shots / "03-after-approve.png"), full_page=True)

            # bob still shows version 0: his approve is refused, the fresh record is shown
            bob.locator(".st-key-btn_approve button").click()
            expect(bob.get_by_text("changed since you loaded it")).to_be_visible(timeout=30_000)
            expect(bob.get_by_text("no longer in this queue")).to_be_visible()
            _idle(bob)
            bob.screenshot(path=str(shots / "04-conflict.png"), full_page=True)

            # bob rejects the fresh version with a reason (reject without a reason is refused first)
            bob.locator(".st-key-btn_reject button").click()
            expect(bob.get_by_text("Pick a reject reason")).to_be_visible(timeout=30_000)
            bob.locator(f".st-key-reason_pick_{ids[0]}").click()
            bob.get_by_role("option", name="wrong answer", exact=True).click()
            _idle(bob)
            # a labeler's keyboard focus stays in the closed select after picking; r must still reach the
            # shortcut, not the select's type-to-filter (focus it explicitly: Playwright's click may not leave it there)
            bob.locator(f".st-key-reason_pick_{ids[0]} input").focus()
            bob.keyboard.press("r")
            expect(bob.get_by_text(f"Rejected (wrong answer) {ids[0][:12]}")).to_be_visible(timeout=30_000)

            # bob filters the queue to records with leakage hits: one record, with its hit shown
            bob.get_by_text("Has leakage hit").click()
            expect(bob.get_by_text("Review queue · 1 matching")).to_be_visible(timeout=30_000)
            expect(bob.get_by_text("1 hit(s) against held-out / eval data")).to_be_visible()
            expect(bob.get_by_text(ids[2][:16])).to_be_visible()
            _idle(bob)
            bob.screenshot(path=str(shots / "08-review-leakage-filter.png"), full_page=True)

            # alice edits the record she is on now, then undoes it with the keyboard
            alice.locator(".st-key-btn_edit button").click()
            box = alice.locator(f".st-key-edit_{ids[1]}_2 textarea")
            expect(box).to_be_visible(timeout=30_000)
            box.fill("I have flagged the double charge; the refund arrives within 3-5 working days.")
            box.press("Control+Enter")
            _idle(alice)
            alice.screenshot(path=str(shots / "05-edit.png"), full_page=True)
            alice.locator(".st-key-btn_save_edit button").click()
            expect(alice.get_by_text(f"Edited (new record created) {ids[1][:12]}")).to_be_visible(timeout=30_000)
            _idle(alice)
            alice.locator("h3").first.click()
            alice.keyboard.press("u")
            expect(alice.get_by_text(f"Undid your edit on {ids[1][:12]}")).to_be_visible(timeout=30_000)
            _idle(alice)

            # agreement page: one record, two labelers, one conflict -> adjudicate
            alice.get_by_text("Agreement", exact=True).click()
            expect(alice.get_by_text("Agreement between labelers")).to_be_visible(timeout=30_000)
            expect(alice.get_by_text("First open conflict")).to_be_visible()
            _idle(alice)
            alice.screenshot(path=str(shots / "06-agreement.png"), full_page=True)
            alice.locator(".st-key-btn_adj_approve button").click()
            expect(alice.get_by_text(f"Adjudicated {ids[0][:12]}")).to_be_visible(timeout=30_000)

            # snapshot page: create v1 from the approved set
            alice.get_by_text("Snapshots", exact=True).click()
            alice.get_by_role("button", name="Create snapshot").click()
            expect(alice.get_by_text("Snapshot v1 created: 1 train")).to_be_visible(timeout=60_000)
            _idle(alice)
            alice.screenshot(path=str(shots / "07-snapshots.png"), full_page=True)
        finally:
            browser.close()

    store = open_store(ws)
    evs = store.events()
    got = [(e["record_id"], e["reviewer"], e["action"], e["reason"], e["frontend"]) for e in evs]
    assert got == [
        (ids[0], "alice", "approve", None, "streamlit"),
        (ids[0], "bob", "reject", "wrong answer", "streamlit"),
        (ids[1], "alice", "edit", None, "streamlit"),
        (ids[1], "alice", "undo", None, "streamlit"),
        (ids[0], "alice", "adjudicate-approve", None, "streamlit"),
    ]
    assert evs[3]["undoes"] == evs[2]["id"]
    new = store.get(evs[2]["new_record_id"])
    assert new.parent_id == ids[1] and "double charge" in new.messages[2]["content"]
    assert store.get(ids[0]).status == "approved" and store.get(ids[1]).status == "pending"
    assert (ws / "snapshots" / "v1" / "manifest.json").exists()
