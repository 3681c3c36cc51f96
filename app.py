"""The labelers' review app: ``streamlit run app.py`` (workspace from ``WORKBENCH_HOME`` or the sidebar).

Pages
-----
* **Review** — a filtered queue (status, split, origin, source kind, label,
  duplicate / leakage / low reward, "not decided by me"), one record at a time:
  the chat as a conversation with PII placeholders highlighted, its source,
  reward score and rationale, leakage hits, near-duplicate cluster members side
  by side, review history. Actions approve / reject with reason / edit / skip /
  undo my last, with keys ``a r e s u``.
* **Agreement** — records decided by two or more labelers: percent agreement,
  Cohen's kappa per labeler pair, Fleiss' kappa, per label; a conflicts queue to
  adjudicate (``adjudicate-approve`` / ``adjudicate-reject`` events).
* **Snapshots** — create a snapshot of the approved set, read manifests, diff two.

Every decision is an event in the store (:meth:`curate.store.Store.add_event`,
``frontend="streamlit"``, the signed-in labeler as reviewer) made with the
version of the record that was on screen: if someone else decided in between,
the store refuses it (:class:`~curate.store.ConflictError`) and the app shows
the message and the fresh record. The status rule is :mod:`curate.status`.

Queries are server-side and paged (:mod:`curate.queue`); counts are cached for a
few seconds. Nothing imports this file.
"""
from __future__ import annotations

import hmac
import html
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import streamlit as st

from curate import agreement, queue, snapshot
from curate.example import Example, MessageError
from curate.review import DEFAULT_REJECT_REASONS, undo_last
from curate.store import ConflictError, NotFound, Store, open_store
from curate.workspace import DEFAULT_WORKSPACE

FRONTEND = "streamlit"
PAGES = ("Review", "Agreement", "Snapshots")
STATUSES = ("pending", "approved", "rejected", "edited")
PII_RE = re.compile(r"\[[A-Z][A-Z0-9_]{1,30}\]")
ANY = "any"
SHORTCUTS = {"a": "btn_approve", "r": "btn_reject", "e": "btn_edit", "s": "btn_skip", "u": "btn_undo"}

st.set_page_config(page_title="workbench · review", page_icon="📝", layout="wide")
ss = st.session_state

CSS = """
<style>
.wb-msg { white-space: pre-wrap; line-height: 1.5; }
.wb-table { width: 100%; font-size: 0.85rem; border-collapse: collapse; }
.wb-table th, .wb-table td { text-align: left; padding: 2px 6px; border-bottom: 1px solid #e6e6e6; white-space: normal; }
mark.pii { background: #ffe08a; color: #5a3d00; border-radius: 3px; padding: 0 3px; font-weight: 600; }
.wb-badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.8rem; font-weight: 600; margin-right: 4px; }
.wb-pending { background: #e8eefc; color: #1f3b8a; } .wb-approved { background: #dcf5e3; color: #13652f; }
.wb-rejected { background: #fde2e1; color: #8a1f1f; } .wb-edited { background: #f1e6fb; color: #5b2a86; }
.wb-flag { background: #fff1d6; color: #7a4b00; }
.wb-meta { color: #555; font-size: 0.85rem; }
.wb-dup { border: 1px solid #ddd; border-radius: 8px; padding: 8px 10px; font-size: 0.85rem; white-space: pre-wrap; }
.wb-dup b { color: #333; }
</style>
"""


# -- store and cached reads --------------------------------------------------
@st.cache_resource(show_spinner=False)
def get_store(path: str) -> Store:
    s = open_store(Path(path).expanduser())
    queue.ensure_indexes(s)
    return s


@st.cache_data(ttl=3, show_spinner=False)
def cached_count(path: str, fkey: tuple) -> int:
    return queue.count(get_store(path), dict(fkey))


@st.cache_data(ttl=3, show_spinner=False)
def cached_progress(path: str) -> dict[str, int]:
    return queue.progress(get_store(path))


@st.cache_data(ttl=30, show_spinner=False)
def cached_distinct(path: str, column: str) -> list[str]:
    return queue.distinct(get_store(path), column)


def clear_counts() -> None:
    cached_count.clear()
    cached_progress.clear()


def flash(kind: str, msg: str) -> None:
    ss.setdefault("flash", []).append((kind, msg))


def show_flash() -> None:
    for kind, msg in ss.pop("flash", []):
        getattr(st, kind)(msg)


# -- rendering helpers ---------------------------------------------------------
def highlight(text: str) -> str:
    """HTML-escaped text with PII placeholders like ``[EMAIL]`` wrapped in ``<mark class="pii">``."""
    out, last = [], 0
    for m in PII_RE.finditer(text):
        out += [html.escape(text[last : m.start()]), f'<mark class="pii">{html.escape(m.group(0))}</mark>']
        last = m.end()
    out.append(html.escape(text[last:]))
    # no blank lines: a blank line would end the raw HTML block in Markdown
    return "".join(out).replace("\n", "<br>")


def badge(text: str, cls: str) -> str:
    return f'<span class="wb-badge wb-{cls}">{html.escape(text)}</span>'


def render_chat(ex: Example) -> None:
    for m in ex.messages:
        avatar = {"system": ":material/settings:", "user": ":material/person:", "assistant": ":material/support_agent:"}[m["role"]]
        with st.chat_message(m["role"] if m["role"] != "system" else "ai", avatar=avatar):
            if m["role"] == "system":
                st.caption("system prompt")
            st.markdown(f'<div class="wb-msg">{highlight(m["content"])}</div>', unsafe_allow_html=True)


def short_text(ex: Example, n: int = 500) -> str:
    t = ex.text
    return t if len(t) <= n else t[: n - 1] + "…"


def small_table(rows: list[dict[str, Any]]) -> None:
    """A few rows as a plain HTML table: the Review page's small tables (history, up next) skip
    ``st.dataframe``, whose first use imports pandas + pyarrow (~0.7 s on a fresh server)."""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    st.markdown(f'<div style="overflow-x:auto"><table class="wb-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>',
                unsafe_allow_html=True)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%m-%d %H:%M")


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def keyboard_shortcuts() -> None:
    """Map a/r/e/s/u to the action buttons of the parent page (ignored while typing).

    A closed select (the reject reason right after it was picked) keeps keyboard focus; keys there go to the
    shortcuts, not to the select's type-to-filter, so "pick a reason, press r" works without a click outside.
    While its menu is open, typing filters the options as usual."""
    mapping = ",".join(f"'{k}':'{v}'" for k, v in SHORTCUTS.items())
    st.iframe(
        f"""<script>
        // (Re)install on every load: a listener from an iframe that Streamlit has since replaced
        // would belong to a dead window, so the previous one is removed first. Capture phase: runs before
        // the select's own key handling.
        const doc = window.parent.document;
        if (doc.__wbShortcuts) doc.removeEventListener('keydown', doc.__wbShortcuts, true);
        doc.__wbShortcuts = function (e) {{
          const t = e.target || {{}};
          const tag = (t.tagName || '').toLowerCase();
          const role = t.getAttribute ? t.getAttribute('role') : null;
          const closedSelect = tag === 'input' && role === 'combobox' && t.getAttribute('aria-expanded') !== 'true';
          if (e.ctrlKey || e.metaKey || e.altKey || tag === 'textarea' || t.isContentEditable) return;
          if (tag === 'input' && !closedSelect) return;
          const map = {{{mapping}}};
          const key = map[(e.key || '').toLowerCase()];
          if (!key) return;
          const b = doc.querySelector('.st-key-' + key + ' button');
          if (b && !b.disabled) {{
            e.preventDefault(); e.stopPropagation();
            if (closedSelect) t.blur();
            b.click();
          }}
        }};
        doc.addEventListener('keydown', doc.__wbShortcuts, true);
        </script>""",
        height=1,
    )


# -- login ---------------------------------------------------------------------
def login(store: Store) -> bool:
    """The labeler identity gate. Returns True once signed in."""
    if ss.get("labeler"):
        return True
    st.title("Sign in to review")
    users = store.config.labelers
    st.write("Every decision you make is recorded under your name.")
    with st.form("login_form"):
        name = st.text_input("Your name", key="login_name", max_chars=64)
        pw = st.text_input("Password", type="password", key="login_password") if users else ""
        ok = st.form_submit_button("Sign in", type="primary")
    if ok:
        name = (name or "").strip()
        if not name:
            st.error("Enter your name: it is written on every review event.")
        elif users and (name not in users or not hmac.compare_digest(str(users[name]), pw or "")):
            st.error("Unknown labeler or wrong password (labelers are listed in the workspace config.toml).")
        else:
            ss.labeler = name
            ss.login_ws = ss.ws
            st.rerun()
    if users:
        st.caption(f"This workspace lists {len(users)} labeler(s) in config.toml; ask its owner to add you.")
    return False


# -- review page ---------------------------------------------------------------
def sidebar_filters(path: str) -> dict[str, Any]:
    st.sidebar.subheader("Queue")
    sel = st.sidebar.selectbox
    f: dict[str, Any] = {}
    f["status"] = sel("Status", (ANY, *STATUSES), index=1, key="f_status")
    f["split"] = sel("Split", (ANY, "train", "heldout"), key="f_split")
    f["origin"] = sel("Origin", (ANY, "human", "synthetic"), key="f_origin")
    f["source_kind"] = sel("Source kind", (ANY, *cached_distinct(path, "source_kind")), key="f_kind")
    f["label"] = sel("Label", (ANY, *cached_distinct(path, "label")), key="f_label")
    f["has_duplicate"] = st.sidebar.checkbox("Has duplicate", key="f_dup")
    f["has_leak"] = st.sidebar.checkbox("Has leakage hit", key="f_leak")
    f["low_reward"] = st.sidebar.checkbox("Low reward (< 3)", key="f_low")
    if st.sidebar.checkbox("Only records I have not decided", key="f_mine"):
        f["undecided_by"] = ss.labeler
    return {k: v for k, v in f.items() if v not in (ANY, False, None, "")}


def advance(after_seq: int, reset: bool = False) -> None:
    """Move the queue cursor past ``after_seq`` (never backwards unless ``reset``: re-deciding an
    undone record does not replay the records skipped since)."""
    ss.cursor = after_seq if reset else max(after_seq, ss.get("cursor", 0))
    ss.cur_id = None
    ss.editing = False


def act(action: str, rid: str, version: int, seq: int) -> None:
    """Button callback: record one decision with the version that was on screen."""
    store = get_store(ss.ws)
    reviewer = ss.labeler
    kw: dict[str, Any] = {"frontend": FRONTEND, "expected_version": version}
    if action == "reject":
        pick = ss.get(f"reason_pick_{rid}")
        free = (ss.get(f"reason_text_{rid}") or "").strip()
        reason = "; ".join(x for x in (pick, free) if x)
        if not reason:
            flash("error", "Pick a reject reason or type one, then press Reject again.")
            ss.cur_id = rid
            return
        kw["reason"] = reason
    if action == "edit":
        ex = store.get(rid)
        msgs = [{"role": m["role"], "content": ss.get(f"edit_{rid}_{i}", m["content"])} for i, m in enumerate(ex.messages)]
        if msgs == ex.messages:
            flash("warning", "Nothing changed: edit a turn first (or Cancel).")
            ss.cur_id = rid
            return
        try:
            kw["new_example"] = ex.edited(msgs)
        except MessageError as e:
            flash("error", f"The edited conversation is invalid: {e}")
            ss.cur_id = rid
            return
        if store.conn.execute("SELECT 1 FROM records WHERE id=?", (kw["new_example"].id,)).fetchone():
            flash("error", "A record with exactly this conversation already exists; reject this one as a duplicate instead.")
            ss.cur_id = rid
            return
    try:
        eid = store.add_event(rid, reviewer, action, **kw)
    except ConflictError as e:
        flash("warning", f"Not saved — {e}. The record below is the fresh version.")
        ss.cur_id = rid
        ss.editing = False
        clear_counts()
        return
    except NotFound as e:
        flash("error", str(e))
        return
    clear_counts()
    ss.last_done = {"event": eid, "action": action, "record": rid}
    what = {"approve": "Approved", "reject": f"Rejected ({kw.get('reason')})", "edit": "Edited (new record created)"}[action]
    flash("success", f"{what} {rid[:12]}…")
    advance(seq)


def skip(seq: int) -> None:
    advance(seq)


def undo() -> None:
    store = get_store(ss.ws)
    ev = undo_last(store, ss.labeler, frontend=FRONTEND)
    clear_counts()
    if ev is None:
        flash("info", "Nothing to undo: you have no decision that is not already undone.")
        return
    flash("success", f"Undid your {ev['action']} on {ev['record_id'][:12]}… (recorded as an undo event).")
    ss.cur_id = ev["record_id"]
    ss.editing = False


def start_over() -> None:
    advance(0, reset=True)


def set_editing(on: bool, rid: str) -> None:
    ss.editing = on
    ss.cur_id = rid


def current_record(store: Store, filters: dict[str, Any]) -> Example | None:
    if ss.get("cur_id"):
        try:
            return store.get(ss.cur_id)
        except NotFound:
            ss.cur_id = None
    ex = queue.next_record(store, filters, after_seq=ss.get("cursor", 0))
    if ex is not None:
        ss.cur_id = ex.id
    return ex


def signals_panel(store: Store, ex: Example) -> None:
    sig = ex.signals
    reward = sig.get("reward")
    st.markdown("**Reward**")
    if isinstance(reward, dict) and reward.get("score") is not None:
        score = float(reward["score"])
        st.metric("score (1–5)", f"{score:.2f}", delta="low" if score < 3 else None, delta_color="inverse")
        if reward.get("rationale"):
            st.caption(reward["rationale"])
        extra = {k: v for k, v in reward.items() if k not in ("score", "rationale")}
        if extra:
            st.json(extra, expanded=False)
    else:
        st.caption("no reward scores")
    st.markdown("**Leakage**")
    leak = sig.get("leakage")
    if leak:
        hits = leak if isinstance(leak, list) else [leak]
        st.error(f"{len(hits)} hit(s) against held-out / eval data — blocked from snapshots while flagged")
        for h in hits[:5]:
            if isinstance(h, dict):
                st.markdown(
                    f"<div class='wb-dup'><b>{html.escape(str(h.get('detector', '?')))}</b> · score "
                    f"{html.escape(str(h.get('score', '?')))} · {html.escape(str(h.get('source') or h.get('other_id') or ''))}"
                    f"<br>{highlight(str(h.get('other_text') or h.get('text') or ''))}</div>", unsafe_allow_html=True)
            else:
                st.write(h)
    else:
        st.caption("no leakage hits")
    pii = sig.get("pii")
    st.markdown("**PII replaced at ingestion**")
    if pii:
        kinds: dict[str, int] = {}
        for p in pii:
            k = (p.get("tag") or p.get("kind") or p.get("type") or "?") if isinstance(p, dict) else str(p)
            kinds[k] = kinds.get(k, 0) + 1
        st.caption(", ".join(f"{k} × {n}" for k, n in sorted(kinds.items())))
    else:
        st.caption("none")
    st.markdown("**Review history**")
    hist = queue.history(store, ex.id)
    if hist:
        small_table([{"#": e["id"], "who": e["reviewer"], "action": e["action"] + (" (undone)" if e["undone"] else ""),
                      "reason": e["reason"] or "", "via": e["frontend"], "when (UTC)": when(e["created_at"])} for e in hist])
    else:
        st.caption("no decisions yet")
    kids = queue.edited_into(store, ex.id)
    if kids:
        st.caption("replaced by edit: " + ", ".join(k[:12] + "…" for k in kids))
    if ex.parent_id:
        st.caption(f"edit of {ex.parent_id[:12]}…")


def duplicates_panel(store: Store, ex: Example) -> None:
    cluster = ex.signals.get("dup_cluster")
    if not cluster:
        return
    members = queue.cluster_members(store, cluster, exclude=ex.id, limit=3)
    size = queue.cluster_size(store, cluster)
    role = "a duplicate of " + ex.signals["duplicate_of"][:12] + "…" if ex.signals.get("duplicate_of") else "the keeper"
    st.markdown(f"**Near-duplicate cluster** · {size} records · this one is {role}")
    cols = st.columns(1 + len(members))
    with cols[0]:
        score = ex.signals.get("dup_score")
        st.markdown(f"<div class='wb-dup'><b>this record</b> · {badge(ex.status, ex.status)}"
                    f"{' · similarity ' + format(float(score), '.3f') if score is not None else ''}"
                    f"<br>{highlight(short_text(ex))}</div>", unsafe_allow_html=True)
    for col, m in zip(cols[1:], members):
        with col:
            score = m.signals.get("dup_score")
            who = "keeper" if not m.signals.get("duplicate_of") else f"similarity {float(score or 0):.3f}"
            det = m.signals.get("dup_detector", "")
            st.markdown(f"<div class='wb-dup'><b>{m.id[:12]}…</b> · {who} {html.escape(det)} · {badge(m.status, m.status)}"
                        f"<br>{highlight(short_text(m))}</div>", unsafe_allow_html=True)
    if size > 1 + len(members):
        st.caption(f"… and {size - 1 - len(members)} more in this cluster")


def review_page(store: Store, path: str) -> None:
    filters = sidebar_filters(path)
    fkey = tuple(sorted(filters.items()))
    if ss.get("fkey") != fkey:  # filters changed: back to the start of the queue
        ss.fkey = fkey
        advance(0, reset=True)
    prog = cached_progress(path)
    total = sum(prog.values())
    decided = total - prog.get("pending", 0)
    n_queue = cached_count(path, fkey)

    top = st.columns([3, 1, 1, 1, 1])
    top[0].markdown(f"### Review queue · {n_queue:,} matching")
    for col, s in zip(top[1:], STATUSES):
        col.metric(s, f"{prog.get(s, 0):,}")
    st.progress(decided / total if total else 0.0, text=f"{decided:,} of {total:,} records decided ({(decided / total if total else 0):.0%})")
    show_flash()

    ex = current_record(store, filters)
    if ex is None:
        st.info("Nothing left in this queue. Change the filters in the sidebar, or start over from the top.")
        st.button("Start over", on_click=start_over, key="btn_start_over")
        st.button("Undo my last decision (u)", on_click=undo, key="btn_undo")
        keyboard_shortcuts()
        return

    in_queue = queue.count(store, {**filters, "ids": [ex.id]}) == 1
    pos = queue.position(store, filters, ex.seq) + 1 if in_queue else None
    version = ex.version
    flags = []
    if ex.signals.get("duplicate_of"):
        flags.append(badge("duplicate", "flag"))
    if ex.signals.get("leakage"):
        flags.append(badge("leakage", "rejected"))
    r = ex.signals.get("reward")
    if isinstance(r, dict) and r.get("score") is not None and float(r["score"]) < 3:
        flags.append(badge("low reward", "flag"))
    src = ex.source
    st.markdown(
        f"{badge(ex.status, ex.status)} {''.join(flags)} "
        f"<span class='wb-meta'>record <code>{ex.id[:16]}</code> · "
        + (f"#{pos:,} of {n_queue:,} in queue" if pos else "<b>no longer in this queue</b>")
        + f" · label <b>{html.escape(ex.label or 'none')}</b> · {ex.split} · {html.escape(ex.origin.get('kind', 'human'))}"
        f" · source {html.escape(src.kind)} <code>{html.escape(src.file or '?')}</code> {html.escape(src.loc)}"
        + (f" (ref {html.escape(src.ref)})" if src.ref else "")
        + f" · version {version}</span>",
        unsafe_allow_html=True,
    )
    if ex.origin.get("kind") == "synthetic":
        o = ex.origin
        st.caption(f"synthetic · strategy {o.get('strategy', '?')} · model {o.get('model', '?')} · parents "
                   + ", ".join(p[:10] for p in o.get("parent_ids", [])))

    left, right = st.columns([3, 2], gap="large")
    with left:
        if ss.get("editing"):
            st.markdown("**Edit the conversation** — saving creates a new record linked to this one.")
            for i, m in enumerate(ex.messages):
                st.text_area(f"{i + 1}. {m['role']}", value=m["content"], key=f"edit_{ex.id}_{i}", height=110)
            c1, c2 = st.columns(2)
            c1.button("Save edit", type="primary", on_click=act, args=("edit", ex.id, version, ex.seq), key="btn_save_edit",
                      width="stretch")
            c2.button("Cancel", on_click=set_editing, args=(False, ex.id), key="btn_cancel_edit", width="stretch")
        else:
            render_chat(ex)
        st.divider()
        b = st.columns([1.45, 1.2, 1, 1, 1.1])
        b[0].button("Approve", icon=":material/check:", type="primary", on_click=act, args=("approve", ex.id, version, ex.seq),
                    key="btn_approve", width="stretch")
        b[1].button("Reject", icon=":material/close:", on_click=act, args=("reject", ex.id, version, ex.seq), key="btn_reject",
                    width="stretch")
        b[2].button("Edit", icon=":material/edit:", on_click=set_editing, args=(not ss.get("editing"), ex.id), key="btn_edit",
                    width="stretch")
        b[3].button("Skip", icon=":material/skip_next:", on_click=skip, args=(ex.seq,), key="btn_skip", width="stretch")
        b[4].button("Undo", icon=":material/undo:", on_click=undo, key="btn_undo", width="stretch")
        rc = st.columns([1, 1])
        rc[0].selectbox("Reject reason", DEFAULT_REJECT_REASONS, index=None, placeholder="pick a reason…",
                        key=f"reason_pick_{ex.id}")
        rc[1].text_input("…or / and say why", key=f"reason_text_{ex.id}", placeholder="free text")
        st.caption("Keys: **a** approve · **r** reject (after picking a reason) · **e** edit · **s** skip · **u** undo my last")
    with right:
        signals_panel(store, ex)
    duplicates_panel(store, ex)
    with st.expander("Up next in this queue"):
        rows = queue.page(store, filters, after_seq=ex.seq, limit=10)
        if rows:
            small_table([{"record": r["id"][:12], "status": r["status"], "label": r["label"], "split": r["split"],
                          "source": f"{r['source_file'] or ''} {r['source_loc'] or ''}", "user": r["first_user"]} for r in rows])
        else:
            st.caption("this is the last one")
    keyboard_shortcuts()


# -- agreement page -----------------------------------------------------------
def adjudicate(rid: str, verdict: str, version: int) -> None:
    store = get_store(ss.ws)
    try:
        store.add_event(rid, ss.labeler, f"adjudicate-{verdict}", frontend=FRONTEND, expected_version=version)
    except ConflictError as e:
        flash("warning", f"Not saved — {e}")
        return
    clear_counts()
    flash("success", f"Adjudicated {rid[:12]}… as {verdict}.")


def agreement_page(store: Store) -> None:
    st.title("Agreement between labelers")
    show_flash()
    rep = agreement.report(store)
    c = st.columns(4)
    c[0].metric("records with ≥ 2 decisions", f"{rep['records']:,}")
    c[1].metric("percent agreement", "n/a" if rep["percent_agreement"] is None else f"{rep['percent_agreement']:.0%}")
    c[2].metric("Fleiss' kappa", fmt(rep["fleiss_kappa"]))
    c[3].metric("open conflicts", f"{len(rep['conflicts']):,}", help=f"{rep['resolved']} resolved by adjudication")
    if not rep["records"]:
        st.info("No record has decisions from two labelers yet. Use the Review page filter "
                "“Only records I have not decided” with status “any” to give second opinions.")
        return
    st.caption("A labeler's decision is their latest approve / reject / edit that is not undone. "
               "Cohen's kappa compares two labelers on the records both decided; n/a when undefined (both used one single answer).")
    st.subheader("Per labeler pair")
    st.dataframe([{"labeler A": p["labeler_a"], "labeler B": p["labeler_b"], "records": p["records"],
                   "agreement": f"{p['agreement']:.0%}", "Cohen's kappa": fmt(p["cohen_kappa"])} for p in rep["pairs"]],
                 hide_index=True, width="stretch")
    st.subheader("Per label")
    st.dataframe([{"label": r["label"], "records": r["records"], "agreement": f"{r['agreement']:.0%}",
                   "Fleiss' kappa": fmt(r["fleiss_kappa"]),
                   "Cohen's kappa per pair": "; ".join(f"{p['labeler_a']}–{p['labeler_b']}: {fmt(p['cohen_kappa'], 2)} (n={p['records']})"
                                                       for p in r["pairs"])}
                  for r in rep["by_label"]], hide_index=True, width="stretch")
    st.subheader(f"Conflicts to adjudicate · {len(rep['conflicts'])}")
    if not rep["conflicts"]:
        st.success("No open conflicts.")
        return
    st.dataframe([{"record": c["record_id"][:12], **c["decisions"]} for c in rep["conflicts"][:200]],
                 hide_index=True, width="stretch")
    conf = rep["conflicts"][0]
    ex = store.get(conf["record_id"])
    st.markdown(f"**First open conflict** · record <code>{ex.id[:16]}</code> · label <b>{html.escape(ex.label or 'none')}</b> · "
                + " · ".join(f"{html.escape(w)}: <b>{d}</b>" for w, d in conf["decisions"].items()), unsafe_allow_html=True)
    render_chat(ex)
    for e in queue.history(store, ex.id):
        if e["reason"]:
            st.caption(f"{e['reviewer']} ({e['action']}): {e['reason']}")
    a, b = st.columns(2)
    a.button("Adjudicate: approve", type="primary", on_click=adjudicate, args=(ex.id, "approve", ex.version),
             key="btn_adj_approve", width="stretch")
    b.button("Adjudicate: reject", on_click=adjudicate, args=(ex.id, "reject", ex.version), key="btn_adj_reject",
             width="stretch")


# -- snapshots page -----------------------------------------------------------
def create_snapshot() -> None:
    store = get_store(ss.ws)
    name = (ss.get("snap_name") or "").strip()
    try:
        man = snapshot.create(store, name, note=(ss.get("snap_note") or "").strip() + f" (created in the app by {ss.labeler})")
    except snapshot.SnapshotError as e:
        flash("error", str(e))
        return
    flash("success", f"Snapshot {name} created: {man['files']['train.parquet']['rows']} train, "
                     f"{man['files']['heldout.parquet']['rows']} held-out records; {man['gates']['blocked']} blocked by gates.")
    ss.snap_show = name
    ss.snap_name = next_snapshot_name(store)


def next_snapshot_name(store: Store) -> str:
    have = {s["name"] for s in snapshot.list_snapshots(store)}
    n = len(have) + 1
    while f"v{n}" in have:
        n += 1
    return f"v{n}"


def snapshots_page(store: Store, path: str) -> None:
    st.title("Snapshots")
    show_flash()
    prog = cached_progress(path)
    st.markdown(f"**{prog.get('approved', 0):,}** approved records now. A snapshot freezes those that pass the gates "
                "(no leakage, duplicates only if approved after they were flagged) into Parquet with a manifest.")
    existing = snapshot.list_snapshots(store)
    with st.form("snap_form"):
        c1, c2 = st.columns([1, 2])
        if not ss.get("snap_name"):
            ss.snap_name = next_snapshot_name(store)
        c1.text_input("Name", key="snap_name")
        c2.text_input("Note", key="snap_note")
        st.form_submit_button("Create snapshot", type="primary", on_click=create_snapshot)
    if not existing:
        st.info("No snapshots yet.")
        return
    st.subheader("Existing")
    st.dataframe(existing, hide_index=True, width="stretch")
    names = [s["name"] for s in existing]
    pick = st.selectbox("Manifest of", names, index=names.index(ss.get("snap_show")) if ss.get("snap_show") in names else len(names) - 1,
                        key="snap_pick")
    man = snapshot.show(store, pick)
    problems = snapshot.verify(store, pick)
    (st.success if not problems else st.error)("hashes verified" if not problems else "; ".join(problems))
    st.json(man, expanded=2)
    if len(names) >= 2:
        st.subheader("Diff")
        c1, c2 = st.columns(2)
        a = c1.selectbox("from", names, index=len(names) - 2, key="diff_a")
        b = c2.selectbox("to", names, index=len(names) - 1, key="diff_b")
        d = snapshot.diff(store, a, b)
        st.dataframe([{"split": s, **d["summary"][s]} for s in ("train", "heldout")], hide_index=True)
        for s in ("train", "heldout"):
            if d[s]["added"] or d[s]["removed"]:
                with st.expander(f"{s}: {len(d[s]['added'])} added, {len(d[s]['removed'])} removed"):
                    st.write({"added": d[s]["added"][:200], "removed": d[s]["removed"][:200]})


# -- main ----------------------------------------------------------------------
def main() -> None:
    st.markdown(CSS, unsafe_allow_html=True)
    default_ws = os.environ.get("WORKBENCH_HOME") or DEFAULT_WORKSPACE
    st.sidebar.title("workbench review")
    path = st.sidebar.text_input("Workspace", value=default_ws, key="ws",
                                 help="Folder with store.sqlite (default: $WORKBENCH_HOME, else data/workspace)")
    if not (Path(path).expanduser() / "store.sqlite").exists():
        st.warning(f"No store.sqlite in {path!r}. Ingest something first, e.g. "
                   f"`python -m curate ingest data/banking77_demo --workspace {path}`, or fix the path in the sidebar.")
        st.stop()
    try:
        store = get_store(path)
    except (OSError, ValueError) as e:  # e.g. a bad config.toml: the message names the file and key
        st.error(f"Cannot open workspace {path!r}: {e}")
        st.stop()
    if ss.get("labeler") and ss.get("login_ws") != path:  # signed in elsewhere: this workspace may list other labelers
        for k in ("labeler", "cur_id", "cursor", "editing", "fkey"):
            ss.pop(k, None)
    if not login(store):
        return
    st.sidebar.markdown(f"Signed in as **{html.escape(ss.labeler)}**")
    if st.sidebar.button("Sign out", key="btn_logout"):
        for k in ("labeler", "cur_id", "cursor", "editing", "fkey"):
            ss.pop(k, None)
        st.rerun()
    page = st.sidebar.radio("Page", PAGES, key="page", horizontal=True)
    if page == "Review":
        review_page(store, path)
    elif page == "Agreement":
        agreement_page(store)
    else:
        snapshots_page(store, path)
    st.sidebar.caption(f"store: {store.path} · status rule: latest verdict per labeler, any open reject → rejected, "
                       f"≥ {store.config.min_approvals} approval(s) → approved, adjudication decides (curate/status.py)")


main()
