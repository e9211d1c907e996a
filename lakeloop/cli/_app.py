"""`lakeloop` command tree: `dev` (the embedded stack), `data` (sample data, ingest), `demo`.

The CLI is the composition root: commands import flows and blocks lazily, inside the command, so
the rest of `lakeloop` never imports them and `lakeloop serve` works without Prefect installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lakeloop.errors import LakeloopError
from lakeloop.shipped import add_to_path, shipped_root

app = typer.Typer(help="lakeloop: the MLOps loop on lakeFS, Prefect, Vault and ONNX Runtime.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
dev = typer.Typer(help="The embedded stack on localhost: Prefect server (UI), OpenBao (Vault), the lakeFS-compatible "
                       "server, the model server, the webhook receiver and a Prefect worker.",
                  no_args_is_help=True)
data = typer.Typer(help="Sample data and ingestion into lakeFS.", no_args_is_help=True)
app.add_typer(dev, name="dev")
app.add_typer(data, name="data")
models = typer.Typer(help="The signed model registry in lakeFS: versions, aliases, lineage.", no_args_is_help=True)
app.add_typer(models, name="models")
console = Console(stderr=True)
out = Console()

StateDir = Annotated[Path, typer.Option("--state-dir", envvar="LAKELOOP_STATE_DIR",
                                        help="Directory holding all state of the embedded stack.")]
DEFAULT_STATE = Path(".lakeloop")


def state_path(*parts: str) -> Path:
    """A path under the state directory (LAKELOOP_STATE_DIR, default .lakeloop): the default of the long-running
    services' own files, so a shell pointed at a stack (`source .lakeloop/env`) writes beside it."""
    return Path(os.environ.get("LAKELOOP_STATE_DIR") or DEFAULT_STATE, *parts)


def _version(value: bool) -> None:
    if value:
        from lakeloop import __version__

        out.print(f"lakeloop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """lakeloop: the MLOps loop on lakeFS, Prefect, Vault and ONNX Runtime."""


@dev.command("credentials")
def dev_credentials(
    which: Annotated[str, typer.Argument(help="serving (an API key of the model server) or webhook (the "
                                              "receiver's bearer token).")],
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Print a credential of the running dev stack, read from Vault with that consumer's own AppRole: what a
    client of the model server ($KEY) or a CI system calling the webhook ($TOKEN) is given.

        KEY=$(lakeloop dev credentials serving); TOKEN=$(lakeloop dev credentials webhook)
    """
    from lakeloop.devstack import stack
    from lakeloop.secrets import SERVING_PATH, WEBHOOK_PATH, VaultClient, parse_api_keys
    from lakeloop.serving import vault_settings

    paths = {"serving": (SERVING_PATH, "api_keys"), "webhook": (WEBHOOK_PATH, "token")}
    if which not in paths:
        raise LakeloopError(f"unknown credential {which!r}: expected serving or webhook")
    services = stack.running(state_dir.resolve())
    if "vault" not in services:
        raise LakeloopError(f"the embedded stack is not running in {state_dir}: start it with `lakeloop dev up`")
    approle = state_dir.resolve() / "vault" / f"{which}.approle.json"
    path, key = paths[which]
    value = VaultClient(vault_settings(services["vault"].url, approle_file=str(approle))).read_key(path, key)
    out.print(parse_api_keys(value)[0] if which == "serving" else value, highlight=False, soft_wrap=True)


@dev.command("lakefs")
def dev_lakefs(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where metadata and blobs live.")] = Path(".lakeloop/lakefs"),
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Run the embedded lakeFS-compatible server in the foreground.

    Credentials come from LAKEFS_ACCESS_KEY_ID and LAKEFS_SECRET_ACCESS_KEY.
    """
    from lakeloop.devstack.lakefs import serve

    key_id = os.environ.get("LAKEFS_ACCESS_KEY_ID", "")
    secret = os.environ.get("LAKEFS_SECRET_ACCESS_KEY", "")
    if not key_id or not secret:
        raise LakeloopError("LAKEFS_ACCESS_KEY_ID and LAKEFS_SECRET_ACCESS_KEY must be set: they are the "
                            "credentials clients must present (basic auth)")
    data_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"lakeFS-compatible server on http://{host}:{port}/api/v1 (data: {data_dir})")
    serve(str(data_dir), port, key_id, secret, host=host)


def _register_blocks(services, creds) -> None:
    from blocks.dev import save_dev_blocks

    save_dev_blocks(services["prefect"].url + "/api", services["lakefs"].url, services["vault"].url,
                    creds["pipeline"])


def _stack_up(state_dir: Path) -> dict:
    from lakeloop.devstack import stack

    with console.status("starting the embedded stack ..."):
        services = stack.up(state_dir, log=lambda m: console.print(f"  {m}"), on_ready=_register_blocks)
    return services


def add_projects(state_dir: Path, folders: list[str], schedules: bool) -> None:
    """`lakeloop project add` for each folder, on the running stack."""
    from lakeloop.devstack import stack
    from lakeloop.project import resolve_project

    for folder in folders:
        project = resolve_project(folder)
        with console.status(f"adding project {project.name} ..."):
            stack.add_project(state_dir, project, schedules, log=lambda m: console.print(f"  {m}", highlight=False))


Schedules = Annotated[bool, typer.Option(
    "--schedules/--no-schedules", help="Leave the project's cron schedules (hourly monitor-drift) active; by "
    "default they are deployed paused, so nothing fires unless asked for.")]
ProjectDirs = Annotated[list[str] | None, typer.Option(
    "--project", help="A project folder (lakeloop.yaml) to add once the stack is up (repeatable).")]


@dev.command("up")
def dev_up(
    state_dir: StateDir = DEFAULT_STATE,
    project: ProjectDirs = None,
    schedules: Schedules = False,
) -> None:
    """Start the stack on localhost, with all state under --state-dir; add the --project folders to it.

    Starts the Prefect server (UI), OpenBao (Vault, bootstrapped with one AppRole per consumer), the
    lakeFS-compatible server, the model server (every project's production model), the webhook
    receiver (lakeFS actions and CI retrain requests) and a process worker. Projects join with
    `--project DIR` here or `lakeloop project add DIR` later.
    """
    _stack_up(state_dir)
    add_projects(state_dir, project or [], schedules)
    _print_status(state_dir)
    console.print(f"Point a shell at it with: [bold]source {state_dir / 'env'}[/]")


@dev.command("down")
def dev_down(state_dir: StateDir = DEFAULT_STATE) -> None:
    """Stop exactly the processes `dev up` started (by PID)."""
    from lakeloop.devstack import stack

    stopped = stack.down(state_dir, log=lambda m: console.print(f"  {m}"))
    console.print(f"stopped {len(stopped)} service(s)")


def _print_status(state_dir: Path) -> bool:
    from lakeloop.devstack import stack

    rows = stack.status(state_dir)
    table = Table("service", "endpoint", "health", title=f"lakeloop dev stack ({state_dir})")
    for name, url, healthy in rows:
        table.add_row(name, url, "[green]healthy[/]" if healthy else "[red]down[/]")
    out.print(table if rows else "the embedded stack is not running (start it with `lakeloop dev up`)")
    return bool(rows) and all(h for _, _, h in rows)


@dev.command("status")
def dev_status(state_dir: StateDir = DEFAULT_STATE) -> None:
    """Print each endpoint and whether it is healthy; exit 1 unless all are."""
    raise typer.Exit(0 if _print_status(state_dir) else 1)


ProjectDir = Annotated[str, typer.Option("--project", help="The project: its folder (lakeloop.yaml), or its name "
                                                          "under LAKELOOP_PROJECTS or examples/.")]


@data.command("generate")
def data_generate(
    output: Annotated[Path, typer.Argument(help="File to write (.parquet or .csv).")],
    project: ProjectDir,
    rows: Annotated[int, typer.Option(min=1, help="Number of rows.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same rows.")] = 0,
    drift: Annotated[str | None, typer.Option(help="A drifted sample, as the generator names them (the "
                                                   "examples: traffic, labelled).")] = None,
) -> None:
    """Write a sample batch from an example project's generator (its generate.py)."""
    from lakeloop.project import project_module, resolve_project

    if output.suffix not in (".parquet", ".csv"):
        raise LakeloopError(f"invalid output {output}: expected a .parquet or .csv file name")
    spec = resolve_project(project)
    generator = project_module(spec, "generate")
    drifts = getattr(generator, "DRIFTS", {})
    if drift is not None and drift not in drifts:
        raise LakeloopError(f"invalid --drift {drift!r}: {spec.name}'s generator knows "
                            f"{', '.join(drifts) or 'no drifted samples'}")
    frame = generator.generate(rows, seed=seed, drift=drift)
    output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(output) if output.suffix == ".parquet" else frame.to_csv(output, index=False)
    label = spec.label.column
    detail = (f"mean {label} {frame[label].mean():.4g}" if spec.task == "regression" else
              f"{label}: " + ", ".join(f"{k} {v:.1%}" for k, v in frame[label].value_counts(normalize=True)
                                       .head(4).items()))
    out.print(f"wrote {rows} rows of {spec.name} to {output} ({detail})")


@contextmanager
def _prefect_api(state_dir: Path, url: str | None = None) -> Iterator[None]:
    """Run flows against the dev stack's Prefect server, unless PREFECT_API_URL says otherwise."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lakeloop.devstack import stack

    target = os.environ.get("PREFECT_API_URL") or url or stack.api_url(state_dir)
    if not os.environ.get("LAKELOOP_DEBUG"):
        _console_without_tracebacks()
    with temporary_settings(updates={PREFECT_API_URL: target}):
        try:
            yield
        finally:
            _drain_prefect()


class _NoTraceback(logging.Formatter):
    """Console lines without tracebacks: the run's logs in Prefect keep them; the CLI says one line."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def prefect_console_handlers() -> Iterator[logging.Handler]:
    """The handlers through which Prefect logs to the terminal, on every logger."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                yield handler


def _console_without_tracebacks() -> None:
    for handler in prefect_console_handlers():
        if not isinstance(handler.formatter, _NoTraceback):
            handler.setFormatter(_NoTraceback(handler.formatter or logging.Formatter()))


def _drain_prefect() -> None:
    """Send buffered run logs and events before the server may stop. (Prefect's workers warn "Still
    processing items" whenever a drain finds its queue non-empty, e.g. a block-loaded event: on a drain
    that is the point, so that warning is held back; failures to send still show.)"""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.instance().drain(), EventsWorker.drain_all()):
            if inspect.isawaitable(result):
                await result

    quiet = [logging.getLogger(name) for name in ("EventsWorker", "APILogWorker")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        run_coro_as_sync(drain())
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


@data.command("ingest")
def data_ingest(
    source: Annotated[Path, typer.Argument(help="Batch file (.parquet or .csv).")],
    project: ProjectDir,
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Run the ingest-data flow on one batch: validated against the project's schema, PII treated, and
    published to its data branch (which starts the project's retrain), or quarantined with a report."""
    from flows.ingest import ingest_data
    from lakeloop.project import resolve_project

    spec = resolve_project(project)
    if not source.is_file():
        raise LakeloopError(f"{source}: no such file")
    with _prefect_api(state_dir):
        state = ingest_data(str(source.resolve()), project=spec.root, return_state=True)
    if not state.is_completed():
        raise LakeloopError(str(state.result(raise_on_failure=False)))
    result = state.result()
    where = f"{spec.data.repository}/{spec.data.branch}"
    if result.already_published:
        out.print(f"batch {result.batch_id} was already published to {where} at commit {result.commit_id}")
    else:
        out.print(f"published {result.rows} rows (batch {result.batch_id}) to {where} at commit {result.commit_id}")


ModelName = Annotated[str, typer.Option("--name", help="Registered model name (the project's name).")]
RegistryRepo = Annotated[str, typer.Option("--registry", help="lakeFS repository of the registry.")]


@contextmanager
def _registry(state_dir: Path, repository: str) -> Iterator:
    from blocks import LakeFSConnection

    with _prefect_api(state_dir):
        yield LakeFSConnection.load("lakeloop-lakefs").registry(repository)


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


@models.command("list")
def models_list(name: ModelName, registry: RegistryRepo = "lakeloop-models",
                state_dir: StateDir = DEFAULT_STATE) -> None:
    """Every version with its aliases, registration time and primary metric."""
    from lakeloop.registry import ALIASES

    with _registry(state_dir, registry) as reg:
        versions = reg.versions(name)
        aliases = {a: reg.alias(name, a) for a in ALIASES}
        table = Table("version", "aliases", "variant", "registered", "test metric", title=f"{name} in {registry}")
        for v in versions:
            manifest = reg.manifest(name, v)
            tags = ", ".join(a for a, target in aliases.items() if target == v)
            metric = manifest.get("project", {}).get("primary_metric", "")
            value = manifest.get("metrics", {}).get(metric)
            table.add_row(f"v{v}", tags, manifest.get("variant", ""), manifest["registered_at"],
                          f"{metric} {value:.4f}" if isinstance(value, float) else "-")
    out.print(table if versions else f"{name} has no versions in {registry}")


@models.command("show")
def models_show(version: Annotated[int, typer.Argument(help="Version number.")], name: ModelName,
                registry: RegistryRepo = "lakeloop-models", state_dir: StateDir = DEFAULT_STATE) -> None:
    """The verified manifest of one version (signature checked)."""
    import json

    with _registry(state_dir, registry) as reg:
        out.print_json(json.dumps(reg.manifest(name, version)))


@models.command("lineage")
def models_lineage(name: ModelName, alias: Annotated[str, typer.Option(help="Alias to explain.")] =
                   "production", registry: RegistryRepo = "lakeloop-models",
                   state_dir: StateDir = DEFAULT_STATE) -> None:
    """Where did this model come from: data commit, code version, config, metrics, who promoted it."""
    with _registry(state_dir, registry) as reg:
        version = reg.alias(name, alias)
        if version is None:
            raise LakeloopError(f"{name}@{alias} is not set: promote a version first "
                                f"(`lakeloop models promote VERSION --alias {alias}`)")
        m = reg.manifest(name, version)
        history = reg.history(name, alias)
    lineage, metrics = m.get("lineage", {}), m.get("metrics", {})
    out.print(f"[bold]{name}@{alias}[/] = v{version} ({m.get('variant', '?')}), signature verified")
    out.print(f"  data     {lineage.get('data_repository')}@{lineage.get('data_commit')}  rows {lineage.get('rows')}")
    out.print(f"  code     {lineage.get('code_version')}")
    out.print(f"  config   {lineage.get('config')}", soft_wrap=True)
    out.print("  metrics  " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    out.print(f"  registered {m['registered_at']} by {m['registered_by']}")
    for move in history:
        target = f"v{move['version']}" if move["version"] is not None else "nothing (unset)"
        out.print(f"  moved to {target} by {move['actor'] or '?'}: {move['message']}", soft_wrap=True)


@models.command("promote")
def models_promote(version: Annotated[int, typer.Argument(help="Version number.")], name: ModelName,
                   alias: Annotated[str, typer.Option(help="production, staging or previous.")] = "production",
                   reason: Annotated[str, typer.Option(help="Why: goes into the audit trail.")] = "",
                   registry: RegistryRepo = "lakeloop-models", state_dir: StateDir = DEFAULT_STATE) -> None:
    """Point an alias at a version (one lakeFS commit: the audit trail)."""
    with _registry(state_dir, registry) as reg:
        commit = reg.promote(name, version, alias, _actor(), reason)
    out.print(f"{name}@{alias} → v{version} (commit {commit[:12]})")


@models.command("rollback")
def models_rollback(name: ModelName, reason: Annotated[str, typer.Option(help="Why.")] = "rollback",
                    registry: RegistryRepo = "lakeloop-models", state_dir: StateDir = DEFAULT_STATE) -> None:
    """Production goes back to the previous production version."""
    with _registry(state_dir, registry) as reg:
        version = reg.rollback(name, _actor(), reason)
    out.print(f"{name}@production → v{version} (rolled back)")


# Vault options shared by the long-running services (model server, webhook receiver)
VaultAddr = Annotated[str | None, typer.Option(envvar="VAULT_ADDR", help="Vault address.")]
VaultAuth = Annotated[str | None, typer.Option(help="token, approle or kubernetes (default: from what is set).")]
VaultRole = Annotated[str | None, typer.Option(help="Vault role for Kubernetes auth.")]


def _port_is_free(host: str, port: int, flag: str = "--port") -> None:
    """Refuse, before claiming to serve, a port another process holds (the dev stack's, say)."""
    from lakeloop.devstack._proc import port_error

    error = port_error(host, port)
    if error is not None:
        raise LakeloopError(f"cannot listen on {host}:{port}: {error.strerror} (another process holds it; "
                            f"the dev stack's ports are in `lakeloop dev status`): choose another with {flag}")


def _cpu_list(text: str | None) -> list[int] | None:
    """'0', '0,2' or '0-3' → CPU numbers."""
    if not text:
        return None
    cpus: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            cpus.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise LakeloopError(f"invalid --cpus {text!r}: expected e.g. '0', '0,2' or '0-3'") from None
    return cpus


@app.command("serve")
def serve(
    onnx: Annotated[Path | None, typer.Option(help="Serve this local ONNX file (edge and dev use).")] = None,
    name: Annotated[str | None, typer.Option(help="The --onnx model's name in the V2 URLs (default: the file "
                                                  "name).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Serve this registered model (verified, hot-swapped; "
                                                         "repeatable).")] = None,
    all_models: Annotated[bool, typer.Option("--all-models", help="Serve every registered model whose alias is set, "
                                                                  "including those registered later.")] = False,
    alias: Annotated[str, typer.Option(help="Registry alias to follow.")] = "production",
    registry: RegistryRepo = "lakeloop-models",
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    grpc_port: Annotated[int | None, typer.Option(help="Also serve V2 over gRPC (KServe's GRPCInferenceService) on "
                                                       "this port, e.g. 8081.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes; 0: one per CPU it may use.")] = 0,
    http: Annotated[str, typer.Option(help="HTTP layer: 'lakeloop' (its compiled HTTP/1.1 front), 'uvicorn', or "
                                           "'auto' (the front where it was built at install time).")] = "auto",
    cpus: Annotated[str | None, typer.Option(help="Pin to these CPUs, e.g. '0' or '0-3'.")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most rows one request (or one merged batch) may carry.")]
    = 1024,
    max_batch_delay_us: Annotated[int, typer.Option(min=0, help="Adaptive batching: merge concurrent requests "
                                                    "for a model into one ONNX Runtime call, the first waiting at "
                                                    "most this many microseconds (0: merge only the requests that "
                                                    "arrived together, never wait).")] = 0,
    batching: Annotated[bool, typer.Option(help="Adaptive batching on (the default) or off (one ONNX Runtime "
                                                "call per request).")] = True,
    preferred_batch: Annotated[int, typer.Option(min=1, help="Adaptive batching: run a merged batch as soon as it "
                                                             "holds this many rows.")] = 64,
    max_body_bytes: Annotated[int, typer.Option(min=1024, help="Largest request body; larger ones get 413.")]
    = 64 * 1024 * 1024,
    max_string_bytes: Annotated[int, typer.Option(min=1, help="Largest BYTES element (a string) in a request.")]
    = 65_536,
    body_timeout: Annotated[float, typer.Option(min=0.01, help="Seconds a client has to send a request body "
                                                               "(408 after them).")] = 30.0,
    max_header_bytes: Annotated[int, typer.Option(min=1024, help="Largest request line plus headers (431 above "
                                                                 "it).")] = 16_384,
    header_timeout: Annotated[float, typer.Option(min=0.01, help="Seconds a client has to send a request's line "
                                                                 "and headers (408 after them).")] = 10.0,
    busy_poll_us: Annotated[int, typer.Option(min=0, max=1_000_000, help="After answering, wait up to this many "
                                              "microseconds for the next request with the CPU awake instead of "
                                              "sleeping (lakeloop's front; 0: off).")] = 200,
    api_key: Annotated[list[str] | None, typer.Option(
        help="An accepted API key (repeatable). Default: LAKELOOP_API_KEYS (comma-separated), else Vault.")] = None,
    intra_op_threads: Annotated[int, typer.Option(min=0, help="ORT threads inside an operator.")] = 1,
    inter_op_threads: Annotated[int, typer.Option(min=0, help="ORT threads across operators.")] = 1,
    graph_optimization: Annotated[str, typer.Option(help="disable, basic, extended or all.")] = "all",
    cache_dir: Annotated[Path | None, typer.Option(help="Downloaded models and optimised graphs (default: "
                                                      "$LAKELOOP_STATE_DIR/serving).")] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Write inference logs here when there is no lakeFS.")] = None,
    inference_logs: Annotated[bool, typer.Option(help="Log inputs and outputs for drift monitoring.")] = True,
    log_interval: Annotated[float, typer.Option(help="Seconds between inference-log objects.")] = 10.0,
    log_repository: Annotated[str, typer.Option(help="lakeFS repository of the inference logs.")] = "lakeloop-data",
    log_storage_namespace: Annotated[str | None, typer.Option(
        help="Storage namespace to create the log repository with, if it does not exist.")] = None,
    poll_seconds: Annotated[float, typer.Option(help="How often the alias and API keys are re-read.")] = 5.0,
    lakefs_endpoint: Annotated[str | None, typer.Option(envvar="LAKELOOP_LAKEFS_URL",
                                                        help="lakeFS URL (keys come from Vault).")] = None,
    vault_addr: VaultAddr = None,
    vault_approle_file: Annotated[str | None, typer.Option(
        envvar="LAKELOOP_SERVING_APPROLE_FILE", help="JSON file with the serving AppRole's role_id and secret_id.")]
    = None,
    vault_auth: VaultAuth = None,
    vault_role: VaultRole = None,
) -> None:
    """Serve ONNX models on the Open Inference Protocol v2 (REST) with ONNX Runtime on CPU.

    `--onnx FILE` serves a local file; `--model NAME` (repeatable) serves NAME@--alias from the
    signed registry in lakeFS, and `--all-models` every registered model (the dev stack's choice:
    each project's model appears once deployed). Each swaps versions when its alias moves. Needs
    only the `serve` extra.
    """
    from pydantic import SecretStr, ValidationError

    from lakeloop.secrets import parse_api_keys
    from lakeloop.serving import ServeSettings, Tuning, run, vault_settings

    cache_dir = cache_dir or state_path("serving")
    _port_is_free(host, port)
    if grpc_port is not None:
        _port_is_free(host, grpc_port, "--grpc-port")
    registry_mode = bool(model) or all_models
    if (onnx is None) == (not registry_mode):
        raise LakeloopError("give exactly one of --onnx FILE, or --model NAME / --all-models")
    if onnx is not None and not onnx.is_file():
        raise LakeloopError(f"--onnx {onnx}: no such file")
    keys = api_key or parse_api_keys(os.environ.get("LAKELOOP_API_KEYS", ""))
    has_vault_credentials = bool(vault_approle_file or vault_role or vault_auth or os.environ.get("VAULT_ROLE_ID")
                                 or os.environ.get("VAULT_TOKEN"))
    use_vault = bool(vault_addr) and (registry_mode or (has_vault_credentials and not keys))
    try:
        settings = ServeSettings(
            name=name or (onnx.stem if onnx else ""), onnx=str(onnx) if onnx else None, models=model or [],
            all_models=all_models,
            alias=alias, registry=registry, host=host, port=port, grpc_port=grpc_port, workers=workers, http=http,
            cpus=_cpu_list(cpus),
            max_batch=max_batch, max_body_bytes=max_body_bytes, max_string_bytes=max_string_bytes,
            body_timeout=body_timeout, max_header_bytes=max_header_bytes, header_timeout=header_timeout,
            busy_poll_us=busy_poll_us, batch_delay_us=max_batch_delay_us if batching else None,
            preferred_batch=preferred_batch,
            poll_seconds=poll_seconds,
            tuning=Tuning(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
                          graph_optimization=graph_optimization, cache_dir=str(cache_dir / "optimized")),
            api_keys=[SecretStr(k) for k in keys] if not use_vault else [],
            vault=vault_settings(vault_addr, vault_auth, vault_approle_file, vault_role) if use_vault else None,
            lakefs_endpoint=lakefs_endpoint if use_vault else None, log_repository=log_repository,
            log_storage_namespace=log_storage_namespace,
            log_dir=str(log_dir) if log_dir else None, log_interval=log_interval, inference_logs=inference_logs,
            cache_dir=str(cache_dir))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise LakeloopError(f"invalid serve option {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    from lakeloop.serving._main import describe, workers_for

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console.print(f"serving on http://{host}:{port}/v2" + (f" and grpc://{host}:{grpc_port}" if grpc_port is not None
                                                            else "") + f" ({workers_for(settings)} worker(s))",
                  highlight=False)
    for line in describe(settings):
        console.print(f"  {line}", highlight=False)
    run(settings)


@app.command("webhook")
def webhook(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    prefect_api: Annotated[str | None, typer.Option(envvar="PREFECT_API_URL",
                                                    help="Prefect API the events go to.")] = None,
    branch: Annotated[list[str] | None, typer.Option(help="Branches whose merges and commits count (repeatable).")]
    = None,
    deliveries: Annotated[Path | None, typer.Option(help="SQLite file of the idempotency keys already handled "
                                                        "(default: $LAKELOOP_STATE_DIR/webhooks/deliveries.sqlite).")]
    = None,
    vault_addr: VaultAddr = None,
    vault_approle_file: Annotated[str | None, typer.Option(
        envvar="LAKELOOP_WEBHOOK_APPROLE_FILE", help="JSON file with the webhook AppRole's role_id and secret_id.")]
    = None,
    vault_auth: VaultAuth = None,
    vault_role: VaultRole = None,
) -> None:
    """Receive lakeFS actions webhooks (POST /hooks/lakefs) and CI retrain requests (POST /hooks/retrain)
    and emit them as Prefect events, once per delivery. The bearer token comes from Vault
    (secret/lakeloop/webhook, key `token`), or from LAKELOOP_WEBHOOK_TOKEN without Vault."""
    import time

    import uvicorn

    from lakeloop._uvicorn import options as bounded_http
    from lakeloop.secrets import WEBHOOK_PATH, VaultClient
    from lakeloop.serving import vault_settings
    from lakeloop.webhooks import Deliveries, PrefectEvents, create_app

    if not prefect_api:
        raise LakeloopError("no Prefect API: set PREFECT_API_URL or --prefect-api (`source .lakeloop/env`)")
    deliveries = deliveries or state_path("webhooks", "deliveries.sqlite")
    _port_is_free(host, port)
    settings = vault_settings(vault_addr, vault_auth, vault_approle_file, vault_role)
    if settings is None:
        fixed = os.environ.get("LAKELOOP_WEBHOOK_TOKEN", "")
        if not fixed:
            raise LakeloopError("no token source: set VAULT_ADDR (the token is read from Vault) or "
                                "LAKELOOP_WEBHOOK_TOKEN")

        def token() -> str:
            return fixed
    else:
        vault = VaultClient(settings)
        cached = {"value": vault.read_key(WEBHOOK_PATH, "token"), "at": time.monotonic()}

        def token() -> str:  # re-read every 30 s, so a rotated token takes effect without a restart
            if time.monotonic() - cached["at"] > 30:
                cached.update(value=vault.read_key(WEBHOOK_PATH, "token"), at=time.monotonic())
            return cached["value"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(token, PrefectEvents(prefect_api), Deliveries(deliveries), tuple(branch or ["main"]))
    console.print(f"webhook receiver on http://{host}:{port}/hooks/lakefs and /hooks/retrain → {prefect_api}",
                  highlight=False)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", **bounded_http())


def main() -> None:
    """Console entry point: lakeloop errors become one clear line and exit code 1."""
    if shipped_root() is not None:  # the flows and blocks commands import: the checkout's, or the installed bundle's
        add_to_path()
    try:
        app()
    except LakeloopError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise SystemExit(1) from None
