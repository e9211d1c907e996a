"""HTTP layer of the embedded lakeFS-compatible server (lakeFS REST API v1 subset).

Every operation here answers as `../shared/specs/lakefs-api.yml` says (status codes, JSON shapes,
pagination), so the official `lakefs` / `lakefs-sdk` clients work against it unchanged.
"""

from __future__ import annotations

import base64
import email.utils
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lakeloop.devstack.lakefs import _actions
from lakeloop.devstack.lakefs._store import (
    BadRequest,
    Commit,
    Entry,
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
    Store,
    StoreError,
)

log = logging.getLogger("lakeloop.lakefs")
VERSION = "1.0.0-lakeloop-embedded"
API = "/api/v1"
MAX_AMOUNT = 1000
DEFAULT_AMOUNT = 100
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_META_PREFIX = "x-lakefs-meta-"
_CHUNK = 1 << 20


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _paginate(items: list[Any], key: Callable[[Any], str], request: Request) -> tuple[list[Any], dict]:
    """lakeFS pagination: `after` is exclusive, `amount` caps a page, `next_offset` is the last key."""
    after = request.query_params.get("after", "")
    try:
        amount = int(request.query_params.get("amount", DEFAULT_AMOUNT))
    except ValueError as exc:
        raise BadRequest("invalid amount: expected an integer") from exc
    if amount < 0:
        raise BadRequest("invalid amount: must not be negative")
    amount = min(amount or DEFAULT_AMOUNT, MAX_AMOUNT)
    if after:
        items = [i for i in items if key(i) > after]
    page, has_more = items[:amount], len(items) > amount
    return page, {"has_more": has_more, "next_offset": key(page[-1]) if has_more and page else "",
                  "results": len(page), "max_per_page": MAX_AMOUNT}


def _listing(items: list[Any], key: Callable[[Any], str], render: Callable[[Any], dict],
             request: Request) -> JSONResponse:
    prefix = request.query_params.get("prefix", "")
    items = sorted((i for i in items if key(i).startswith(prefix)), key=key)
    page, pagination = _paginate(items, key, request)
    return JSONResponse({"pagination": pagination, "results": [render(i) for i in page]})


def _commit_json(c: Commit) -> dict:
    return {"id": c.id, "parents": c.parents, "committer": c.committer, "message": c.message,
            "creation_date": c.creation_date, "meta_range_id": c.meta_range_id, "metadata": c.metadata,
            "generation": c.generation, "version": 1}


def _bool(request: Request, name: str, default: bool = False) -> bool:
    value = request.query_params.get(name)
    return default if value is None else value.lower() in ("1", "true", "yes")


class LakeFSApp:
    """The embedded server: `app` is the ASGI application."""

    def __init__(self, data_dir: Path, access_key_id: str, secret_access_key: str,
                 committer: str = "admin") -> None:
        if not access_key_id or not secret_access_key:
            raise ValueError("the embedded lakeFS server needs an access key id and a secret access key")
        self.store = Store(Path(data_dir))
        self._key_id = access_key_id.encode()  # bytes: compare_digest refuses non-ASCII text
        self._secret = secret_access_key.encode()
        self.committer = committer
        r = f"{API}/repositories/{{repository}}"
        routes = [
            Route(f"{API}/healthcheck", self.healthcheck, methods=["GET"]),
            Route(f"{API}/config", self.config, methods=["GET"]),
            Route(f"{API}/config/version", self.version, methods=["GET"]),
            Route(f"{API}/config/storage", self.storage, methods=["GET"]),
            Route(f"{API}/user", self.user, methods=["GET"]),
            Route(f"{API}/repositories", self.repositories, methods=["GET", "POST"]),
            Route(r, self.repository, methods=["GET", "DELETE"]),
            Route(f"{r}/metadata", self.repository_metadata, methods=["GET"]),
            Route(f"{r}/branches", self.branches, methods=["GET", "POST"]),
            Route(f"{r}/branches/{{branch}}", self.branch, methods=["GET", "DELETE", "PUT"]),
            Route(f"{r}/branches/{{branch}}/objects", self.branch_objects, methods=["POST", "DELETE"]),
            Route(f"{r}/branches/{{branch}}/objects/delete", self.delete_objects, methods=["POST"]),
            Route(f"{r}/branches/{{branch}}/commits", self.commit, methods=["POST"]),
            Route(f"{r}/branches/{{branch}}/diff", self.diff_branch, methods=["GET"]),
            Route(f"{r}/commits/{{commit_id}}", self.get_commit, methods=["GET"]),
            Route(f"{r}/refs/{{ref}}/objects", self.get_object, methods=["GET", "HEAD"]),
            Route(f"{r}/refs/{{ref}}/objects/stat", self.stat_object, methods=["GET"]),
            Route(f"{r}/refs/{{ref}}/objects/ls", self.list_objects, methods=["GET"]),
            Route(f"{r}/refs/{{ref}}/commits", self.log_commits, methods=["GET"]),
            Route(f"{r}/refs/{{left}}/diff/{{right}}", self.diff_refs, methods=["GET"]),
            Route(f"{r}/refs/{{source}}/merge/{{destination}}", self.merge, methods=["POST", "GET"]),
            Route(f"{r}/tags", self.tags, methods=["GET", "POST"]),
            Route(f"{r}/tags/{{tag}}", self.tag, methods=["GET", "DELETE"]),
        ]
        self.app = Starlette(routes=[Route(x.path, self._guard(x.endpoint), methods=x.methods)
                                     for x in routes])

    # -- plumbing ---------------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            key_id, _, secret = base64.b64decode(header[6:], validate=True).partition(b":")
        except ValueError:
            return False
        return hmac.compare_digest(key_id, self._key_id) & hmac.compare_digest(secret, self._secret)

    def _guard(self, endpoint: Callable) -> Callable:
        async def guarded(request: Request) -> Response:
            if endpoint != self.healthcheck and not self._authorized(request):
                return _error(401, "error authenticating request")
            try:
                return await endpoint(request)
            except StoreError as exc:
                return _error(exc.status, exc.message)
            except _actions.HookFailed as exc:
                return _error(412, f"precondition failed: {exc}")
            except json.JSONDecodeError:
                return _error(400, "request body is not valid JSON")
            except RecursionError:  # JSON nested deeper than the parser recurses: no lakeFS request is
                return _error(400, "request body is nested too deeply")
            except ClientDisconnect:
                return _error(400, "client disconnected before the request body was complete")
            except Exception:  # an answer in lakeFS's error shape, and the traceback in the log
                log.exception("internal error in %s %s", request.method, request.url.path)
                return _error(500, "internal server error (see the server log)")

        return guarded

    def _entry_json(self, repo: str, entry: Entry, user_metadata: bool = True) -> dict:
        namespace = self.store.get_repository(repo)["storage_namespace"].rstrip("/")
        body = {"path": entry.path, "path_type": "object", "checksum": entry.checksum,
                "physical_address": f"{namespace}/data/{entry.checksum}", "size_bytes": entry.size,
                "mtime": entry.mtime, "content_type": entry.content_type}
        if user_metadata:
            body["metadata"] = entry.metadata
        return body

    # -- server --------------------------------------------------------------------------------------

    async def healthcheck(self, request: Request) -> Response:
        return Response(status_code=204)

    def _storage(self) -> dict:
        return {"blockstore_type": "local", "blockstore_namespace_example": "local://example-bucket/",
                "blockstore_namespace_ValidityRegex": "^(local|mem|s3|gs|https?|transient)://",
                "default_namespace_prefix": "local://", "pre_sign_support": False,
                "pre_sign_support_ui": False, "import_support": False,
                "import_validity_regex": "^local://", "pre_sign_multipart_upload": False}

    async def config(self, request: Request) -> Response:
        return JSONResponse({"version_config": {"version": VERSION}, "storage_config": self._storage()})

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def storage(self, request: Request) -> Response:
        return JSONResponse(self._storage())

    async def user(self, request: Request) -> Response:
        return JSONResponse({"user": {"id": self.committer, "creation_date": 0}})

    # -- repositories -------------------------------------------------------------------------------

    async def repositories(self, request: Request) -> Response:
        if request.method == "GET":
            search = request.query_params.get("search", "")
            repos = [r for r in self.store.list_repositories() if search in r["id"]]
            return _listing(repos, lambda r: r["id"], lambda r: r, request)
        body = await request.json()
        repo = self.store.create_repository(
            body.get("name", ""), body.get("storage_namespace", ""), body.get("default_branch") or "main",
            bare=_bool(request, "bare"), committer=self.committer)
        return JSONResponse(repo, status_code=201)

    async def repository(self, request: Request) -> Response:
        repo = request.path_params["repository"]
        if request.method == "GET":
            return JSONResponse(self.store.get_repository(repo))
        self.store.delete_repository(repo)
        return Response(status_code=204)

    async def repository_metadata(self, request: Request) -> Response:
        return JSONResponse(self.store.repository_metadata(request.path_params["repository"]))

    # -- branches and tags ---------------------------------------------------------------------------

    async def branches(self, request: Request) -> Response:
        repo = request.path_params["repository"]
        if request.method == "GET":
            return _listing(self.store.list_branches(repo), lambda b: b[0],
                            lambda b: {"id": b[0], "commit_id": b[1]}, request)
        body = await request.json()
        if not body.get("name") or not body.get("source"):
            raise BadRequest("branch creation needs a name and a source ref")
        commit_id = self.store.create_branch(repo, body["name"], body["source"], bool(body.get("force")))
        return Response(commit_id, status_code=201, media_type="text/html")

    async def branch(self, request: Request) -> Response:
        repo, branch = request.path_params["repository"], request.path_params["branch"]
        if request.method == "GET":
            return JSONResponse({"id": branch, "commit_id": self.store.branch_commit(repo, branch)})
        if request.method == "PUT":
            body = await request.json()
            self.store.reset_branch(repo, branch, body.get("type", "reset"), body.get("path"))
            return Response(status_code=204)
        self.store.delete_branch(repo, branch)
        return Response(status_code=204)

    async def tags(self, request: Request) -> Response:
        repo = request.path_params["repository"]
        if request.method == "GET":
            return _listing(self.store.list_tags(repo), lambda t: t[0],
                            lambda t: {"id": t[0], "commit_id": t[1]}, request)
        body = await request.json()
        if not body.get("id") or not body.get("ref"):
            raise BadRequest("tag creation needs an id and a ref")
        commit_id = self.store.create_tag(repo, body["id"], body["ref"], bool(body.get("force")))
        return JSONResponse({"id": body["id"], "commit_id": commit_id}, status_code=201)

    async def tag(self, request: Request) -> Response:
        repo, tag = request.path_params["repository"], request.path_params["tag"]
        if request.method == "GET":
            return JSONResponse({"id": tag, "commit_id": self.store.get_tag(repo, tag)})
        self.store.delete_tag(repo, tag)
        return Response(status_code=204)

    # -- objects -------------------------------------------------------------------------------------

    def _path(self, request: Request) -> str:
        path = request.query_params.get("path")
        if not path:
            raise BadRequest("missing required query parameter: path")
        return path

    async def branch_objects(self, request: Request) -> Response:
        repo, branch = request.path_params["repository"], request.path_params["branch"]
        path = self._path(request)
        if request.method == "DELETE":
            self.store.delete_object(repo, branch, path)
            return Response(status_code=204)
        self.store.branch_commit(repo, branch)  # 404 before reading a body for nothing
        if_absent = request.headers.get("if-none-match", "").strip() == "*"
        if if_absent:
            try:
                self.store.stat(repo, branch, path)
                raise PreconditionFailed(f"object already exists: {path}")
            except NotFound:
                pass
        content_type = request.headers.get("content-type", "application/octet-stream")
        metadata = {k[len(_META_PREFIX):]: v for k, v in request.headers.items()
                    if k.lower().startswith(_META_PREFIX)}
        writer = self.store.new_upload()
        try:
            if content_type.startswith("multipart/form-data"):
                content_type = await self._read_form(request, writer)
            else:
                await _receive_into(request, writer)
            checksum = await anyio.to_thread.run_sync(writer.finish)
        except BaseException:
            writer.abort()
            raise
        entry = Entry(path, checksum, writer.size, int(time.time()), content_type, metadata)
        self.store.stage(repo, branch, entry, if_absent=if_absent)
        return JSONResponse(self._entry_json(repo, entry), status_code=201)

    async def _read_form(self, request: Request, writer: Any) -> str:
        """The generated SDK's `upload_object` sends multipart/form-data with a `content` part."""
        async with request.form(max_part_size=1 << 40) as form:
            upload = form.get("content")
            if upload is None or isinstance(upload, str):
                raise BadRequest("multipart upload needs a file part named 'content'")
            while chunk := await upload.read(_CHUNK):
                writer.write(chunk)
            return upload.content_type or "application/octet-stream"

    async def delete_objects(self, request: Request) -> Response:
        repo, branch = request.path_params["repository"], request.path_params["branch"]
        body = await request.json()
        errors = []
        for path in body.get("paths") or []:
            try:
                self.store.delete_object(repo, branch, path)
            except NotFound:
                continue  # lakeFS treats deleting a missing object in a batch as done
            except StoreError as exc:
                errors.append({"status_code": exc.status, "message": exc.message, "path": path})
        return JSONResponse({"errors": errors})

    async def stat_object(self, request: Request) -> Response:
        repo, ref = request.path_params["repository"], request.path_params["ref"]
        entry = self.store.stat(repo, ref, self._path(request))
        if _bool(request, "presign"):
            raise BadRequest("presigned URLs are not supported by this server (pre_sign_support: false)")
        return JSONResponse(self._entry_json(repo, entry, _bool(request, "user_metadata", True)))

    async def get_object(self, request: Request) -> Response:
        repo, ref = request.path_params["repository"], request.path_params["ref"]
        entry = self.store.stat(repo, ref, self._path(request))
        etag = f'"{entry.checksum}"'
        headers = {"ETag": etag, "Last-Modified": email.utils.formatdate(entry.mtime, usegmt=True),
                   "Accept-Ranges": "bytes"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        start, end, status = 0, entry.size - 1, 200
        if "range" in request.headers:
            try:
                start, end = self._range(request.headers["range"], entry.size)
            except RangeNotSatisfiable as exc:  # the SDK reads the size from `bytes */SIZE`
                return JSONResponse({"message": exc.message}, status_code=416,
                                    headers={"Content-Range": f"bytes */{entry.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(end - start + 1, 0)
        headers["Content-Length"] = str(length)
        # lakeFS answers with the object's own content type, verbatim (no charset added)
        headers["Content-Type"] = entry.content_type or "application/octet-stream"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        blob = self.store.blob_path(entry.checksum)
        return StreamingResponse(_read_file(blob, start, length), status_code=status, headers=headers)

    @staticmethod
    def _range(header: str, size: int) -> tuple[int, int]:
        match = _RANGE_RE.match(header.strip())
        if not match or match.groups() == ("", ""):
            raise RangeNotSatisfiable(f"invalid Range header {header!r}: expected bytes=START-END")
        first, last = match.groups()
        if first == "":  # suffix range: the last N bytes
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            raise RangeNotSatisfiable(f"Range {header!r} is outside the object's {size} bytes")
        return start, end

    async def list_objects(self, request: Request) -> Response:
        repo, ref = request.path_params["repository"], request.path_params["ref"]
        prefix = request.query_params.get("prefix", "")
        delimiter = request.query_params.get("delimiter", "")
        user_metadata = _bool(request, "user_metadata", True)
        entries = self.store.entries(repo, ref)
        rows: dict[str, dict] = {}
        for path in sorted(p for p in entries if p.startswith(prefix)):
            cut = path.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = path[: cut + len(delimiter)]
                rows.setdefault(common, {"path": common, "path_type": "common_prefix", "checksum": "",
                                         "physical_address": "", "mtime": 0})
            else:
                rows[path] = self._entry_json(repo, entries[path], user_metadata)
        page, pagination = _paginate(list(rows.values()), lambda r: r["path"], request)
        return JSONResponse({"pagination": pagination, "results": page})

    # -- commits -------------------------------------------------------------------------------------

    async def commit(self, request: Request) -> Response:
        repo, branch = request.path_params["repository"], request.path_params["branch"]
        body = await request.json()
        if "message" not in body:
            raise BadRequest("commit needs a message")
        message, metadata = str(body["message"]), {str(k): str(v) for k, v in
                                                     (body.get("metadata") or {}).items()}
        allow_empty = bool(body.get("allow_empty"))
        head, entries = self.store.prepare_commit(repo, branch, allow_empty)
        hooks = _actions.find_hooks(self.store, entries, "pre-commit", branch)
        if hooks:
            await _actions.run_hooks(hooks, lambda h: _actions.payload(
                "pre-commit", h, repo, branch, source_ref=branch, message=message,
                committer=self.committer, metadata=metadata), pre=True)
        commit = self.store.commit(repo, branch, message, metadata, self.committer, body.get("date"),
                                   allow_empty, expected_head=head if hooks else None)
        await self._post_hooks("post-commit", repo, branch, commit, source_ref=branch)
        return JSONResponse(_commit_json(commit), status_code=201)

    async def _post_hooks(self, event: str, repo: str, branch: str, commit: Commit, **fields: str) -> None:
        entries = self.store.tree(commit.meta_range_id)
        hooks = _actions.find_hooks(self.store, entries, event, branch)
        if hooks:
            await _actions.run_hooks(hooks, lambda h: _actions.payload(
                event, h, repo, branch, commit_id=commit.id, message=commit.message,
                committer=commit.committer, metadata=commit.metadata, **fields), pre=False)

    async def get_commit(self, request: Request) -> Response:
        repo = request.path_params["repository"]
        commit_id = self.store.resolve(repo, request.path_params["commit_id"]).commit_id
        return JSONResponse(_commit_json(self.store.get_commit(repo, commit_id)))

    async def log_commits(self, request: Request) -> Response:
        repo, ref = request.path_params["repository"], request.path_params["ref"]
        commits: Iterable[Commit] = self.store.log(repo, ref, _bool(request, "first_parent"))
        stop_at = request.query_params.get("stop_at")
        limit = _bool(request, "limit")
        after = request.query_params.get("after", "")
        try:
            amount = min(int(request.query_params.get("amount", DEFAULT_AMOUNT)) or DEFAULT_AMOUNT,
                         MAX_AMOUNT)
        except ValueError as exc:
            raise BadRequest("invalid amount: expected an integer") from exc
        objects = request.query_params.getlist("objects")
        prefixes = request.query_params.getlist("prefixes")
        page: list[Commit] = []
        skipping = bool(after)
        has_more = False
        for commit in commits:
            if skipping:
                skipping = commit.id != after
                continue
            if (objects or prefixes) and not self._touches(repo, commit, objects, prefixes):
                continue
            if len(page) == amount:
                has_more = not limit
                break
            page.append(commit)
            if stop_at and commit.id.startswith(stop_at):
                break
        pagination = {"has_more": has_more, "next_offset": page[-1].id if has_more else "",
                      "results": len(page), "max_per_page": MAX_AMOUNT}
        return JSONResponse({"pagination": pagination, "results": [_commit_json(c) for c in page]})

    def _touches(self, repo: str, commit: Commit, objects: list[str], prefixes: list[str]) -> bool:
        parent = self.store.tree(self.store.get_commit(repo, commit.parents[0]).meta_range_id) \
            if commit.parents else {}
        mine = self.store.tree(commit.meta_range_id)
        changed = {p for p in set(parent) | set(mine)
                   if (parent.get(p) and parent[p].identity()) != (mine.get(p) and mine[p].identity())}
        return any(o in changed for o in objects) or any(c.startswith(p) for c in changed for p in prefixes)

    # -- diff and merge ------------------------------------------------------------------------------

    def _diff_json(self, changes: list[tuple[str, str, Entry | None]], request: Request) -> Response:
        prefix = request.query_params.get("prefix", "")
        delimiter = request.query_params.get("delimiter", "")
        rows: dict[str, dict] = {}
        for kind, path, entry in sorted(changes, key=lambda c: c[1]):
            if not path.startswith(prefix):
                continue
            cut = path.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = path[: cut + len(delimiter)]
                rows.setdefault(common, {"type": "prefix_changed", "path": common,
                                         "path_type": "common_prefix"})
                continue
            row: dict = {"type": kind, "path": path, "path_type": "object"}
            if entry is not None:
                row["size_bytes"] = entry.size
            rows[path] = row
        page, pagination = _paginate(list(rows.values()), lambda r: r["path"], request)
        return JSONResponse({"pagination": pagination, "results": page})

    @staticmethod
    def _changes(left: dict[str, Entry], right: dict[str, Entry]) -> list[tuple[str, str, Entry | None]]:
        changes: list[tuple[str, str, Entry | None]] = []
        for path in set(left) | set(right):
            a, b = left.get(path), right.get(path)
            if a is None and b is not None:
                changes.append(("added", path, b))
            elif b is None and a is not None:
                changes.append(("removed", path, a))
            elif a is not None and b is not None and a.identity() != b.identity():
                changes.append(("changed", path, b))
        return changes

    async def diff_refs(self, request: Request) -> Response:
        repo = request.path_params["repository"]
        left_ref, right_ref = request.path_params["left"], request.path_params["right"]
        kind = request.query_params.get("type", "three_dot")
        if kind not in ("two_dot", "three_dot"):
            raise BadRequest(f"invalid diff type {kind!r}: expected two_dot or three_dot")
        left_id = self.store.resolve(repo, left_ref).commit_id
        right_id = self.store.resolve(repo, right_ref).commit_id
        if kind == "three_dot":
            left_id = self.store.merge_base(repo, left_id, right_id) or left_id
        left = self.store.tree(self.store.get_commit(repo, left_id).meta_range_id)
        right = self.store.tree(self.store.get_commit(repo, right_id).meta_range_id)
        return self._diff_json(self._changes(left, right), request)

    async def diff_branch(self, request: Request) -> Response:
        repo, branch = request.path_params["repository"], request.path_params["branch"]
        committed = self.store.entries(repo, f"{branch}@")
        working = self.store.entries(repo, branch)
        return self._diff_json(self._changes(committed, working), request)

    async def merge(self, request: Request) -> Response:
        repo = request.path_params["repository"]
        source_ref, destination = request.path_params["source"], request.path_params["destination"]
        if request.method == "GET":  # findMergeBase
            source_id = self.store.resolve(repo, source_ref).commit_id
            dest_id = self.store.resolve(repo, destination).commit_id
            base = self.store.merge_base(repo, source_id, dest_id)
            if base is None:
                raise NotFound("no merge base found")
            return JSONResponse({"source_commit_id": source_id, "destination_commit_id": dest_id,
                                 "base_commit_id": base})
        raw = await request.body()
        body = json.loads(raw) if raw.strip() else {}
        message = str(body.get("message") or "")
        metadata = {str(k): str(v) for k, v in (body.get("metadata") or {}).items()}
        strategy = body.get("strategy")
        allow_empty = bool(body.get("allow_empty") or body.get("force"))
        squash = bool(body.get("squash_merge"))
        try:
            source_id, _, _ = self.store.prepare_merge(repo, source_ref, destination, strategy,
                                                                    allow_empty)
        except StoreError as exc:
            if exc.status == 409:  # the spec's (deprecated) 409 body is a MergeResult
                return JSONResponse({"message": exc.message, "reference": ""}, status_code=409)
            raise
        source_entries = self.store.tree(self.store.get_commit(repo, source_id).meta_range_id)
        hooks = _actions.find_hooks(self.store, source_entries, "pre-merge", destination)
        if hooks:
            await _actions.run_hooks(hooks, lambda h: _actions.payload(
                "pre-merge", h, repo, destination, source_ref=source_id, message=message,
                committer=self.committer, metadata=metadata, merge_source=source_ref), pre=True)
        # As lakeFS does, the merge itself runs against the destination as it is now: if it moved
        # while the hooks ran, the three-way merge takes that into account (or reports a conflict).
        commit = self.store.merge(repo, source_id, destination, message, metadata, self.committer,
                                  strategy, allow_empty, squash, source_name=source_ref)
        await self._post_hooks("post-merge", repo, destination, commit, source_ref=source_id,
                               merge_source=source_ref)
        return JSONResponse({"reference": commit.id})


async def _receive_into(request: Request, writer: Any) -> None:
    """Stream the body to disk: gather the many small network chunks (the SDK sends 16 KiB ones)
    into ~1 MiB blocks, and hash/write each block on a worker thread, so receiving the next bytes
    overlaps with disk and hashing work. Reads ASGI messages directly: Starlette's per-chunk
    generator costs more than the copy it would save."""
    receive = request.receive
    parts: list[bytes] = []
    size = 0
    pending = None
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body = message.get("body", b"")
        if body:
            parts.append(body)
            size += len(body)
        more = message.get("more_body", False)
        if size >= _CHUNK or (not more and parts):
            if pending is not None:
                await pending
            pending = _in_thread(writer.write_many, parts)
            parts, size = [], 0
        if not more:
            break
    if pending is not None:
        await pending


def _in_thread(fn: Callable, *args: Any):
    """Start fn(*args) on a worker thread now; await the returned future for its result."""
    import asyncio

    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _read_file(path: Path, start: int, length: int):
    with open(path, "rb") as fh:
        fh.seek(start)
        remaining = length
        while remaining > 0:
            chunk = fh.read(min(_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def create_app(data_dir: Path, access_key_id: str, secret_access_key: str) -> Starlette:
    """Build the ASGI app of the embedded lakeFS-compatible server."""
    return LakeFSApp(data_dir, access_key_id, secret_access_key).app
