"""`lakeloop init`, `validate`, `project add | list` and `retrain`: a project from a sample of the data, its
checks, and its place on a running stack."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from lakeloop.cli._app import DEFAULT_STATE, ProjectDir, Schedules, StateDir, app, console, out
from lakeloop.errors import LakeloopError, ProjectError

TaskChoice = Literal["auto", "binary", "multiclass", "regression"]


@app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Project folder to create (lakeloop.yaml and schema.yaml).")],
    from_data: Annotated[Path, typer.Option("--from-data", help="A sample batch (parquet or CSV) to infer from.")],
    label: Annotated[str, typer.Option(help="The column the model predicts.")],
    task: Annotated[TaskChoice, typer.Option(help="auto: two values → binary; text or few integers → "
                                                  "multiclass; else regression.")] = "auto",
    id_column: Annotated[str | None, typer.Option("--id", help="Column whose hash fixes each row's split "
                                                               "(default: a unique *_id column, if any).")] = None,
    name: Annotated[str | None, typer.Option(help="Project and model name (default: the folder's name).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing lakeloop.yaml.")] = False,
) -> None:
    """Infer a project from a sample: schema (pandera, loosened), feature types, the task, likely PII.

    Writes DIR/lakeloop.yaml and DIR/schema.yaml and prints what it decided and why. The task is
    pinned in the file, so retraining never changes it. Check the result with `lakeloop validate DIR`.
    """
    import yaml

    from lakeloop.data import read_batch
    from lakeloop.project import PROJECT_FILE, load_project, project_schemas
    from lakeloop.project._infer import infer_project

    target = directory / PROJECT_FILE
    if target.exists() and not force:
        raise LakeloopError(f"{target} exists; pass --force to overwrite it, or choose another folder")
    project_name = name or re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-") or "project"
    frame = read_batch(from_data)
    inferred = infer_project(frame, label, project_name, task, id_column, source=str(from_data))
    directory.mkdir(parents=True, exist_ok=True)
    header = (f"# lakeloop project, inferred by `lakeloop init` from {from_data.name} ({len(frame)} rows).\n"
              "# Review it: feature types, PII treatments and the label's classes are yours to decide.\n")
    target.write_text(header + yaml.safe_dump(inferred.project, sort_keys=False, allow_unicode=True))
    (directory / "schema.yaml").write_text(inferred.schema.to_yaml())
    project_schemas(load_project(directory))  # what was written must load: fail here, not at the first ingest
    table = Table("column", "decision", "why", title=f"{project_name}: inferred from {from_data}")
    for decision in inferred.decisions:
        table.add_row(decision.column, decision.role, decision.why)
    out.print(table)
    out.print(f"wrote {target} and {directory / 'schema.yaml'}; check a batch with "
              f"`lakeloop validate {directory} --data FILE`")


@app.command("validate")
def validate(
    directory: Annotated[Path, typer.Argument(help="Project folder (or its lakeloop.yaml).")],
    data_file: Annotated[Path | None, typer.Option("--data", help="A batch to check against the project.")] = None,
) -> None:
    """Check the project file, its schema and (with --data) that a batch fits both; exit 1 listing the problems."""
    from lakeloop.project import data_problems, load_project, project_schemas

    try:
        project = load_project(directory)
        schemas = project_schemas(project)
    except ProjectError as exc:
        _fail(exc.problems, f"{directory}: the project is invalid")
    problems: list[str] = []
    if data_file is not None:
        from lakeloop.data import read_batch, validate_batch

        frame = read_batch(data_file)
        report = validate_batch(frame, schemas.raw, str(data_file), sensitive=set(project.pii_columns),
                                label=project.label.column)
        problems += [f"{data_file}: {f.describe()}" for f in report.failures]
        problems += data_problems(project, frame, str(data_file))
    if problems:
        _fail(problems, f"{data_file} does not fit project {project.name}")
    out.print(f"project [bold]{project.name}[/]: {project.task} on {project.label.column!r}, "
              f"{len(project.features)} features, primary metric {project.primary_metric} "
              f"({'higher' if project.higher_is_better else 'lower'} is better), schema {project.schema_ref} "
              f"({len(schemas.raw.columns)} columns)" + (f"; {data_file} fits it" if data_file else ""),
              highlight=False)


def _fail(problems: list[str], head: str) -> None:
    console.print(f"[bold red]error:[/] {head}: {len(problems)} problem(s)", highlight=False)
    for problem in problems:
        console.print(f"  - {problem}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


project_app = typer.Typer(help="Projects on a running stack: their deployments, triggers and data repository.",
                          no_args_is_help=True)
app.add_typer(project_app, name="project")


@project_app.command("add")
def project_add(
    directory: Annotated[str, typer.Argument(help="The project folder (lakeloop.yaml), or its name under "
                                                  "LAKELOOP_PROJECTS or examples/.")],
    schedules: Schedules = False,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Add a project to the running stack (`lakeloop dev up`): create its data repository if needed with
    a lakeFS action that calls the webhook receiver on every merge, and deploy its flows (`retrain/NAME`,
    `ingest-data/NAME`, ...) with triggers that match its own events only. The model server serves its
    production version as soon as one is deployed. Adding it again redeploys it."""
    from lakeloop.cli._app import add_projects

    add_projects(state_dir, [directory], schedules)
    out.print(f"added {directory}: ingest a batch with `lakeloop data ingest FILE --project {directory}`, "
              f"or ask for a run with `lakeloop retrain --project {directory} --wait`", highlight=False)


@project_app.command("list")
def project_list(state_dir: StateDir = DEFAULT_STATE) -> None:
    """The projects deployed on the running stack, with their folders and deployments."""
    from lakeloop.devstack import stack
    from lakeloop.devstack.projects import list_projects

    found = list_projects(stack.api_url(state_dir))
    table = Table("project", "folder", "deployments", title="projects on the stack")
    for entry in found:
        table.add_row(entry.name, entry.folder, ", ".join(entry.deployments))
    out.print(table if found else "no projects on the stack yet: `lakeloop project add DIR`")


@app.command("retrain")
def retrain(
    project: ProjectDir,
    wait: Annotated[bool, typer.Option(help="Follow the run to its end; exit 1 unless it completes.")] = False,
    reason: Annotated[str, typer.Option(help="Why: goes into the run's parameters and audit trail.")] = "requested "
    "from the command line",
    ref: Annotated[str | None, typer.Option(help="Train on this branch, tag or commit (default: the published "
                                                 "branch).")] = None,
    timeout: Annotated[float, typer.Option(help="With --wait: seconds to wait for the run.")] = 3600,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Ask the stack for a run of the project's `retrain` deployment (pull → train → compress → register →
    deploy behind the champion gate); with --wait, follow it and print what it did."""
    import getpass

    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from lakeloop.cli._app import _prefect_api
    from lakeloop.devstack import stack
    from lakeloop.project import resolve_project

    spec = resolve_project(project)
    name = f"retrain/{spec.name}"
    with _prefect_api(state_dir):
        parameters = {"reason": f"{reason} (by {getpass.getuser()})"} | ({"ref": ref} if ref else {})
        try:
            run = run_deployment(name, parameters=parameters, timeout=0)
        except ObjectNotFound:
            raise LakeloopError(f"no deployment {name}: add the project first (`lakeloop project add "
                                f"{project}`)") from None
        ui = os.environ.get("PREFECT_UI_URL") or stack.api_url(state_dir).removesuffix("/api")
        out.print(f"{name}: run {run.name} scheduled: {ui}/runs/flow-run/{run.id}", highlight=False)
        if not wait:
            return
        from flows.loop import follow_run

        done = follow_run(run.id, ui, lambda m: console.print(f"  {m}", highlight=False), timeout)
    r = done.result
    metric = spec.primary_metric
    value = (r.training.test_metrics.get(metric) if r.training else None)
    out.print(f"{done.name}: trained on {spec.data.repository}@{r.data_commit[:12]}"
              + (f", test {metric} {value:.4f}" if value is not None else "")
              + f"; registered {spec.name} v{r.version} ({r.chosen}); deploy {r.deploy.status}: {r.deploy.detail}",
              highlight=False)
