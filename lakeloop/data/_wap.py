"""Write-audit-publish on lakeFS: stage a batch on its own branch, audit it, merge it atomically.

Nothing reaches the published branch but through one merge; a failed batch is kept, with its
report, on a `quarantine-<batch>` branch (lakeFS branch names cannot contain '/').
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lakefs
import pandas as pd
import pyarrow.parquet as pq

from lakeloop.data._lakefs import lakefs_errors, upload_stream
from lakeloop.data._validate import ValidationReport
from lakeloop.errors import LakeFSError


def upload_frame(client: lakefs.Client, repository: str, branch: str, path: str, frame: pd.DataFrame) -> str:
    """Write the frame as zstd parquet to a temporary file and stream it to lakeFS; returns its sha256.

    Going through a file keeps the parquet bytes out of memory (the frame is the big thing there).
    """
    with tempfile.TemporaryFile() as fh:
        frame.to_parquet(fh, index=False, compression="zstd")
        fh.seek(0)
        _, sha = upload_stream(client, repository, branch, path, fh, PARQUET_TYPE, {"rows": str(len(frame))})
    return sha


def report_paths(data_file: str) -> tuple[str, str]:
    """Where a batch's validation report lives: beside its data (markdown and JSON)."""
    folder = data_file.rsplit("/", 1)[0]
    return f"{folder}/validation-report.md", f"{folder}/validation-report.json"


PARQUET_TYPE = "application/vnd.apache.parquet"


@dataclass(frozen=True)
class StagedBatch:
    repository: str
    branch: str
    commit_id: str
    path: str
    rows: int
    content_sha256: str


def batch_id_of(path: str) -> str:
    """A batch's id: the sha256 of its bytes (first 16 hex), so a re-sent file is recognised."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def ensure_repository(client: lakefs.Client, repository: str, namespace: str, branch: str) -> None:
    with lakefs_errors(client.config.host, f"opening repository {repository}"):
        lakefs.Repository(repository, client=client).create(storage_namespace=namespace,
                                                            default_branch=branch, exist_ok=True)


def data_path(prefix: str, batch_id: str) -> str:
    return f"{prefix}/batch={batch_id}/part-0.parquet"


def already_published(client: lakefs.Client, repository: str, base: str, path: str) -> str | None:
    """The commit id of `base` if it already holds this batch, else None."""
    ref = lakefs.Repository(repository, client=client).branch(base)
    with lakefs_errors(client.config.host, f"checking {repository}/{base}"):
        if ref.object(path).exists():
            return ref.get_commit().id
    return None


def stage_batch(client: lakefs.Client, repository: str, base: str, batch_id: str, frame: pd.DataFrame,
                path: str, metadata: dict[str, str], report: ValidationReport) -> StagedBatch:
    """Create `ingest-<batch>` from base, write the data and its report, commit with metadata."""
    repo = lakefs.Repository(repository, client=client)
    branch_name = f"ingest-{batch_id}"
    with lakefs_errors(client.config.host, f"staging batch {batch_id} on {repository}/{branch_name}"):
        _delete_branch(repo, branch_name)  # a leftover from an interrupted run of this very batch
        branch = repo.branch(branch_name).create(base)
        content_sha = upload_frame(client, repository, branch_name, path, frame)
        branch.object(report_paths(path)[0]).upload(report.to_markdown(), content_type="text/markdown")
        commit = branch.commit(f"ingest batch {batch_id}: {len(frame)} rows",
                               metadata={**metadata, "rows": str(len(frame)), "content_sha256": content_sha})
        commit_id = commit.get_commit().id
    return StagedBatch(repository, branch_name, commit_id, path, len(frame), content_sha)


def read_parquet(client: lakefs.Client, repository: str, ref: str, path: str) -> pd.DataFrame:
    obj = lakefs.Repository(repository, client=client).ref(ref).object(path)
    with lakefs_errors(client.config.host, f"reading {repository}/{ref}/{path}"), obj.reader("rb") as fh:
        return pq.read_table(io.BytesIO(fh.read())).to_pandas()


def publish(client: lakefs.Client, staged: StagedBatch, base: str, metadata: dict[str, str]) -> str:
    """Merge the staged batch into base (atomic); delete the ingest branch; return the merge commit."""
    repo = lakefs.Repository(staged.repository, client=client)
    with lakefs_errors(client.config.host, f"merging {staged.branch} into {staged.repository}/{base}"):
        merged = repo.branch(staged.branch).merge_into(
            repo.branch(base), message=f"publish {staged.branch}", metadata=metadata)
        repo.branch(staged.branch).delete()
    return merged


def quarantine(client: lakefs.Client, repository: str, base: str, batch_id: str, frame: pd.DataFrame | None,
               path: str, report: ValidationReport, metadata: dict[str, str]) -> str:
    """Keep a failed batch (PII already pseudonymised/redacted) and its report on quarantine-<batch>."""
    repo = lakefs.Repository(repository, client=client)
    name = f"quarantine-{batch_id}"
    with lakefs_errors(client.config.host, f"quarantining batch {batch_id} on {repository}/{name}"):
        _delete_branch(repo, name)
        branch = repo.branch(name).create(base)
        if frame is not None:
            upload_frame(client, repository, name, path, frame)
        markdown, as_json = report_paths(path)
        branch.object(markdown).upload(report.to_markdown(), content_type="text/markdown")
        branch.object(as_json).upload(report.to_json(), content_type="application/json")
        branch.commit(f"quarantine batch {batch_id}: {report.summary()[:200]}",
                      metadata={**metadata, "validation": "failed"})
        _delete_branch(repo, f"ingest-{batch_id}")
    return name


def _delete_branch(repo: lakefs.Repository, name: str) -> None:
    with contextlib.suppress(lakefs.exceptions.NotFoundException):
        repo.branch(name).delete()


def resolve_commit(client: lakefs.Client, repository: str, ref: str) -> str:
    with lakefs_errors(client.config.host, f"resolving {repository}@{ref}"):
        return lakefs.Repository(repository, client=client).ref(ref).get_commit().id


def read_added_since(client: lakefs.Client, repository: str, since: str, ref: str, prefix: str) -> pd.DataFrame | None:
    """The parquet parts under prefix that `ref` has and commit `since` had not (None when there are none)."""
    with lakefs_errors(client.config.host, f"diffing {repository}@{since[:12]}..{ref}/{prefix}"):
        added = sorted(c.path for c in lakefs.Repository(repository, client=client).ref(since).diff(
            other_ref=ref, prefix=f"{prefix}/") if c.type == "added" and c.path.endswith(".parquet"))
    if not added:
        return None
    return pd.concat([read_parquet(client, repository, ref, p) for p in added], ignore_index=True)


def read_dataset(client: lakefs.Client, repository: str, commit_id: str, prefix: str,
                 cache: Path | None = None) -> pd.DataFrame:
    """Every parquet part under prefix at a commit, in path order, as one frame.

    With `cache`, each part's bytes are kept under `cache/<repository>/<commit>/<path>` and read from
    there next time: an object at a commit never changes, so the copy can never be stale.
    """
    ref = lakefs.Repository(repository, client=client).ref(commit_id)
    with lakefs_errors(client.config.host, f"listing {repository}@{commit_id[:12]}/{prefix}"):
        paths = [o.path for o in ref.objects(prefix=f"{prefix}/") if o.path.endswith(".parquet")]
    if not paths:
        raise LakeFSError(f"no parquet data under {prefix}/ in {repository}@{commit_id[:12]}: ingest a batch "
                          "first (`lakeloop data ingest FILE`)")
    if cache is None:
        frames = [read_parquet(client, repository, commit_id, p) for p in paths]
    else:
        frames = [pq.read_table(_cached_part(client, repository, commit_id, p, cache)).to_pandas() for p in paths]
    return pd.concat(frames, ignore_index=True)


def _cached_part(client: lakefs.Client, repository: str, commit_id: str, path: str, cache: Path) -> Path:
    local = cache / repository / commit_id / path
    if not local.is_file():
        obj = lakefs.Repository(repository, client=client).ref(commit_id).object(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f"{local.name}.{os.getpid()}.partial")
        with lakefs_errors(client.config.host, f"reading {repository}/{commit_id[:12]}/{path}"), \
                obj.reader("rb") as source, open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        os.replace(partial, local)  # whole or absent: a reader never sees half a part
    return local
