"""The webhook receiver: lakeFS actions and CI systems in, Prefect events out.

    POST /hooks/lakefs?project=NAME   a lakeFS actions webhook (post-merge / post-commit on a watched
                          branch) -> `lakeloop.data.published` for project NAME (what its `retrain`
                          trigger listens for; `lakeloop project add` installs the action with its name)
    POST /hooks/retrain   a CI system asks for retraining of `project` -> `lakeloop.retrain.requested`
    GET  /healthz         open

Both hooks need `Authorization: Bearer <token>` (the token lives in Vault at lakeloop/webhook),
compared in constant time. Every delivery has an idempotency key (lakeFS: repository, commit and
event type; CI: the `Idempotency-Key` header, else the body's hash); the first delivery of a key
emits one event and answers 202 with its id, repeats answer 202 `duplicate` and emit nothing, and an
`Idempotency-Key` sent again with a different body answers 422 (the key names another request). Keys
are claimed with one `INSERT OR IGNORE` in SQLite, so concurrent floods and restarts both keep it
to one event. The event id is derived from the key (`lakeloop.events`), the same id the ingest-data
flow gives its own announcement of the merge, so Prefect's triggers act on one of the two.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lakeloop.errors import LakeloopError
from lakeloop.events import DATA_PUBLISHED, RETRAIN_REQUESTED, data_resource, event_id, lakefs_key, project_resource
from lakeloop.project import NAME_RE

log = logging.getLogger("lakeloop.webhooks")
LAKEFS_REQUIRED = ("event_type", "repository_id", "branch_id", "commit_id")
WATCHED_EVENTS = ("post-merge", "post-commit")


class WebhookError(LakeloopError):
    """The receiver could not hand an event to Prefect."""


class Deliveries:
    """Idempotency keys already acted on, in SQLite (survives restarts; safe across threads)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS deliveries (key TEXT PRIMARY KEY, event_id TEXT, at TEXT, "
                         "fingerprint TEXT)")
        if "fingerprint" not in {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}:
            self._db.execute("ALTER TABLE deliveries ADD COLUMN fingerprint TEXT")  # a receiver's older file
        self._lock = threading.Lock()

    def claim(self, key: str, event_id: str, fingerprint: str | None = None) -> bool | None:
        """True for the first delivery of `key`, False for a repeat; None for a key already used by a request
        with another `fingerprint` (a client's Idempotency-Key reused for a different request)."""
        with self._lock:
            cursor = self._db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?)",
                                      (key, event_id, dt.datetime.now(dt.UTC).isoformat(), fingerprint))
            if cursor.rowcount == 1:
                return True
            if fingerprint is None:
                return False
            (first,) = self._db.execute("SELECT fingerprint FROM deliveries WHERE key = ?", (key,)).fetchone()
            return False if first in (None, fingerprint) else None

    def release(self, key: str) -> None:
        """Forget a key whose event could not be sent, so the sender's retry can succeed."""
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE key = ?", (key,))


class PrefectEvents:
    """Sends events to a Prefect server's `POST /api/events` (no Prefect install needed)."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(timeout=10)

    def emit(self, event: dict) -> None:
        try:
            answer = self._http.post(f"{self.api_url}/events", json=[event])
        except httpx.HTTPError as exc:
            raise WebhookError(f"the Prefect API at {self.api_url} is unreachable: {exc}") from exc
        if answer.status_code >= 300:
            raise WebhookError(f"the Prefect API at {self.api_url} refused the event: {answer.status_code} "
                               f"{answer.text[:200]}")


def _event(name: str, key: str, resource: dict, payload: dict) -> dict:
    return {"id": str(event_id(key)), "occurred": dt.datetime.now(dt.UTC).isoformat(),
            "event": name, "resource": resource, "payload": payload, "related": []}


MAX_BODY_BYTES = 1024 * 1024  # a lakeFS action or a CI request is a few KB


def create_app(token: Callable[[], str], events: PrefectEvents, deliveries: Deliveries,
               branches: tuple[str, ...] = ("main",)) -> Starlette:
    """The receiver. `token()` returns the current bearer token (re-read from Vault by the caller)."""

    def authorized(request: Request) -> bool:
        presented = request.headers.get("authorization", "")
        expected = f"Bearer {token()}"
        return hmac.compare_digest(presented.encode(), expected.encode())

    def unauthorized() -> JSONResponse:
        return JSONResponse({"error": "missing or invalid token: send 'Authorization: Bearer <token>'"}, 401,
                            headers={"www-authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes | JSONResponse:
        """The body, streamed and refused (413) once it passes MAX_BODY_BYTES: a delivery is a few KB."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"body larger than {MAX_BODY_BYTES:,} bytes"}, 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return JSONResponse({"error": f"body larger than {MAX_BODY_BYTES:,} bytes"}, 413)
            chunks.append(chunk)
        return b"".join(chunks)

    def read_json(body: bytes | JSONResponse) -> dict | JSONResponse:
        if isinstance(body, JSONResponse):
            return body
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": f"malformed JSON body: {exc}"}, 400)
        except RecursionError:  # deeper than the parser recurses; a delivery is a flat object
            return JSONResponse({"error": "malformed JSON body: nested too deeply"}, 400)
        if not isinstance(data, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, 400)
        return data

    async def deliver(key: str, event: dict, fingerprint: str | None = None) -> JSONResponse:
        claimed = await run_in_threadpool(deliveries.claim, key, event["id"], fingerprint)
        if claimed is None:
            return JSONResponse({"error": "this Idempotency-Key was used for a different request: send a new key "
                                          "for a new request (a retry must repeat the same body)"}, 422)
        if not claimed:
            return JSONResponse({"status": "duplicate", "event_id": event["id"], "event": event["event"]}, 202)
        try:
            await run_in_threadpool(events.emit, event)
        except WebhookError as exc:
            await run_in_threadpool(deliveries.release, key)
            log.error("%s", exc)
            return JSONResponse({"error": str(exc)}, 503)
        log.info("%s %s (%s)", event["event"], event["id"], key)
        return JSONResponse({"status": "accepted", "event_id": event["id"], "event": event["event"]}, 202)

    async def lakefs_hook(request: Request) -> JSONResponse:
        if not authorized(request):
            return unauthorized()
        data = read_json(await read_body(request))
        if isinstance(data, JSONResponse):
            return data
        missing = [f for f in LAKEFS_REQUIRED if not isinstance(data.get(f), str) or not data.get(f)]
        if missing:
            return JSONResponse({"error": f"not a lakeFS actions payload: missing {', '.join(missing)} (expected "
                                          f"{', '.join(LAKEFS_REQUIRED)})"}, 400)
        project = request.query_params.get("project", "")
        if not NAME_RE.match(project):
            return JSONResponse({"error": f"the action's url must name the project: /hooks/lakefs?project=NAME "
                                          f"(got {project!r}); `lakeloop project add` installs it so"}, 400)
        repository, branch, commit = data["repository_id"], data["branch_id"], data["commit_id"]
        if data["event_type"] not in WATCHED_EVENTS or branch not in branches:
            return JSONResponse({"status": "ignored", "reason": f"{data['event_type']} on {branch} is not watched "
                                 f"({', '.join(WATCHED_EVENTS)} on {', '.join(branches)})"}, 202)
        key = lakefs_key(repository, commit, data["event_type"])
        event = _event(DATA_PUBLISHED, key, data_resource(repository, branch, project),
                       {"commit_id": commit, "source": "lakefs-webhook", "lakefs_event": data["event_type"],
                        "action": data.get("action_name", ""), "source_ref": data.get("source_ref", ""),
                        "committer": data.get("committer", ""), "batch_id": data.get("commit_metadata", {})
                        .get("batch_id", "") if isinstance(data.get("commit_metadata"), dict) else ""})
        return await deliver(key, event)

    async def retrain_hook(request: Request) -> JSONResponse:
        if not authorized(request):
            return unauthorized()
        body = await read_body(request)
        data = read_json(body)
        if isinstance(data, JSONResponse):
            return data
        project = data.get("project")
        if not isinstance(project, str) or not NAME_RE.match(project):
            return JSONResponse({"error": f"give the 'project' to retrain (its name in lakeloop.yaml; got "
                                          f"{project!r}): `lakeloop project list` shows them"}, 400)
        reason = data.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            return JSONResponse({"error": "give a 'reason' (string): it goes into the run's audit trail"}, 400)
        ref = data.get("ref")
        if ref is not None and not isinstance(ref, str):
            return JSONResponse({"error": "'ref' must be a string (a branch, tag or commit id)"}, 400)
        digest = hashlib.sha256(body).hexdigest()
        given = request.headers.get("idempotency-key")
        key = "retrain:" + (given or digest)
        event = _event(RETRAIN_REQUESTED, key, project_resource(project),
                       {"reason": reason.strip(), "ref": ref, "requested_by": str(data.get("requested_by", ""))})
        return await deliver(key, event, digest if given else None)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/hooks/lakefs", lakefs_hook, methods=["POST"]),
                             Route("/hooks/retrain", retrain_hook, methods=["POST"]),
                             Route("/healthz", health)])
