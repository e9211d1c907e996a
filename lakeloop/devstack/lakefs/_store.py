"""Storage of the embedded lakeFS-compatible server: SQLite metadata, content-addressed blobs.

The model follows lakeFS (graveler): a commit points at an immutable tree (lakeFS calls it a
meta-range), a branch points at a commit and owns a staging area of uncommitted writes and
tombstones, and tags are named commits. Every state change runs in one SQLite transaction, and a
branch moves only by compare-and-set against the head it was computed from, so a crash mid-commit
or mid-merge leaves the previous state and two writers never lose each other's work.

Blobs are written to `tmp/` while they stream in, hashed on the way, and renamed into
`blobs/<sha256>` only when complete; a blob is referenced by metadata only after that rename. A
crash mid-upload therefore leaves at most an unreferenced temporary file, removed at the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
BRANCH_ID_RE = re.compile(r"^\w[-\w]*$")
TAG_ID_RE = re.compile(r"^\w[-\w./]*$")
# a blockstore URI: scheme, then path segments of URL-safe characters; no `.` or `..` segment (a namespace
# such as local://../../etc must not name a place outside the blockstore), no empty segment
NAMESPACE_RE = re.compile(r"^(s3|gs|https?|mem|local|transient)://(?!\.{1,2}(/|$))[A-Za-z0-9_~:@=+-][\w.~:@=+-]*"
                          r"(/(?!\.{1,2}(/|$))[\w.~:@=+-]+)*/?\Z", re.ASCII)
REF_MODIFIER_RE = re.compile(r"([~^])(\d*)")
COMMIT_ID_RE = re.compile(r"^[0-9a-f]{6,64}$")
ACTIONS_PREFIX = "_lakefs_actions/"


class StoreError(Exception):
    """An error that maps to one HTTP status of the lakeFS API."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(StoreError):
    status = 400


class Forbidden(StoreError):
    status = 403


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class PreconditionFailed(StoreError):
    status = 412


class RangeNotSatisfiable(StoreError):
    status = 416


@dataclass(frozen=True)
class Entry:
    """One object as a tree or a staging area holds it."""

    path: str
    checksum: str
    size: int
    mtime: int
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)

    def identity(self) -> tuple[str, str]:
        """What makes two entries "the same object" for diff and merge."""
        return (self.checksum, json.dumps(self.metadata, sort_keys=True))


@dataclass(frozen=True)
class Commit:
    id: str
    parents: list[str]
    committer: str
    message: str
    creation_date: int
    meta_range_id: str
    metadata: dict[str, str]
    generation: int


@dataclass(frozen=True)
class Resolved:
    """A ref resolved: the commit, and the branch when the ref names a branch's working state."""

    commit_id: str
    branch: str | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (
    id TEXT PRIMARY KEY, storage_namespace TEXT NOT NULL, default_branch TEXT NOT NULL,
    creation_date INTEGER NOT NULL, metadata TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS commits (
    repo TEXT NOT NULL, id TEXT NOT NULL, parents TEXT NOT NULL, committer TEXT NOT NULL,
    message TEXT NOT NULL, creation_date INTEGER NOT NULL, meta_range_id TEXT NOT NULL,
    metadata TEXT NOT NULL, generation INTEGER NOT NULL, PRIMARY KEY (repo, id));
CREATE TABLE IF NOT EXISTS tree_entries (
    tree_id TEXT NOT NULL, path TEXT NOT NULL, checksum TEXT NOT NULL, size INTEGER NOT NULL,
    mtime INTEGER NOT NULL, content_type TEXT NOT NULL, metadata TEXT NOT NULL,
    PRIMARY KEY (tree_id, path));
CREATE TABLE IF NOT EXISTS trees (tree_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS branches (
    repo TEXT NOT NULL, name TEXT NOT NULL, commit_id TEXT NOT NULL, PRIMARY KEY (repo, name));
CREATE TABLE IF NOT EXISTS staging (
    repo TEXT NOT NULL, branch TEXT NOT NULL, path TEXT NOT NULL, checksum TEXT,
    size INTEGER, mtime INTEGER, content_type TEXT, metadata TEXT,
    PRIMARY KEY (repo, branch, path));
CREATE TABLE IF NOT EXISTS tags (
    repo TEXT NOT NULL, id TEXT NOT NULL, commit_id TEXT NOT NULL, PRIMARY KEY (repo, id));
"""


def _entry_from_row(row: sqlite3.Row | tuple) -> Entry:
    path, checksum, size, mtime, content_type, metadata = row
    return Entry(path, checksum, size, mtime, content_type, json.loads(metadata))


class Store:
    """All state of the embedded server under one directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.blob_dir = self.data_dir / "blobs"
        self.tmp_dir = self.data_dir / "tmp"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():  # uploads a crash interrupted
            leftover.unlink(missing_ok=True)
        self._db = sqlite3.connect(self.data_dir / "metadata.db", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        self._db.close()

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, *args: object) -> tuple | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, *args: object) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- blobs --------------------------------------------------------------------------------

    def blob_path(self, checksum: str) -> Path:
        return self.blob_dir / checksum[:2] / checksum[2:]

    def new_upload(self) -> BlobWriter:
        return BlobWriter(self)

    # -- repositories -------------------------------------------------------------------------

    def create_repository(self, name: str, storage_namespace: str, default_branch: str,
                          bare: bool = False, committer: str = "admin") -> dict:
        if not REPO_ID_RE.match(name or ""):
            raise BadRequest(f"invalid repository name {name!r}: expected ^[a-z0-9][a-z0-9-]{{2,62}}$")
        if not NAMESPACE_RE.match(storage_namespace or ""):
            raise BadRequest(f"invalid storage namespace {storage_namespace!r}: expected a URI such as "
                             "local://bucket/path (URL-safe characters; no empty, '.' or '..' path segments)")
        if not BRANCH_ID_RE.match(default_branch or ""):
            raise BadRequest(f"invalid default branch name {default_branch!r}")
        now = int(time.time())
        with self._tx() as db:
            if db.execute("SELECT 1 FROM repositories WHERE id=?", (name,)).fetchone():
                raise Conflict(f"repository {name!r} already exists")
            if db.execute("SELECT 1 FROM repositories WHERE storage_namespace=?",
                          (storage_namespace,)).fetchone():
                raise BadRequest(f"storage namespace {storage_namespace!r} already in use by another "
                                 "repository")
            db.execute("INSERT INTO repositories VALUES (?,?,?,?, '{}')",
                       (name, storage_namespace, default_branch, now))
            if not bare:
                commit = self._write_commit(db, name, [], committer, "Repository created", "", {}, now)
                db.execute("INSERT INTO branches VALUES (?,?,?)", (name, default_branch, commit.id))
        return self.get_repository(name)

    def get_repository(self, name: str) -> dict:
        row = self._one("SELECT id, storage_namespace, default_branch, creation_date FROM repositories "
                        "WHERE id=?", name)
        if row is None:
            raise NotFound(f"repository not found: {name}")
        return {"id": row[0], "storage_namespace": row[1], "default_branch": row[2],
                "creation_date": row[3], "read_only": False}

    def list_repositories(self) -> list[dict]:
        ids = [r[0] for r in self._all("SELECT id FROM repositories ORDER BY id")]
        return [self.get_repository(i) for i in ids]

    def delete_repository(self, name: str) -> None:
        self.get_repository(name)
        with self._tx() as db:
            for table in ("commits", "branches", "staging", "tags"):
                db.execute(f"DELETE FROM {table} WHERE repo=?", (name,))  # noqa: S608 - fixed names
            db.execute("DELETE FROM repositories WHERE id=?", (name,))

    def repository_metadata(self, name: str) -> dict[str, str]:
        self.get_repository(name)
        return json.loads(self._one("SELECT metadata FROM repositories WHERE id=?", name)[0])

    # -- refs ---------------------------------------------------------------------------------

    def get_commit(self, repo: str, commit_id: str) -> Commit:
        row = self._one("SELECT id, parents, committer, message, creation_date, meta_range_id, metadata, "
                        "generation FROM commits WHERE repo=? AND id=?", repo, commit_id)
        if row is None:
            raise NotFound(f"commit not found: {commit_id}")
        return Commit(row[0], json.loads(row[1]), row[2], row[3], row[4], row[5], json.loads(row[6]),
                      row[7])

    def resolve(self, repo: str, ref: str) -> Resolved:
        """Resolve a branch, tag or (abbreviated) commit id, with lakeFS's `@`, `~N` and `^N`."""
        self.get_repository(repo)
        base = REF_MODIFIER_RE.split(ref, maxsplit=1)[0] if REF_MODIFIER_RE.search(ref) else ref
        modifiers = ref[len(base):]
        committed_only = base.endswith("@")
        name = base.rstrip("@")
        resolved = self._resolve_name(repo, name)
        if resolved is None:
            raise NotFound(f"reference not found: {ref}")
        commit_id, branch = resolved
        if committed_only:
            branch = None
        for kind, count in REF_MODIFIER_RE.findall(modifiers):
            branch = None
            steps = int(count) if count else 1
            for _ in range(steps if kind == "~" else 1):
                parents = self.get_commit(repo, commit_id).parents
                index = 0 if kind == "~" else steps - 1
                if index >= len(parents):
                    raise NotFound(f"reference not found: {ref} (no such ancestor)")
                commit_id = parents[index]
        return Resolved(commit_id, branch)

    def _resolve_name(self, repo: str, name: str) -> tuple[str, str | None] | None:
        row = self._one("SELECT commit_id FROM branches WHERE repo=? AND name=?", repo, name)
        if row:
            return row[0], name
        row = self._one("SELECT commit_id FROM tags WHERE repo=? AND id=?", repo, name)
        if row:
            return row[0], None
        if COMMIT_ID_RE.match(name):
            rows = self._all("SELECT id FROM commits WHERE repo=? AND id LIKE ?", repo, name + "%")
            if len(rows) == 1:
                return rows[0][0], None
        return None

    def branch_commit(self, repo: str, branch: str) -> str:
        self.get_repository(repo)
        row = self._one("SELECT commit_id FROM branches WHERE repo=? AND name=?", repo, branch)
        if row is None:
            raise NotFound(f"branch not found: {branch}")
        return row[0]

    def list_branches(self, repo: str) -> list[tuple[str, str]]:
        self.get_repository(repo)
        return self._all("SELECT name, commit_id FROM branches WHERE repo=? ORDER BY name", repo)

    def create_branch(self, repo: str, name: str, source: str, force: bool = False) -> str:
        if not BRANCH_ID_RE.match(name or ""):
            raise BadRequest(f"invalid branch name {name!r}: expected letters, digits, '_' and '-' "
                             "(^\\w[-\\w]*$)")
        commit_id = self.resolve(repo, source).commit_id
        with self._tx() as db:
            if db.execute("SELECT 1 FROM branches WHERE repo=? AND name=?", (repo, name)).fetchone():
                if not force:
                    raise Conflict(f"branch {name!r} already exists")
                db.execute("DELETE FROM staging WHERE repo=? AND branch=?", (repo, name))
            db.execute("INSERT OR REPLACE INTO branches VALUES (?,?,?)", (repo, name, commit_id))
        return commit_id

    def delete_branch(self, repo: str, name: str) -> None:
        if self.get_repository(repo)["default_branch"] == name:
            raise Forbidden(f"cannot delete the default branch {name!r}")
        self.branch_commit(repo, name)
        with self._tx() as db:
            db.execute("DELETE FROM branches WHERE repo=? AND name=?", (repo, name))
            db.execute("DELETE FROM staging WHERE repo=? AND branch=?", (repo, name))

    def reset_branch(self, repo: str, branch: str, kind: str, path: str | None) -> None:
        self.branch_commit(repo, branch)
        with self._tx() as db:
            if kind == "reset":
                db.execute("DELETE FROM staging WHERE repo=? AND branch=?", (repo, branch))
            elif kind == "object":
                db.execute("DELETE FROM staging WHERE repo=? AND branch=? AND path=?", (repo, branch, path))
            elif kind == "common_prefix":
                db.execute("DELETE FROM staging WHERE repo=? AND branch=? AND substr(path, 1, ?) = ?",
                           (repo, branch, len(path or ""), path or ""))
            else:
                raise BadRequest(f"invalid reset type {kind!r}: expected reset, object or common_prefix")

    def list_tags(self, repo: str) -> list[tuple[str, str]]:
        self.get_repository(repo)
        return self._all("SELECT id, commit_id FROM tags WHERE repo=? ORDER BY id", repo)

    def get_tag(self, repo: str, tag: str) -> str:
        self.get_repository(repo)
        row = self._one("SELECT commit_id FROM tags WHERE repo=? AND id=?", repo, tag)
        if row is None:
            raise NotFound(f"tag not found: {tag}")
        return row[0]

    def create_tag(self, repo: str, tag: str, ref: str, force: bool = False) -> str:
        if not TAG_ID_RE.match(tag or ""):
            raise BadRequest(f"invalid tag id {tag!r}")
        commit_id = self.resolve(repo, ref).commit_id
        with self._tx() as db:
            exists = db.execute("SELECT 1 FROM tags WHERE repo=? AND id=?", (repo, tag)).fetchone()
            if exists and not force:
                raise Conflict(f"tag {tag!r} already exists")
            db.execute("INSERT OR REPLACE INTO tags VALUES (?,?,?)", (repo, tag, commit_id))
        return commit_id

    def delete_tag(self, repo: str, tag: str) -> None:
        self.get_tag(repo, tag)
        with self._tx() as db:
            db.execute("DELETE FROM tags WHERE repo=? AND id=?", (repo, tag))

    # -- objects --------------------------------------------------------------------------------

    def tree(self, tree_id: str) -> dict[str, Entry]:
        rows = self._all("SELECT path, checksum, size, mtime, content_type, metadata FROM tree_entries "
                         "WHERE tree_id=?", tree_id)
        return {row[0]: _entry_from_row(row) for row in rows}

    def _staged(self, repo: str, branch: str) -> dict[str, Entry | None]:
        rows = self._all("SELECT path, checksum, size, mtime, content_type, metadata FROM staging "
                         "WHERE repo=? AND branch=?", repo, branch)
        return {row[0]: (_entry_from_row(row) if row[1] is not None else None) for row in rows}

    def entries(self, repo: str, ref: str) -> dict[str, Entry]:
        """Every object visible at a ref: a branch shows its uncommitted changes too."""
        resolved = self.resolve(repo, ref)
        entries = self.tree(self.get_commit(repo, resolved.commit_id).meta_range_id)
        if resolved.branch is not None:
            for path, staged in self._staged(repo, resolved.branch).items():
                if staged is None:
                    entries.pop(path, None)
                else:
                    entries[path] = staged
        return entries

    def stat(self, repo: str, ref: str, path: str) -> Entry:
        resolved = self.resolve(repo, ref)
        if resolved.branch is not None:
            row = self._one("SELECT path, checksum, size, mtime, content_type, metadata FROM staging "
                            "WHERE repo=? AND branch=? AND path=?", repo, resolved.branch, path)
            if row is not None:
                if row[1] is None:
                    raise NotFound(f"object not found: {path}")
                return _entry_from_row(row)
        tree_id = self.get_commit(repo, resolved.commit_id).meta_range_id
        row = self._one("SELECT path, checksum, size, mtime, content_type, metadata FROM tree_entries "
                        "WHERE tree_id=? AND path=?", tree_id, path)
        if row is None:
            raise NotFound(f"object not found: {path}")
        return _entry_from_row(row)

    def stage(self, repo: str, branch: str, entry: Entry, if_absent: bool = False) -> None:
        self.branch_commit(repo, branch)
        with self._tx():
            if if_absent:
                try:
                    self.stat(repo, branch, entry.path)
                except NotFound:
                    pass
                else:
                    raise PreconditionFailed(f"object already exists: {entry.path}")
            self._db.execute("INSERT OR REPLACE INTO staging VALUES (?,?,?,?,?,?,?,?)",
                             (repo, branch, entry.path, entry.checksum, entry.size, entry.mtime,
                              entry.content_type, json.dumps(entry.metadata)))

    def delete_object(self, repo: str, branch: str, path: str) -> None:
        with self._tx():
            self.stat(repo, branch, path)  # 404 when there is nothing to delete
            self._db.execute("INSERT OR REPLACE INTO staging VALUES (?,?,?,NULL,NULL,NULL,NULL,NULL)",
                             (repo, branch, path))

    # -- commits ---------------------------------------------------------------------------------

    def _store_tree(self, db: sqlite3.Connection, entries: dict[str, Entry]) -> str:
        if not entries:
            return ""
        digest = hashlib.sha256()
        for path in sorted(entries):
            e = entries[path]
            digest.update(json.dumps([path, e.checksum, e.size, e.content_type, e.metadata],
                                     sort_keys=True).encode())
            digest.update(b"\n")
        tree_id = digest.hexdigest()
        if db.execute("SELECT 1 FROM trees WHERE tree_id=?", (tree_id,)).fetchone() is None:
            db.executemany("INSERT OR IGNORE INTO tree_entries VALUES (?,?,?,?,?,?,?)",
                           [(tree_id, e.path, e.checksum, e.size, e.mtime, e.content_type,
                             json.dumps(e.metadata)) for e in entries.values()])
            db.execute("INSERT INTO trees VALUES (?)", (tree_id,))
        return tree_id

    def _write_commit(self, db: sqlite3.Connection, repo: str, parents: list[str], committer: str,
                      message: str, tree_id: str, metadata: dict[str, str], date: int) -> Commit:
        generation = 1 + max((self.get_commit(repo, p).generation for p in parents), default=0)
        body = json.dumps([repo, parents, committer, message, tree_id, metadata, date, generation,
                           uuid.uuid4().hex], sort_keys=True)
        commit = Commit(hashlib.sha256(body.encode()).hexdigest(), parents, committer, message, date,
                        tree_id, metadata, generation)
        db.execute("INSERT INTO commits VALUES (?,?,?,?,?,?,?,?,?)",
                   (repo, commit.id, json.dumps(parents), committer, message, date, tree_id,
                    json.dumps(metadata), generation))
        return commit

    def prepare_commit(self, repo: str, branch: str, allow_empty: bool) -> tuple[str, dict[str, Entry]]:
        """The branch head and the tree a commit would record now (for pre-commit hooks)."""
        head = self.branch_commit(repo, branch)
        staged = self._staged(repo, branch)
        if not staged and not allow_empty:
            raise BadRequest("commit: no changes")
        entries = self.tree(self.get_commit(repo, head).meta_range_id)
        for path, entry in staged.items():
            if entry is None:
                entries.pop(path, None)
            else:
                entries[path] = entry
        return head, entries

    def commit(self, repo: str, branch: str, message: str, metadata: dict[str, str], committer: str,
               date: int | None = None, allow_empty: bool = False,
               expected_head: str | None = None) -> Commit:
        """Commit the branch's staging area atomically.

        With `expected_head`, the commit is refused (PreconditionFailed) if the branch moved since
        the caller looked at it: that is how pre-commit hooks see exactly what gets committed.
        """
        with self._tx() as db:
            head, entries = self.prepare_commit(repo, branch, allow_empty)
            if expected_head is not None and head != expected_head:
                raise PreconditionFailed(f"branch {branch!r} moved during the commit; retry")
            tree_id = self._store_tree(db, entries)
            commit = self._write_commit(db, repo, [head], committer, message, tree_id, metadata,
                                        date or int(time.time()))
            db.execute("UPDATE branches SET commit_id=? WHERE repo=? AND name=?", (commit.id, repo, branch))
            db.execute("DELETE FROM staging WHERE repo=? AND branch=?", (repo, branch))
        return commit

    def log(self, repo: str, ref: str, first_parent: bool = False) -> Iterator[Commit]:
        """Commits reachable from ref, newest first (by generation, then date)."""
        start = self.resolve(repo, ref).commit_id
        seen = {start}
        frontier = [self.get_commit(repo, start)]
        while frontier:
            frontier.sort(key=lambda c: (c.generation, c.creation_date, c.id), reverse=True)
            commit = frontier.pop(0)
            yield commit
            parents = commit.parents[:1] if first_parent else commit.parents
            for parent in parents:
                if parent not in seen:
                    seen.add(parent)
                    frontier.append(self.get_commit(repo, parent))

    def merge_base(self, repo: str, left: str, right: str) -> str | None:
        ancestors_left = {c.id: c.generation for c in self.log(repo, left)}
        best: tuple[int, str] | None = None
        for commit in self.log(repo, right):
            if commit.id in ancestors_left and (best is None or commit.generation > best[0]):
                best = (commit.generation, commit.id)
        return best[1] if best else None

    # -- merge -----------------------------------------------------------------------------------

    def prepare_merge(self, repo: str, source_ref: str, destination: str, strategy: str | None,
                      allow_empty: bool) -> tuple[str, str, dict[str, Entry]]:
        """Three-way merge of source's committed state into destination's head.

        Returns (source commit, destination head, merged tree). Raises Conflict when the same path
        changed differently on both sides and no strategy resolves it.
        """
        if strategy not in (None, "", "dest-wins", "source-wins"):
            raise BadRequest(f"invalid merge strategy {strategy!r}: expected dest-wins or source-wins")
        dest_head = self.branch_commit(repo, destination)
        if self._one("SELECT 1 FROM staging WHERE repo=? AND branch=? LIMIT 1", repo, destination):
            raise BadRequest(f"destination branch {destination!r} has uncommitted changes (dirty branch)")
        source = self.resolve(repo, source_ref).commit_id
        base_id = self.merge_base(repo, source, dest_head)
        src = self.tree(self.get_commit(repo, source).meta_range_id)
        dst = self.tree(self.get_commit(repo, dest_head).meta_range_id)
        base = self.tree(self.get_commit(repo, base_id).meta_range_id) if base_id else {}
        merged: dict[str, Entry] = {}
        conflicts: list[str] = []
        for path in sorted(set(src) | set(dst) | set(base)):
            s, d, b = src.get(path), dst.get(path), base.get(path)
            ident = [x.identity() if x else None for x in (s, d, b)]
            if ident[0] == ident[1] or ident[0] == ident[2]:
                chosen = d
            elif ident[1] == ident[2]:
                chosen = s
            elif strategy == "dest-wins":
                chosen = d
            elif strategy == "source-wins":
                chosen = s
            else:
                conflicts.append(path)
                continue
            if chosen is not None:
                merged[path] = chosen
        if conflicts:
            shown = ", ".join(conflicts[:5]) + (" …" if len(conflicts) > 5 else "")
            raise Conflict(f"conflict found: {len(conflicts)} path(s) changed on both sides: {shown}")
        unchanged = {p: e.identity() for p, e in merged.items()} == {p: e.identity() for p, e in dst.items()}
        if unchanged and not allow_empty:
            raise BadRequest("no changes: nothing to merge")
        return source, dest_head, merged

    def merge(self, repo: str, source_ref: str, destination: str, message: str, metadata: dict[str, str],
              committer: str, strategy: str | None = None, allow_empty: bool = False,
              squash: bool = False, source_name: str | None = None) -> Commit:
        """Merge and move the destination in one transaction (no other write can interleave)."""
        with self._tx() as db:
            source, dest_head, merged = self.prepare_merge(repo, source_ref, destination, strategy,
                                                           allow_empty)
            tree_id = self._store_tree(db, merged)
            parents = [dest_head] if squash else [dest_head, source]
            commit = self._write_commit(db, repo, parents, committer,
                                        message or f"Merge '{source_name or source_ref}' into '{destination}'",
                                        tree_id, metadata, int(time.time()))
            db.execute("UPDATE branches SET commit_id=? WHERE repo=? AND name=?",
                       (commit.id, repo, destination))
        return commit


class BlobWriter:
    """Streams one upload into `tmp/`, hashing as it goes; `finish` moves it into place."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._path = store.tmp_dir / uuid.uuid4().hex
        self._file = open(self._path, "wb")  # noqa: SIM115 - closed in finish/abort
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def write_many(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._hash.update(chunk)
            self.size += len(chunk)
        self._file.writelines(chunks)

    def finish(self) -> str:
        """Make the blob durable and visible under its checksum; return the checksum."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        checksum = self._hash.hexdigest()
        target = self._store.blob_path(checksum)
        if target.exists():
            self._path.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._path, target)
        return checksum

    def abort(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)
