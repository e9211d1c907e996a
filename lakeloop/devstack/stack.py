"""`lakeloop dev up | down | status`: the embedded stack on localhost, all state under one directory.

`up` starts a Prefect server (UI, SQLite), the embedded lakeFS server, a real OpenBao dev server
(bootstrapped: policies, secrets, one AppRole per consumer), the model server (it serves every
registered model's production version), the webhook receiver and a worker on a local process work
pool; and saves the Prefect blocks the flows load. Projects join a running stack with `add_project`
(`lakeloop project add DIR`): their deployments, triggers and lakeFS action (`projects`). It
records each process's PID and start time in `stack.json`; `down` stops exactly those processes
(and the flow runs the worker started) and nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

from lakeloop.devstack import _proc, bao
from lakeloop.errors import DevStackError
from lakeloop.shipped import required_root

STACK_FILE = "stack.json"
ENV_FILE = "env"
DEFAULT_PORTS = {"prefect": 4200, "lakefs": 8000, "vault": 8200, "serving": 8080, "webhook": 8090, "worker": 8091}
WORK_POOL = "lakeloop-process"


@dataclass
class Service:
    name: str
    url: str
    health: str
    pid: int
    started: float  # process create time, so a recycled PID is never mistaken for ours

    def process_is_ours(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.Error:
            return False

    def healthy(self) -> bool:
        try:
            return httpx.get(self.health, timeout=2).status_code < 300
        except httpx.HTTPError:
            return False


def _port(name: str) -> int:
    """The service's usual port when it is free, else any free port."""
    preferred = DEFAULT_PORTS[name]
    return preferred if _proc.port_error("127.0.0.1", preferred) is None else _proc.free_port()


def _service(name: str, url: str, health: str, pid: int) -> Service:
    return Service(name, url, health, pid, psutil.Process(pid).create_time())


def load(state_dir: Path) -> dict[str, Service]:
    path = state_dir / STACK_FILE
    if not path.exists():
        return {}
    return {name: Service(**svc) for name, svc in json.loads(path.read_text())["services"].items()}


def _save(state_dir: Path, services: dict[str, Service]) -> None:
    path = state_dir / STACK_FILE
    path.write_text(json.dumps({"services": {n: asdict(s) for n, s in services.items()},
                                "started_at": time.time()}, indent=2))


def running(state_dir: Path) -> dict[str, Service]:
    """The recorded services whose processes are still ours and alive."""
    return {n: s for n, s in load(state_dir).items() if s.process_is_ours()}


OnReady = Callable[[dict[str, Service], dict[str, Path]], None]


def up(state_dir: Path, log: Callable[[str], None] = print, on_ready: OnReady | None = None) -> dict[str, Service]:
    """Start the stack (or report the one already running); returns the services.

    Args:
        state_dir: where all state lives (databases, blobs, logs, AppRole credentials).
        log: progress messages go here.
        on_ready: called with the services and the AppRole credential files once everything is
            healthy (the CLI registers the Prefect blocks there).
    """
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    current = running(state_dir)
    if current and all(s.healthy() for s in current.values()) and len(current) == len(DEFAULT_PORTS):
        log("the embedded stack is already running")
        return current
    if current:
        down(state_dir, log=lambda *_: None)
    services: dict[str, Service] = {}
    try:
        services["prefect"] = _start_prefect(state_dir)  # slowest to start: first
        _save(state_dir, services)
        log(f"starting Prefect server at {services['prefect'].url} ...")
        key_id, secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
        # lakeFS presents the webhook token from its environment ({{ ENV.LAKEFSACTION_WEBHOOK_TOKEN }}),
        # as a real lakeFS does; the receiver reads the same token from Vault.
        webhook_token = secrets.token_urlsafe(32)
        services["lakefs"] = _start_lakefs(state_dir, key_id, secret, webhook_token)
        _save(state_dir, services)
        log(f"lakeFS-compatible server ready at {services['lakefs'].url}")
        root_token = secrets.token_urlsafe(24)
        vault_port = _port("vault")
        server = bao.start(state_dir, vault_port, root_token)
        services["vault"] = _service("vault", server.address, f"{server.address}/v1/sys/health",
                                     server.process_pid)
        _save(state_dir, services)
        creds = bao.bootstrap(server.address, root_token, state_dir, (key_id, secret), revoke_root=True,
                              webhook_token=webhook_token)
        del root_token, webhook_token  # revoked and never written anywhere; consumers hold AppRole credentials only
        log(f"OpenBao ready at {server.address}: KV v2, AppRole, transit; AppRoles for "
            f"{', '.join(sorted(creds))} in {state_dir / 'vault'}; root token revoked")
        services["serving"] = _start_serving(state_dir, services, creds["serving"])
        _save(state_dir, services)
        log(f"model server at {services['serving'].url}/v2 serves every registered model's production version")
        prefect = services["prefect"]
        _proc.wait_until(prefect.healthy, "Prefect server", 120, log_file=state_dir / "logs" / "prefect.log")
        log(f"Prefect server ready at {prefect.url} (UI)")
        if on_ready is not None:
            on_ready(services, creds)
        _prefect_cli(["work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"],
                     _flow_env(state_dir, services), state_dir / "logs" / "deploy.log")
        services["webhook"] = _start_webhook(state_dir, services, creds["webhook"])
        _save(state_dir, services)
        log(f"webhook receiver at {services['webhook'].url}/hooks/lakefs and /hooks/retrain")
        services["worker"] = _start_worker(state_dir, services)
        _save(state_dir, services)
        log(f"Prefect worker polling work pool {WORK_POOL} (runs flows from {project_dir()})")
        _write_env(state_dir, services)
    except BaseException:
        down(state_dir, log=lambda *_: None)
        raise
    return services


def _start_prefect(state_dir: Path) -> Service:
    port = _port("prefect")
    home = state_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_API_URL": "",
           "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"}
    process = _proc.start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                           "--port", str(port)], state_dir / "logs" / "prefect.log", env=env)
    url = f"http://127.0.0.1:{port}"
    return _service("prefect", url, f"{url}/api/health", process.pid)


def _start_lakefs(state_dir: Path, key_id: str, secret: str, webhook_token: str) -> Service:
    from lakeloop.devstack.lakefs import start_process

    url, process = start_process(state_dir / "lakefs", key_id, secret, _port("lakefs"),
                                 state_dir / "logs" / "lakefs.log", env={"LAKEFSACTION_WEBHOOK_TOKEN": webhook_token})
    return _service("lakefs", url, f"{url}/api/v1/healthcheck", process.pid)


def _start_serving(state_dir: Path, services: dict[str, Service], approle_file: Path) -> Service:
    """`lakeloop serve --all-models`: live at once; each model is ready once its production version verifies."""
    port = _port("serving")
    env = {"LAKELOOP_LAKEFS_URL": services["lakefs"].url, "VAULT_ADDR": services["vault"].url,
           "LAKELOOP_SERVING_APPROLE_FILE": str(approle_file)}
    log_file = state_dir / "logs" / "serving.log"
    process = _proc.start([sys.executable, "-m", "lakeloop.cli", "serve", "--all-models", "--port", str(port),
                           "--workers", "1", "--poll-seconds", "2", "--log-interval", "2",
                           "--cache-dir", str(state_dir / "serving")],
                          log_file, env=env)
    url = f"http://127.0.0.1:{port}"
    _proc.wait_until(_proc.http_ok(f"{url}/v2/health/live"), "model server", 60, log_file=log_file)
    return _service("serving", url, f"{url}/v2/health/live", process.pid)


def project_dir() -> Path:
    """Where deployments.yaml and flows/ are (the checkout, or the bundle an installed lakeloop carries):
    `prefect deploy` reads it, the worker runs flows from it."""
    return required_root()


def _prefect_cli(args: list[str], env: dict[str, str], log_file: Path, timeout: float = 300) -> str:
    command = [sys.executable, "-m", "prefect", "--no-prompt", *args]
    done = subprocess.run(command, cwd=project_dir(), env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)
    with open(log_file, "a") as log:
        log.write(f"$ prefect {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise DevStackError(f"`prefect {' '.join(args)}` failed (exit {done.returncode}); see {log_file}:\n{tail}")
    return done.stdout


def _flow_env(state_dir: Path, services: dict[str, Service]) -> dict[str, str]:
    """What deployments and flow runs need to find the project, the state directory and the server."""
    env = {"PREFECT_API_URL": services["prefect"].url + "/api", "LAKELOOP_PROJECT_DIR": str(project_dir()),
           "LAKELOOP_STATE_DIR": str(state_dir), "PREFECT_HOME": str(state_dir / "prefect" / "client")}
    if "serving" in services:
        env["LAKELOOP_SERVING_URL"] = services["serving"].url
    return env


def add_project(state_dir: Path, project, schedules: bool = False, log: Callable[[str], None] = print) -> list[str]:
    """`lakeloop project add`: the project's data repository and lakeFS action, and its deployments with
    their triggers (and schedules, paused unless `schedules`), on the running stack; returns the deployments.

    Idempotent: adding a project again redeploys it (after a change to its folder or deployments.yaml).
    Schedules are deployed paused by default: a schedule that fires into a demo or a test (the hourly
    monitor-drift at the top of the hour) starts runs nobody asked for.

    Raises:
        DevStackError: the stack is not running, or another project uses the same data repository.
    """
    from lakeloop.devstack import projects
    from lakeloop.secrets import LAKEFS_PATH, VaultClient
    from lakeloop.serving import vault_settings

    state_dir = state_dir.resolve()
    services = running(state_dir)
    missing = {"prefect", "lakefs", "vault", "webhook"} - set(services)
    if missing:
        raise DevStackError(f"the embedded stack is not running in {state_dir} (no {', '.join(sorted(missing))}): "
                            "start it with `lakeloop dev up`")
    api = services["prefect"].url + "/api"
    projects.check_repository_is_free(project, projects.list_projects(api))
    approle = state_dir / "vault" / "pipeline.approle.json"
    keys = VaultClient(vault_settings(services["vault"].url, approle_file=str(approle))).read(LAKEFS_PATH)
    import lakefs

    client = lakefs.Client(host=services["lakefs"].url, username=keys["access_key_id"],
                           password=keys["secret_access_key"])
    projects.install_action(project, client, f"{services['webhook'].url}/hooks/lakefs")
    log(f"{project.name}: data in lakefs://{project.data.repository}/{project.data.branch}/{project.data.prefix}; "
        f"the action {projects.action_path(project)} calls the webhook receiver on every merge")
    prefect_file = projects.deployments_file(state_dir, project, project_dir() / "deployments.yaml", schedules)
    log_file = state_dir / "logs" / "deploy.log"
    _prefect_cli(["deploy", "--prefect-file", str(prefect_file), "--all"], _flow_env(state_dir, services), log_file)
    deployed = next(p.deployments for p in projects.list_projects(api) if p.name == project.name)
    log(f"{project.name}: deployed {len(deployed)} flows to work pool {WORK_POOL} (retrain/{project.name} "
        "triggered by its new data, its drift and requests); schedules "
        + ("active" if schedules else "paused (add the project with --schedules to run them)"))
    return deployed


def _start_webhook(state_dir: Path, services: dict[str, Service], approle_file: Path) -> Service:
    port = _port("webhook")
    env = {"PREFECT_API_URL": services["prefect"].url + "/api", "VAULT_ADDR": services["vault"].url,
           "LAKELOOP_WEBHOOK_APPROLE_FILE": str(approle_file)}
    log_file = state_dir / "logs" / "webhook.log"
    process = _proc.start([sys.executable, "-m", "lakeloop.cli", "webhook", "--port", str(port),
                           "--deliveries", str(state_dir / "webhooks" / "deliveries.sqlite")], log_file, env=env)
    url = f"http://127.0.0.1:{port}"
    _proc.wait_until(_proc.http_ok(f"{url}/healthz"), "webhook receiver", 60, process, log_file)
    return _service("webhook", url, f"{url}/healthz", process.pid)


def _start_worker(state_dir: Path, services: dict[str, Service]) -> Service:
    """A process worker on the local pool; it checks for runs every second and runs them from the checkout."""
    port = _port("worker")
    env = {**_flow_env(state_dir, services), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1", "PREFECT_WORKER_WEBSERVER_PORT": str(port)}
    log_file = state_dir / "logs" / "worker.log"
    process = _proc.start([sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type",
                           "process", "--name", f"lakeloop-dev-{port}", "--with-healthcheck"],
                          log_file, env=env, cwd=project_dir())
    url = f"http://127.0.0.1:{port}"
    _proc.wait_until(_proc.http_ok(f"{url}/health"), "Prefect worker", 90, process, log_file)
    return _service("worker", url, f"{url}/health", process.pid)


def _write_env(state_dir: Path, services: dict[str, Service]) -> None:
    """`source .lakeloop/env` points a shell (Prefect CLI, flows, `lakeloop serve`) at the stack.

    No secrets in it: the serving and webhook AppRoles are paths to their 0600 credentials files.
    """
    lines = [f"export PREFECT_API_URL={services['prefect'].url}/api",
             f"export VAULT_ADDR={services['vault'].url}",
             f"export LAKELOOP_LAKEFS_URL={services['lakefs'].url}",
             f"export LAKELOOP_SERVING_URL={services['serving'].url}",
             f"export LAKELOOP_SERVING_APPROLE_FILE={state_dir / 'vault' / 'serving.approle.json'}",
             f"export LAKELOOP_WEBHOOK_APPROLE_FILE={state_dir / 'vault' / 'webhook.approle.json'}",
             f"export LAKELOOP_WEBHOOK_URL={services['webhook'].url}",
             f"export LAKELOOP_STATE_DIR={state_dir}",
             f"export LAKELOOP_PROJECT_DIR={project_dir()}"]
    (state_dir / ENV_FILE).write_text("\n".join(lines) + "\n")


def down(state_dir: Path, log: Callable[[str], None] = print) -> list[str]:
    """Stop exactly the processes `up` recorded (by PID and start time); returns their names."""
    state_dir = state_dir.resolve()
    stopped = []
    # reverse start order: the worker (and its flow runs) first, then the receivers, then the servers
    for name, service in reversed(load(state_dir).items()):
        if service.process_is_ours():
            _proc.stop(service.pid)
            stopped.append(name)
            log(f"stopped {name} (pid {service.pid})")
        else:
            log(f"{name} (pid {service.pid}) was not running")
    for leftover in (state_dir / STACK_FILE, state_dir / ENV_FILE):
        leftover.unlink(missing_ok=True)
    return stopped


def status(state_dir: Path) -> list[tuple[str, str, bool]]:
    """(service, endpoint, healthy) for each recorded service."""
    return [(name, s.url + ("  (UI)" if name == "prefect" else ""), s.process_is_ours() and s.healthy())
            for name, s in load(state_dir.resolve()).items()]


def api_url(state_dir: Path) -> str:
    services = running(state_dir.resolve())
    if "prefect" not in services:
        raise DevStackError(f"the embedded stack is not running (no live services in {state_dir}): "
                            "start it with `lakeloop dev up`")
    return services["prefect"].url + "/api"
