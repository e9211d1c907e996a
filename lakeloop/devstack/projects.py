"""`lakeloop project add | list`: a project's deployments, triggers and lakeFS action on a running stack.

A project gets every deployment of deployments.yaml under its own name (`retrain/<name>`, ...), with
its folder as the `project` parameter and triggers that match its own events only
(`lakeloop.project: <name>`), so two projects on one stack never start each other's runs. Its data
repository is created if needed and gets a lakeFS action that calls the webhook receiver with the
project's name on every merge into the published branch. The model server follows every
registered model's production alias, so the project's first deploy is served without a restart.

The Prefect server is the record of which projects a stack runs: `list_projects` reads the
deployments tagged `project:<name>`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from lakeloop.errors import DevStackError
from lakeloop.project import Project, resolve_project

TAG = "project:"
ACTION = """\
# Installed by `lakeloop project add`: every merge into {branch} (a published batch) calls the webhook
# receiver, which emits lakeloop.data.published for project {project}; its `retrain` trigger starts a run.
name: lakeloop retrain {project} on publish
on:
  post-merge:
    branches: [{branch}]
hooks:
  - id: lakeloop_webhook
    type: webhook
    properties:
      url: "{url}"
      query_params:
        project: {project}
      timeout: 10s
      headers:
        Authorization: "Bearer {{{{ ENV.LAKEFSACTION_WEBHOOK_TOKEN }}}}"
"""


def action_path(project: Project) -> str:
    return f"_lakefs_actions/lakeloop-{project.name}.yaml"


def render(template: dict, project: Project, schedules: bool) -> dict:
    """deployments.yaml for one project: names, tags, the `project` parameter and trigger filters set."""
    spec = copy.deepcopy(template)
    for deployment in spec["deployments"]:
        template_project = deployment["name"]  # deployments.yaml names its deployments after its own project
        deployment["name"] = project.name
        deployment["tags"] = [t for t in deployment.get("tags", []) if not str(t).startswith(TAG)] + [
            TAG + project.name]
        parameters = deployment.get("parameters") or {}
        if "project" in parameters:  # compress-model and register-model read the project from the training run
            parameters["project"] = project.root
        for trigger in deployment.get("triggers") or []:
            trigger["match"] = {"lakeloop.project": project.name}
            trigger["name"] = trigger["name"].replace(template_project, project.name)
        for schedule in deployment.get("schedules") or []:
            schedule["active"] = schedules
    return spec


@dataclass(frozen=True)
class ProjectEntry:
    """A project deployed on a stack, as its Prefect deployments say."""

    name: str
    folder: str
    deployments: tuple[str, ...]


def list_projects(api_url: str) -> list[ProjectEntry]:
    """The projects deployed on the Prefect server at `api_url`, by name."""
    try:
        answer = httpx.post(f"{api_url}/deployments/filter", json={"limit": 200}, timeout=30)
        answer.raise_for_status()
    except httpx.HTTPError as exc:
        raise DevStackError(f"the Prefect API at {api_url} did not answer: {exc} (is the stack up? "
                            "`lakeloop dev status`)") from exc
    flows = {}
    found: dict[str, dict] = {}
    for deployment in answer.json():
        tags = [t for t in deployment.get("tags", []) if t.startswith(TAG)]
        if not tags:
            continue
        name = tags[0][len(TAG):]
        entry = found.setdefault(name, {"folder": "", "deployments": []})
        if deployment["flow_id"] not in flows:
            flows[deployment["flow_id"]] = httpx.get(f"{api_url}/flows/{deployment['flow_id']}", timeout=30
                                                     ).json()["name"]
        entry["deployments"].append(f"{flows[deployment['flow_id']]}/{deployment['name']}")
        entry["folder"] = entry["folder"] or str(deployment.get("parameters", {}).get("project", ""))
    return [ProjectEntry(n, e["folder"], tuple(sorted(e["deployments"]))) for n, e in sorted(found.items())]


def check_repository_is_free(project: Project, existing: list[ProjectEntry]) -> None:
    """One data repository per project: a merge there retrains exactly one project.

    Raises:
        DevStackError: another project of the stack already uses the repository.
    """
    for entry in existing:
        if entry.name == project.name or not entry.folder:
            continue
        try:
            other = resolve_project(entry.folder)
        except Exception:  # noqa: S112 - a project whose folder moved cannot claim a repository
            continue
        if other.data.repository == project.data.repository:
            raise DevStackError(f"project {project.name!r}: data.repository {project.data.repository!r} is already "
                                f"project {other.name!r}'s ({entry.folder}); a merge there would retrain both. Give "
                                "each project its own repository in lakeloop.yaml (data.repository)")


def install_action(project: Project, lakefs_client, hook_url: str) -> str:
    """Create the project's data repository if needed and commit its action; returns the commit id ("" if
    the same action was already there). The action runs on post-merge only: installing it starts nothing."""
    import lakefs

    data = project.data
    repo = lakefs.Repository(data.repository, client=lakefs_client)
    repo.create(storage_namespace=data.namespace(), default_branch=data.branch, exist_ok=True)
    branch = repo.branch(data.branch)
    text = ACTION.format(url=hook_url, branch=data.branch, project=project.name)
    path = action_path(project)
    try:
        with branch.object(path).reader("r") as reader:
            if reader.read() == text:
                return ""
    except lakefs.exceptions.NotFoundException:
        pass
    branch.object(path).upload(text)
    return branch.commit(f"lakeloop project add {project.name}: retrain on every merge into {data.branch}",
                         metadata={"installed_by": "lakeloop project add", "project": project.name}).get_commit().id


def deployments_file(state_dir: Path, project: Project, template: Path, schedules: bool) -> Path:
    """Write the project's rendered deployments.yaml under the state dir; returns its path."""
    spec = render(yaml.safe_load(template.read_text()), project, schedules)
    folder = state_dir / "projects" / project.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "deployments.yaml"
    path.write_text(f"# rendered by `lakeloop project add` from {template} for {project.root}\n"
                    + yaml.safe_dump(spec, sort_keys=False))
    return path

