"""Argilla annotation queues: ``python -m curate review push|pull --queue NAME``.

Owns the mapping between store records / review events and an Argilla 2.x
dataset (one dataset per queue, in an Argilla workspace, default ``workbench``).

Dataset schema (checked on every push and pull; a dataset changed by hand is
refused with a list of the differences):

* fields: ``chat`` (ChatField, the conversation) and ``context`` (markdown:
  record id, source, origin, split, label, reward score + rationale, duplicate
  cluster, leakage hits, PII placeholders — what the Streamlit app shows);
* questions: ``decision`` (label: approve / reject, required), ``reasons``
  (multi-label from :data:`curate.review.DEFAULT_REJECT_REASONS`), ``comment``
  (free text), ``edited_reply`` (text, pre-filled with the current assistant
  reply: change it to propose a corrected reply);
* metadata (filterable in the UI; never null, see below): ``source_kind``,
  ``origin``, ``split``, ``label`` (``none`` when unlabelled), ``duplicate`` and
  ``leak`` (``yes``/``no``), ``pii`` (``yes``/``no``), ``reward_score`` (float,
  omitted when the record has no score);
* suggestions from our signals (agent ``workbench-signals``): ``decision=reject``
  with the matching ``reasons`` for leakage / duplicates / reward < 3, and
  ``decision=approve`` for a clean record with reward >= 4.

Push (``push``) selects records with the filters (default ``--status pending``)
and sends the ones the dataset does not hold yet, keyed by our record id (the
Argilla record's ``external_id``). A record already in the dataset is never
re-added; if nobody has answered it yet its context/metadata/suggestions are
refreshed when our signals changed; an answered record is never touched.

Pull (``pull``) reads every response and keeps, per Argilla response, exactly
one live review event (``frontend="argilla"``, reviewer = Argilla username,
``external_id = "argilla:<response id>:<updated_at>"``, so pulling twice adds
nothing):

* ``submitted``: ``edited_reply`` differing from the assistant reply → ``edit``
  (a new linked record with the corrected reply, which starts ``pending``);
  otherwise ``decision`` → ``approve`` / ``reject`` (reason = chosen reasons +
  comment). If the labeler later changes the response, the event of the old
  version is undone (an ``undo`` event) and the new one is added.
* ``discarded``: no event (the store's actions have no "skip"); listed in the
  pull report and in store meta ``argilla:<queue>:discarded``. A discard of a
  response that was pulled as submitted undoes that event.
* ``draft``: ignored until submitted (a submitted response turned back into a
  draft undoes its event, like a discard).

Conflicts with Streamlit/CLI decisions are not special-cased: all events land
in one table and :mod:`curate.status` decides (latest verdict per reviewer, any
open reject wins, adjudication overrides, edits replace). The pull report lists
records where an Argilla verdict disagrees with another front-end's.

Connection: ``--argilla-url`` (key from the env var named by ``--api-key-env``,
default ``ARGILLA_API_KEY``), else ``[argilla] url``/``api_key`` of
``<workspace>/config.toml`` (written by ``make argilla-up``), else
``$ARGILLA_API_URL`` + the env var. Pull needs an owner/admin key to turn user
ids into usernames (otherwise reviewers are named ``argilla-user:<uuid>``).

Known gaps of the local engine (noida-db instead of Elasticsearch): null
metadata values can fail (we never send them), ``/api/v1/status`` answers 422
(we probe ``/api/v1/me``), per-user progress metrics stay 0 (we count from the
responses ourselves).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import httpx

from .example import Example, clean_text
from .review import DEFAULT_REJECT_REASONS
from .store import NotFound, Store

FRONTEND = "argilla"
AGENT = "workbench-signals"
DEFAULT_ARGILLA_WORKSPACE = "workbench"
DECISIONS = ("approve", "reject")
LOW_REWARD = 3.0
HIGH_REWARD = 4.0
PAGE = 1000  # server maximum for GET /records
BULK = 200  # records per bulk upsert (server max 500)
TERMS_META = ("source_kind", "origin", "split", "label", "duplicate", "leak", "pii")
FLOAT_META = ("reward_score",)
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


class QueueError(RuntimeError):
    """A problem the user can fix (server down, bad key, schema changed …); printed without a traceback."""


# ---------------------------------------------------------------------------
# connection
@dataclass
class Connection:
    """Where the Argilla server is and how we authenticate."""

    url: str
    """Base URL of the server, e.g. ``http://127.0.0.1:6900``."""
    api_key: str
    """API key sent as ``X-Argilla-Api-Key``."""
    key_source: str
    """Human-readable origin of the key (for error messages)."""
    workspace: str = DEFAULT_ARGILLA_WORKSPACE
    """Argilla workspace holding the queue datasets."""


def resolve_connection(args: argparse.Namespace, store: Store) -> Connection:
    cfg = dict(store.config.argilla or {})
    cfg_path = store.workspace / "config.toml"
    env_var = getattr(args, "api_key_env", None) or "ARGILLA_API_KEY"
    env_explicit = getattr(args, "api_key_env", None) is not None
    url_arg = getattr(args, "argilla_url", None)
    ws = getattr(args, "workspace_name", None) or cfg.get("workspace") or DEFAULT_ARGILLA_WORKSPACE
    if url_arg:
        url = url_arg
        key, src = os.environ.get(env_var), f"${env_var}"
        if not key and cfg.get("url", "").rstrip("/") == url.rstrip("/") and cfg.get("api_key"):
            key, src = cfg["api_key"], f"{cfg_path} [argilla].api_key"
    elif cfg.get("url"):
        url = cfg["url"]
        if env_explicit and os.environ.get(env_var):
            key, src = os.environ[env_var], f"${env_var}"
        elif cfg.get("api_key"):
            key, src = cfg["api_key"], f"{cfg_path} [argilla].api_key"
        else:
            key, src = os.environ.get(env_var), f"${env_var}"
    elif os.environ.get("ARGILLA_API_URL"):
        url = os.environ["ARGILLA_API_URL"]
        key, src = os.environ.get(env_var), f"${env_var}"
    else:
        raise QueueError(
            f"no Argilla server configured: run `make argilla-up` (writes [argilla] url/api_key into {cfg_path}) "
            f"or pass --argilla-url URL and export {env_var}=<API key>"
        )
    if not key:
        raise QueueError(f"no API key for {url}: export {env_var}=<API key> (or name another variable with --api-key-env)")
    return Connection(url=url.rstrip("/"), api_key=key, key_source=src, workspace=ws)


class Api:
    """Thin REST layer over the SDK's HTTP client: every error becomes a :class:`QueueError`."""

    def __init__(self, conn: Connection, http: httpx.Client | None = None):
        self.conn = conn
        self.http = http or httpx.Client(base_url=conn.url, headers={"X-Argilla-Api-Key": conn.api_key}, timeout=60)
        self._users: dict[str, str] = {}

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise QueueError(
                f"cannot reach the Argilla server at {self.conn.url} ({e.__class__.__name__}: {e}); is it running? "
                "Local server: `make argilla-up`; otherwise check --argilla-url / [argilla].url in the workspace config.toml"
            ) from None
        except httpx.HTTPError as e:
            raise QueueError(f"{method} {self.conn.url}{path} failed: {e.__class__.__name__}: {e}") from None
        if r.status_code == 401:
            raise QueueError(f"the Argilla server at {self.conn.url} rejected the API key from {self.conn.key_source} (401 Unauthorized)")
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            err = QueueError(f"{method} {path} on {self.conn.url} answered {r.status_code}: {str(detail)[:500]}")
            err.status_code = r.status_code  # type: ignore[attr-defined]
            raise err
        return r.json() if r.content else None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    # -- lookups -------------------------------------------------------------
    def me(self) -> dict:
        return self.get("/api/v1/me")

    def workspace_id(self, name: str) -> str | None:
        for w in self.get("/api/v1/me/workspaces")["items"]:
            if w["name"] == name:
                return w["id"]
        return None

    def dataset(self, name: str, workspace_id: str) -> dict | None:
        for d in self.get("/api/v1/me/datasets")["items"]:
            if d["name"] == name and d["workspace_id"] == workspace_id:
                return d
        return None

    def schema(self, dataset_id: str) -> dict[str, list[dict]]:
        return {
            "fields": self.get(f"/api/v1/datasets/{dataset_id}/fields")["items"],
            "questions": self.get(f"/api/v1/datasets/{dataset_id}/questions")["items"],
            "metadata": self.get(f"/api/v1/me/datasets/{dataset_id}/metadata-properties")["items"],
        }

    def records(self, dataset_id: str, include: Iterable[str] = ("responses",)) -> Iterator[dict]:
        offset = 0
        while True:
            page = self.get(f"/api/v1/datasets/{dataset_id}/records",
                            params={"include": list(include), "offset": offset, "limit": PAGE})
            items = page["items"]
            yield from items
            offset += len(items)
            if not items or offset >= page.get("total", 0):
                return

    def username(self, user_id: str) -> str:
        if user_id not in self._users:
            try:
                self._users[user_id] = self.get(f"/api/v1/users/{user_id}")["username"]
            except QueueError as e:
                if getattr(e, "status_code", None) not in (403, 404):
                    raise
                self._users[user_id] = f"argilla-user:{user_id}"
        return self._users[user_id]

    def bulk_upsert(self, dataset_id: str, items: list[dict]) -> None:
        for i in range(0, len(items), BULK):
            self.request("PUT", f"/api/v1/datasets/{dataset_id}/records/bulk", json={"items": items[i : i + BULK]})


def connect(conn: Connection) -> tuple[Api, dict]:
    """Open the REST layer and check the server and key (``/api/v1/me``; ``/status`` is broken on noida)."""
    api = Api(conn)
    me = api.me()
    return api, me


# ---------------------------------------------------------------------------
# schema
def reject_reasons() -> list[str]:
    return list(DEFAULT_REJECT_REASONS)


def expected_schema() -> dict[str, dict[str, dict[str, Any]]]:
    """What a queue dataset must look like: name → {type, options?} per fields/questions/metadata."""
    return {
        "fields": {"chat": {"type": "chat"}, "context": {"type": "text"}},
        "questions": {
            "decision": {"type": "label_selection", "options": list(DECISIONS)},
            "reasons": {"type": "multi_label_selection", "options": reject_reasons()},
            "comment": {"type": "text"},
            "edited_reply": {"type": "text"},
        },
        "metadata": {**{n: {"type": "terms"} for n in TERMS_META}, **{n: {"type": "float"} for n in FLOAT_META}},
    }


def schema_problems(remote: dict[str, list[dict]]) -> tuple[list[str], list[str]]:
    """Compare a dataset's schema with :func:`expected_schema`. Returns (errors, warnings)."""
    errors, warns = [], []
    exp = expected_schema()
    for part in ("fields", "questions", "metadata"):
        have = {x["name"]: x for x in remote.get(part, [])}
        for name, want in exp[part].items():
            got = have.get(name)
            kind = part[:-1] if part != "metadata" else "metadata property"
            if got is None:
                errors.append(f"{kind} '{name}' is missing")
                continue
            gtype = (got.get("settings") or {}).get("type") or got.get("type")
            if gtype != want["type"]:
                errors.append(f"{kind} '{name}' has type {gtype!r}, expected {want['type']!r}")
                continue
            if "options" in want:
                opts = [o["value"] for o in (got.get("settings") or {}).get("options", [])]
                if sorted(opts) != sorted(want["options"]):
                    errors.append(f"{kind} '{name}' has options {opts}, expected {want['options']}")
        for name, got in have.items():
            if name not in exp[part]:
                if part == "questions" and got.get("required"):
                    errors.append(f"extra required question '{name}' (labelers must answer something we do not read)")
                else:
                    warns.append(f"extra {part[:-1] if part != 'metadata' else 'metadata property'} '{name}' is ignored")
    return errors, warns


def check_schema(api: Api, dataset: dict) -> list[str]:
    errors, warns = schema_problems(api.schema(dataset["id"]))
    if errors:
        raise QueueError(
            f"the Argilla dataset '{dataset['name']}' ({api.conn.url}) does not have the schema this workbench expects "
            "(was it changed by hand?):\n  - " + "\n  - ".join(errors)
            + "\nrestore it, delete the dataset, or push to a new --queue name"
        )
    return warns


def sdk_client(conn: Connection):
    """An ``argilla.Argilla`` client (the SDK checks ``/api/v1/me`` on creation)."""
    import argilla as rg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rg.Argilla(api_url=conn.url, api_key=conn.api_key)


def build_settings(client, min_submitted: int = 1):
    """The SDK settings for a new queue dataset (must agree with :func:`expected_schema`).

    The SDK builds settings objects against its default client; ``client``
    (from :func:`sdk_client`) is made the default first.
    """
    import argilla as rg

    from .compat import argilla_set_default

    argilla_set_default(client)

    return rg.Settings(
        guidelines=(
            "Review each conversation as training data for the assistant.\n\n"
            "* **decision**: approve if the assistant reply is correct, helpful and safe; reject otherwise "
            "(pick one or more reasons).\n"
            "* **edited_reply** is pre-filled with the assistant's reply: change it to propose a corrected reply "
            "(this replaces the record with a new one that is reviewed again).\n"
            "* **Discard** = skip: it records nothing.\n"
            "The context field shows the source, duplicate / leakage findings and reward scores."
        ),
        fields=[
            rg.ChatField(name="chat", title="Conversation", use_markdown=False),
            rg.TextField(name="context", title="Context (source, signals)", use_markdown=True),
        ],
        questions=[
            rg.LabelQuestion(name="decision", title="Decision", labels=list(DECISIONS), required=True),
            rg.MultiLabelQuestion(name="reasons", title="Reject reasons", labels=reject_reasons(), required=False),
            rg.TextQuestion(name="comment", title="Comment (optional)", required=False),
            rg.TextQuestion(name="edited_reply", title="Assistant reply (edit to correct it)", required=False),
        ],
        metadata=[
            rg.TermsMetadataProperty(name="source_kind", title="source kind"),
            rg.TermsMetadataProperty(name="origin", title="origin"),
            rg.TermsMetadataProperty(name="split", title="split"),
            rg.TermsMetadataProperty(name="label", title="label"),
            rg.TermsMetadataProperty(name="duplicate", title="has duplicate", options=["yes", "no"]),
            rg.TermsMetadataProperty(name="leak", title="leaks held-out", options=["yes", "no"]),
            rg.TermsMetadataProperty(name="pii", title="PII replaced", options=["yes", "no"]),
            rg.FloatMetadataProperty(name="reward_score", title="reward score"),
        ],
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )


def ensure_dataset(api: Api, me: dict, queue: str, min_submitted: int = 1) -> tuple[dict, bool]:
    """Find the queue's dataset (checking its schema) or create it (and the workspace). Returns (dataset, created)."""
    ws_name = api.conn.workspace
    ws_id = api.workspace_id(ws_name)
    if ws_id is None:
        if me.get("role") not in ("owner",):
            raise QueueError(f"Argilla workspace '{ws_name}' does not exist (or user '{me.get('username')}' is not in it) "
                             "and only an owner can create it; pass --workspace-name of one you belong to")
        api.request("POST", "/api/v1/workspaces", json={"name": ws_name})
        ws_id = api.workspace_id(ws_name)
    ds = api.dataset(queue, ws_id)
    if ds is not None:
        return ds, False
    import argilla as rg

    try:
        client = sdk_client(api.conn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rg.Dataset(name=queue, workspace=ws_name, settings=build_settings(client, min_submitted)).create()
    except QueueError:
        raise
    except Exception as e:  # the SDK's own errors (ArgillaAPIError …)
        raise QueueError(f"creating the Argilla dataset '{queue}' in workspace '{ws_name}' failed: {e}") from None
    ds = api.dataset(queue, ws_id)
    if ds is None:
        raise QueueError(f"the Argilla dataset '{queue}' was created but is not visible to user '{me.get('username')}'")
    return ds, True


# ---------------------------------------------------------------------------
# record → Argilla
def _yes(v: Any) -> str:
    return "yes" if v else "no"


def reward_score(ex: Example) -> float | None:
    r = ex.signals.get("reward")
    s = r.get("score") if isinstance(r, dict) else None
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None


def record_metadata(ex: Example) -> dict[str, Any]:
    """Metadata for the UI filters. Never a null value (the local engine fails on them)."""
    md: dict[str, Any] = {
        "source_kind": ex.source.kind or "unknown",
        "origin": ex.origin.get("kind") or "human",
        "split": ex.split or "unknown",
        "label": ex.label if ex.label not in (None, "") else "none",
        "duplicate": _yes(ex.signals.get("duplicate_of")),
        "leak": _yes(ex.signals.get("leakage")),
        "pii": _yes(ex.signals.get("pii")),
    }
    s = reward_score(ex)
    if s is not None:
        md["reward_score"] = s
    return md


def signal_verdict(ex: Example) -> tuple[str | None, list[str], float]:
    """What our signals suggest: (decision or None, reasons, confidence)."""
    reasons: list[str] = []
    conf = 0.0
    s = reward_score(ex)
    if ex.signals.get("leakage"):
        reasons.append("leaks held-out / eval data")
        conf = max(conf, 0.9)
    if ex.signals.get("duplicate_of"):
        reasons.append("duplicate")
        conf = max(conf, 0.8)
    if s is not None and s < LOW_REWARD:
        reasons.append("low quality synthetic" if ex.origin.get("kind") == "synthetic" else "unhelpful or off-policy reply")
        conf = max(conf, 0.7)
    if reasons:
        return "reject", reasons, conf
    if s is not None and s >= HIGH_REWARD:
        return "approve", [], round(min(1.0, s / 5.0), 3)
    return None, [], 0.0


def last_assistant(messages: list[dict[str, str]]) -> str:
    for m in reversed(messages):
        if m["role"] == "assistant":
            return m["content"]
    return ""


def context_markdown(ex: Example) -> str:
    """The context the Streamlit app shows, as markdown for the ``context`` field."""
    lines = [f"**record** `{ex.id}` · status **{ex.status}** · split **{ex.split or '?'}** · label **{ex.label or 'none'}**"]
    src = f"**source** {ex.source.kind}"
    if ex.source.file:
        src += f" · `{ex.source.file}`" + (f" {ex.source.loc}" if ex.source.loc else "")
    if ex.source.ref:
        src += f" · ref `{ex.source.ref}`"
    lines.append(src)
    o = ex.origin
    if o.get("kind") == "synthetic":
        lines.append(f"**origin** synthetic · model `{o.get('model', '?')}` · strategy `{o.get('strategy', '?')}`"
                     + (f" · parents {', '.join('`%s`' % p for p in o.get('parent_ids', [])[:3])}" if o.get("parent_ids") else ""))
    else:
        lines.append("**origin** human")
    if ex.parent_id:
        lines.append(f"**edit of** `{ex.parent_id}`")
    r = ex.signals.get("reward")
    if isinstance(r, dict) and r.get("score") is not None:
        lines.append(f"**reward** {r.get('score')} / 5" + (f" — {str(r.get('rationale'))[:300]}" if r.get("rationale") else ""))
    if ex.signals.get("duplicate_of"):
        d = f"**duplicate of** `{ex.signals['duplicate_of']}`"
        if ex.signals.get("dup_score") is not None:
            d += f" (similarity {ex.signals['dup_score']})"
        if ex.signals.get("dup_cluster") is not None:
            d += f" · cluster `{ex.signals['dup_cluster']}`"
        lines.append(d)
    leaks = ex.signals.get("leakage") or []
    if leaks:
        lines.append(f"**leakage** {len(leaks)} hit(s):")
        for h in leaks[:3]:
            if isinstance(h, dict):
                other = h.get("heldout_id") or h.get("other_id") or h.get("id") or "?"
                sim = h.get("score", h.get("similarity", ""))
                txt = str(h.get("text") or h.get("other_text") or "")[:200]
                lines.append(f"- `{other}` {sim} {txt}".rstrip())
            else:
                lines.append(f"- {str(h)[:200]}")
    pii = ex.signals.get("pii") or []
    if pii:
        kinds = sorted({(p.get("kind") or p.get("type") or "?") if isinstance(p, dict) else str(p) for p in pii})
        lines.append(f"**PII replaced** {len(pii)} ({', '.join(kinds)})")
    verdict, reasons, conf = signal_verdict(ex)
    if verdict:
        lines.append(f"**signals suggest** {verdict}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    return "\n\n".join(lines)


def record_suggestions(ex: Example, question_ids: dict[str, str]) -> list[dict[str, Any]]:
    """Suggestions for the bulk API (``question_id`` keyed); the edit box is pre-filled with the reply."""
    out = []
    verdict, reasons, conf = signal_verdict(ex)
    if verdict:
        out.append({"question_id": question_ids["decision"], "value": verdict, "score": conf, "agent": AGENT})
    if reasons:
        out.append({"question_id": question_ids["reasons"], "value": reasons, "score": [conf] * len(reasons), "agent": AGENT})
    out.append({"question_id": question_ids["edited_reply"], "value": last_assistant(ex.messages), "agent": AGENT})
    return out


def to_argilla_item(ex: Example, question_ids: dict[str, str]) -> dict[str, Any]:
    """One item of ``PUT /api/v1/datasets/{id}/records/bulk`` for a new record."""
    return {
        "external_id": ex.id,
        "fields": {"chat": [{"role": m["role"], "content": m["content"]} for m in ex.messages],
                   "context": context_markdown(ex)},
        "metadata": record_metadata(ex),
        "suggestions": record_suggestions(ex, question_ids),
    }


def _norm_suggestions(items: list[dict]) -> list[tuple]:
    return sorted((s["question_id"], json.dumps(s.get("value"), sort_keys=True)) for s in items or [])


def needs_refresh(remote: dict, item: dict) -> bool:
    """True if an unanswered remote record shows stale context / metadata / suggestions."""
    return (remote.get("metadata") or {}) != item["metadata"] or \
        (remote.get("fields") or {}).get("context") != item["fields"]["context"] or \
        _norm_suggestions(remote.get("suggestions")) != _norm_suggestions(item["suggestions"])


# ---------------------------------------------------------------------------
# push
def push(store: Store, api: Api, me: dict, queue: str, filters: dict[str, Any], limit: int | None = None,
         min_submitted: int = 1, progress: bool = False) -> dict[str, Any]:
    ds, created = ensure_dataset(api, me, queue, min_submitted)
    warns = check_schema(api, ds)
    qids = {q["name"]: q["id"] for q in api.schema(ds["id"])["questions"]}
    remote = {r["external_id"]: r for r in api.records(ds["id"], include=("responses", "suggestions")) if r.get("external_id")}
    selected = store.query(filters, limit=limit)
    new, refresh, kept_answered, unchanged = [], [], 0, 0
    for ex in selected:
        item = to_argilla_item(ex, qids)
        r = remote.get(ex.id)
        if r is None:
            new.append(item)
        elif r.get("responses"):
            kept_answered += 1
        elif needs_refresh(r, item):
            refresh.append({"id": r["id"], **item})
        else:
            unchanged += 1
    todo = new + refresh
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"push {queue}", unit="rec")
    for i in range(0, len(todo), BULK):
        api.bulk_upsert(ds["id"], todo[i : i + BULK])
        if bar:
            bar.update(len(todo[i : i + BULK]))
    if bar:
        bar.close()
    rep = {
        "queue": queue, "url": api.conn.url, "workspace": api.conn.workspace, "dataset_id": ds["id"],
        "dataset_created": created, "selected": len(selected), "added": len(new), "refreshed": len(refresh),
        "already_answered": kept_answered, "unchanged": unchanged, "in_dataset": len(remote) + len(new),
        "filters": {k: v for k, v in filters.items() if v not in (None, False)}, "warnings": warns,
    }
    store.meta_put(f"argilla:{queue}:last_push", rep)
    return rep


# ---------------------------------------------------------------------------
# pull
def _value(values: dict | None, q: str) -> Any:
    v = (values or {}).get(q)
    return v.get("value") if isinstance(v, dict) else None


def plan_event(ex: Example, values: dict | None) -> dict[str, Any]:
    """Map one submitted response's values to the event it stands for.

    Returns ``{"action": approve|reject|edit, "reason": str|None, "messages": [...]?}``
    or ``{"action": None, "problem": "..."}`` when the response cannot be mapped.
    """
    reasons = _value(values, "reasons") or []
    if isinstance(reasons, str):
        reasons = [reasons]
    comment = (_value(values, "comment") or "").strip()
    reason = "; ".join([*reasons, *([comment] if comment else [])]) or None
    edited = _value(values, "edited_reply")
    if isinstance(edited, str) and edited.strip() and clean_text(edited) != clean_text(last_assistant(ex.messages)):
        msgs = [dict(m) for m in ex.messages]
        msgs[-1] = {"role": "assistant", "content": edited}
        return {"action": "edit", "reason": reason, "messages": msgs}
    decision = _value(values, "decision")
    if decision not in DECISIONS:
        return {"action": None, "problem": f"submitted without a valid decision ({decision!r})"}
    return {"action": decision, "reason": reason if decision == "reject" else (comment or None)}


def _response_events(store: Store, response_id: str) -> list[dict]:
    rows = store.conn.execute("SELECT * FROM events WHERE external_id LIKE ? ORDER BY id",
                              (f"argilla:{response_id}:%",)).fetchall()
    return [dict(r) for r in rows]


def _live_event(evs: list[dict]) -> dict | None:
    """The not-undone non-undo event created from one response (at most one by construction)."""
    undone = {e["undoes"] for e in evs if e["action"] == "undo"}
    live = [e for e in evs if e["action"] != "undo" and e["id"] not in undone]
    return live[-1] if live else None


def pull(store: Store, api: Api, queue: str, progress: bool = False) -> dict[str, Any]:
    ws_id = api.workspace_id(api.conn.workspace)
    ds = api.dataset(queue, ws_id) if ws_id else None
    if ds is None:
        raise QueueError(f"no Argilla dataset '{queue}' in workspace '{api.conn.workspace}' at {api.conn.url} "
                         f"(visible to this key); push it first: python -m curate review push --queue {queue}")
    warns = check_schema(api, ds)
    counts = {"records": 0, "responses": 0, "submitted": 0, "discarded": 0, "draft": 0}
    added = {"approve": 0, "reject": 0, "edit": 0, "undo": 0}
    already, unknown, problems, discarded, conflicts = 0, [], [], [], []
    records = list(api.records(ds["id"], include=("responses",)))
    it = records
    if progress and records:
        from tqdm import tqdm

        it = tqdm(records, desc=f"pull {queue}", unit="rec")
    for r in it:
        counts["records"] += 1
        resps = r.get("responses") or []
        if not resps:
            continue
        rid = r.get("external_id")
        try:
            ex = store.get(rid) if rid else None
        except NotFound:
            ex = None
        if ex is None:
            unknown.append(rid or r["id"])
            continue
        for resp in sorted(resps, key=lambda x: (x["updated_at"], x["id"])):
            counts["responses"] += 1
            status = resp["status"]
            counts[status] = counts.get(status, 0) + 1
            user = api.username(resp["user_id"])
            key = f"argilla:{resp['id']}:{resp['updated_at']}"
            evs = _response_events(store, resp["id"])
            live = _live_event(evs)
            if status == "submitted":
                if any(e["external_id"] == key for e in evs):
                    already += 1
                    continue
                plan = plan_event(ex, resp.get("values"))
                if plan["action"] is None:
                    problems.append({"record_id": rid, "reviewer": user, "response_id": resp["id"], "problem": plan["problem"]})
                    continue
                if live is not None:  # the labeler changed an answer we had pulled: retire the old event first
                    store.add_event(rid, live["reviewer"], "undo", frontend=FRONTEND, undoes=live["id"], external_id=key + ":undo")
                    added["undo"] += 1
                new_ex = ex.edited(plan["messages"]) if plan["action"] == "edit" else None
                store.add_event(rid, user, plan["action"], frontend=FRONTEND, reason=plan["reason"],
                                new_example=new_ex, external_id=key)
                added[plan["action"]] += 1
                other = _other_frontend_verdicts(store, rid)
                if plan["action"] in DECISIONS and any(v != plan["action"] for v in other.values()):
                    conflicts.append({"record_id": rid, "argilla": {user: plan["action"]}, "others": other,
                                      "status": store.get(rid).status})
            else:  # discarded / draft: no event; withdraw what we pulled before
                if status == "discarded":
                    discarded.append({"record_id": rid, "reviewer": user, "response_id": resp["id"], "at": resp["updated_at"]})
                if live is not None and not any(e["external_id"] == key + ":undo" for e in evs):
                    store.add_event(rid, live["reviewer"], "undo", frontend=FRONTEND, undoes=live["id"], external_id=key + ":undo")
                    added["undo"] += 1
    rep = {
        "queue": queue, "url": api.conn.url, "workspace": api.conn.workspace, "dataset_id": ds["id"],
        **counts, "events_added": added, "already_pulled": already, "discarded_records": discarded,
        "unknown_records": unknown, "problems": problems, "conflicts_with_other_frontends": conflicts,
        "warnings": warns, "status_after": store.count_by("status"),
    }
    store.meta_put(f"argilla:{queue}:discarded", discarded)
    store.meta_put(f"argilla:{queue}:last_pull", {k: v for k, v in rep.items() if k != "discarded_records"})
    return rep


def _other_frontend_verdicts(store: Store, record_id: str) -> dict[str, str]:
    """Latest live approve/reject per reviewer from front-ends other than Argilla."""
    evs = store.events(record_id=record_id)
    undone = {e["undoes"] for e in evs if e["action"] == "undo"}
    out: dict[str, str] = {}
    for e in evs:
        if e["frontend"] != FRONTEND and e["id"] not in undone and e["action"] in DECISIONS:
            out[f"{e['reviewer']}@{e['frontend']}"] = e["action"]
    return out


# ---------------------------------------------------------------------------
# CLI
PUSH_HELP = "send records to an Argilla dataset (one per queue); idempotent"
PULL_HELP = "turn submitted Argilla responses into review events; idempotent"
EPILOG = """connection: --argilla-url URL + $ARGILLA_API_KEY (or --api-key-env VAR), else [argilla] url/api_key in
<workspace>/config.toml (written by `make argilla-up`). See docs/argilla.md.

examples:
  make argilla-up
  python -m curate review push --queue synth-check --origin synthetic
  python -m curate review push --queue leaks --has-leak          # pending records flagged by `curate leakage`
  python -m curate review pull --queue synth-check
"""


def add_cli(review_subparsers, common_parent, add_filter_args, cmd_review) -> None:
    for name, help_ in (("push", PUSH_HELP), ("pull", PULL_HELP)):
        p = review_subparsers.add_parser(name, parents=[common_parent], help=help_, description=__doc__,
                                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--queue", required=True, help="queue name = Argilla dataset name (letters, digits, _ . -)")
        p.add_argument("--argilla-url", help="server URL (default: [argilla].url of the workspace config.toml, else $ARGILLA_API_URL)")
        p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key (default ARGILLA_API_KEY)")
        p.add_argument("--workspace-name", metavar="W", help=f"Argilla workspace (default: [argilla].workspace or {DEFAULT_ARGILLA_WORKSPACE!r})")
        if name == "push":
            add_filter_args(p, default_status="pending")
            p.add_argument("--all-statuses", action="store_true",
                           help="ignore --status: select decided records too (e.g. a second opinion on approved ones)")
            p.add_argument("--has-duplicate", action="store_true", help="only records flagged as near/exact duplicates")
            p.add_argument("--has-leak", action="store_true", help="only records flagged as leaking held-out data")
            p.add_argument("--low-reward", type=float, nargs="?", const=LOW_REWARD, metavar="THR",
                           help=f"only records with reward score below THR (default {LOW_REWARD})")
            p.add_argument("--min-submitted", type=int, default=1,
                           help="answers per record before Argilla marks it complete (new datasets only; default 1)")
        p.set_defaults(func=cmd_review)


def _push_filters(args: argparse.Namespace) -> dict[str, Any]:
    f = {k: getattr(args, k, None) for k in ("status", "split", "origin", "source_kind", "label")}
    if getattr(args, "all_statuses", False):
        f["status"] = None
    f["has_duplicate"] = bool(getattr(args, "has_duplicate", False)) or None
    f["has_leak"] = bool(getattr(args, "has_leak", False)) or None
    f["low_reward"] = getattr(args, "low_reward", None)
    return f


def _text(rep: dict[str, Any], cmd: str) -> str:
    if cmd == "push":
        t = (f"queue {rep['queue']} ({rep['url']}, workspace {rep['workspace']}{', created' if rep['dataset_created'] else ''}): "
             f"selected {rep['selected']}, added {rep['added']}, refreshed {rep['refreshed']}, "
             f"already answered {rep['already_answered']}, unchanged {rep['unchanged']}; {rep['in_dataset']} in the dataset")
    else:
        a = rep["events_added"]
        t = (f"queue {rep['queue']}: {rep['records']} records, {rep['responses']} responses "
             f"(submitted {rep['submitted']}, discarded {rep['discarded']}, draft {rep['draft']})\n"
             f"events added: approve {a['approve']}, reject {a['reject']}, edit {a['edit']}, undo {a['undo']}; "
             f"already pulled {rep['already_pulled']}\n"
             f"discarded (no event): {len(rep['discarded_records'])}; drafts ignored until submitted: {rep['draft']}\n"
             f"status now: {json.dumps(rep['status_after'])}")
        if rep["conflicts_with_other_frontends"]:
            t += f"\n{len(rep['conflicts_with_other_frontends'])} record(s) where Argilla disagrees with another front-end (status rule applied)"
        if rep["unknown_records"]:
            t += f"\nwarning: {len(rep['unknown_records'])} answered record(s) not in this store: {rep['unknown_records'][:5]}"
        for p in rep["problems"]:
            t += f"\nwarning: record {p['record_id']} by {p['reviewer']}: {p['problem']}"
    for w in rep.get("warnings", []):
        t += f"\nnote: {w}"
    return t


def main(args: argparse.Namespace, store: Store) -> int:
    cmd = args.review_cmd
    try:
        if not QUEUE_NAME.match(args.queue):
            raise QueueError(f"bad --queue {args.queue!r}: use letters, digits, '_', '.', '-' (max 200)")
        conn = resolve_connection(args, store)
        api, me = connect(conn)
        progress = not getattr(args, "json", False) and sys.stderr.isatty()
        if cmd == "push":
            if args.min_submitted < 1:
                raise QueueError("--min-submitted must be >= 1")
            rep = push(store, api, me, args.queue, _push_filters(args), limit=args.limit,
                       min_submitted=args.min_submitted, progress=progress)
        else:
            rep = pull(store, api, args.queue, progress=progress)
    except QueueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(rep, indent=2, ensure_ascii=False, default=str))
    else:
        print(_text(rep, cmd))
    return 0
