"""Prefect event names, resources and ids that more than one sender uses.

A merge into a watched branch is announced twice: by the ingest-data flow that made it and by the
lakeFS post-merge webhook. Both derive the event id from the same key, and Prefect's trigger
service ignores an event id it has already seen, so the `retrain` trigger fires once per merge.

Every event's resource carries the project (`lakeloop.project`): each project's triggers match
their own project only, so a merge into project A's data or drift of model A retrains A alone.
"""

from __future__ import annotations

import uuid

NAMESPACE = uuid.UUID("7d1d6f4e-2b0e-4f6e-9a55-6c1b7f0c8a21")
DATA_PUBLISHED = "lakeloop.data.published"
DRIFT_DETECTED = "lakeloop.drift.detected"
RETRAIN_REQUESTED = "lakeloop.retrain.requested"
PROJECT_LABEL = "lakeloop.project"


def data_resource(repository: str, branch: str, project: str) -> dict[str, str]:
    """A branch of a project's data repository."""
    return {"prefect.resource.id": f"lakefs.{repository}.{branch}", "prefect.resource.name": f"{repository}/{branch}",
            "lakefs.repository": repository, "lakefs.branch": branch, PROJECT_LABEL: project}


def model_resource(registry: str, model: str) -> dict[str, str]:
    """A registered model (the project of the same name)."""
    return {"prefect.resource.id": f"lakeloop.model.{registry}.{model}", "prefect.resource.name": model,
            "lakeloop.registry": registry, PROJECT_LABEL: model}


def project_resource(project: str) -> dict[str, str]:
    """A project, for requests about it as a whole (retrain)."""
    return {"prefect.resource.id": f"lakeloop.project.{project}", "prefect.resource.name": project,
            PROJECT_LABEL: project}


def event_id(key: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, key)


def lakefs_key(repository: str, commit_id: str, lakefs_event: str = "post-merge") -> str:
    """The idempotency key of a lakeFS event on a commit (the webhook receiver's too)."""
    return f"lakefs:{repository}:{commit_id}:{lakefs_event}"
