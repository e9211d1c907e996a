"""Prefect event names and ids that more than one sender uses.

A merge into a watched branch is announced twice: by the ingest-data flow that made it and by the
lakeFS post-merge webhook. Both derive the event id from the same key, and Prefect's trigger
service ignores an event id it has already seen, so the `retrain` trigger fires once per merge.
"""

from __future__ import annotations

import uuid

NAMESPACE = uuid.UUID("7d1d6f4e-2b0e-4f6e-9a55-6c1b7f0c8a21")
DATA_PUBLISHED = "lakeloop.data.published"


def event_id(key: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, key)


def lakefs_key(repository: str, commit_id: str, lakefs_event: str = "post-merge") -> str:
    """The idempotency key of a lakeFS event on a commit (the webhook receiver's too)."""
    return f"lakefs:{repository}:{commit_id}:{lakefs_event}"
