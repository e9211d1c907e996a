"""`lakeloop serve`: settings, wiring (Vault, lakeFS, registry, logs) and the uvicorn process(es)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal

import uvicorn
from pydantic import BaseModel, Field, SecretStr

from lakeloop._uvicorn import HEADER_TIMEOUT_S, MAX_HEADER_BYTES
from lakeloop._uvicorn import options as bounded
from lakeloop.errors import ConfigError
from lakeloop.secrets import LAKEFS_PATH, VaultClient, VaultSettings, serving_keys
from lakeloop.serving._batching import Batching
from lakeloop.serving._logs import DirectorySink, InferenceLogger, LakeFSSink
from lakeloop.serving._model import Tuning
from lakeloop.serving._protocol import Limits
from lakeloop.serving._server import ModelServer
from lakeloop.serving._sources import FileSource, ModelSource, RegistrySource

# After answering, the front waits this long for the next request with the CPU awake (docs/serving.md,
# "Busy polling"): measured at one connection on a 2-CPU VM in interleaved runs, single rows 4,624 -> 6,165
# req/s (median of 3) at the same p99; at eight connections the CPU is never idle and it changes nothing.
BUSY_POLL_US = 200

log = logging.getLogger("lakeloop.serving")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SETTINGS_ENV = "LAKELOOP_SERVE_SETTINGS"  # how the parent hands settings to uvicorn's worker processes


class ServeSettings(BaseModel):
    """Everything `lakeloop serve` needs; the CLI fills it from flags and environment."""

    name: str = Field("", description="Model name in the V2 URLs of the --onnx file.")
    onnx: str | None = Field(None, description="Serve this local ONNX file.")
    models: list[str] = Field([], description="Serve these registered models (`NAME@alias`, signed registry).")
    all_models: bool = Field(False, description="Serve every registered model whose alias is set, found as they "
                                                "are registered.")
    alias: str = "production"
    registry: str = "lakeloop-models"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    grpc_port: int | None = Field(None, ge=0, le=65535, description="Also serve V2 over gRPC on this port.")
    workers: int = Field(0, ge=0, description="Worker processes (0: one per CPU this process may use).")
    http: Literal["auto", "lakeloop", "uvicorn"] = Field(
        "auto", description="HTTP layer: lakeloop's compiled front, uvicorn, or auto (the front where it is built).")
    cpus: list[int] | None = Field(None, description="Pin the server to these CPUs.")
    max_batch: int = Field(1024, ge=1, description="Most rows (the batch dimension) one request may carry.")
    max_string_bytes: int = Field(65_536, ge=1, description="Most bytes of one BYTES element.")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body (413 above it).")
    body_timeout: float = Field(30.0, gt=0, description="Seconds a client has to send a body (408 after them).")
    max_header_bytes: int = Field(MAX_HEADER_BYTES, ge=1024, description="Largest request line plus headers (431).")
    header_timeout: float = Field(HEADER_TIMEOUT_S, gt=0, description="Seconds a client has to send a request's "
                                                                      "head (408 after them).")
    busy_poll_us: int = Field(BUSY_POLL_US, ge=0, le=1_000_000, description="After answering, wait this long for "
                              "the next request with the CPU awake instead of sleeping at once (lakeloop's front "
                              "only; 0: off).")
    poll_seconds: float = Field(5.0, gt=0, description="How often the alias and API keys are re-read.")
    batch_delay_us: int | None = Field(0, ge=0, description="Merge concurrent requests into one ONNX Runtime "
                                       "call, waiting at most this long for others (0: only those that arrived "
                                       "together, never waiting; None: no batching).")
    preferred_batch: int = Field(64, ge=1, description="Rows at which a merged batch runs at once.")
    tuning: Tuning = Tuning()
    api_keys: list[SecretStr] = Field([], description="Keys from --api-key / LAKELOOP_API_KEYS (no Vault).")
    vault: VaultSettings | None = None
    lakefs_endpoint: str | None = None
    log_repository: str = "lakeloop-data"
    log_branch: str = "inference-logs"
    log_storage_namespace: str | None = Field(None, description="For creating the log repository if missing.")
    log_dir: str | None = None
    log_interval: float = Field(10.0, gt=0)
    inference_logs: bool = True
    cache_dir: str = ".lakeloop/serving"


def vault_settings(address: str | None, auth: str | None = None, approle_file: str | None = None,
                   kubernetes_role: str | None = None) -> VaultSettings | None:
    """Vault settings from flags/environment: AppRole from a JSON file (`dev up` writes one per
    consumer) or VAULT_ROLE_ID/VAULT_SECRET_ID, a token from VAULT_TOKEN, or Kubernetes auth."""
    if not address:
        return None
    if approle_file:
        return VaultSettings(address=address, auth_method="approle", role_id_ref=f"file:{approle_file}#role_id",
                             secret_id_ref=f"file:{approle_file}#secret_id")
    method = auth or ("kubernetes" if kubernetes_role else "approle" if os.environ.get("VAULT_ROLE_ID") else "token")
    return VaultSettings(address=address, auth_method=method, kubernetes_role=kubernetes_role)


def build(settings: ServeSettings) -> ModelServer:
    """Wire a ModelServer from settings: fail fast, with the fix, on anything missing."""
    vault = VaultClient(settings.vault) if settings.vault else None
    lakefs_client = None
    if settings.lakefs_endpoint:
        if vault is None:
            raise ConfigError("--lakefs-endpoint needs Vault (VAULT_ADDR): the lakeFS keys are read from Vault")
        from lakeloop.data._lakefs import lakefs_client as make_client

        lakefs_client = make_client(settings.lakefs_endpoint, vault, LAKEFS_PATH)
    sources: dict[str, ModelSource] = {}
    discover = source_of = None
    if settings.models or settings.all_models:
        if lakefs_client is None or vault is None:
            raise ConfigError("serving from the registry needs lakeFS and Vault: set LAKELOOP_LAKEFS_URL (or "
                              "--lakefs-endpoint) and VAULT_ADDR with credentials (e.g. `source .lakeloop/env`)")
        from lakeloop.registry import Registry, VaultSigner

        registry = Registry(lakefs_client, settings.registry, VaultSigner(vault))
        cache, alias = Path(settings.cache_dir) / "models", settings.alias

        def source_of(name: str) -> ModelSource:
            return RegistrySource(registry, name, alias, cache)

        sources = {name: source_of(name) for name in settings.models}
        if settings.all_models:
            def discover() -> list[str]:
                return [n for n in registry.models() if registry.alias(n, alias) is not None]
        else:
            source_of = None
    else:
        if not settings.onnx:
            raise ConfigError("give --onnx FILE, --model NAME or --all-models")
        sources = {settings.name: FileSource(Path(settings.onnx))}
    keys = None
    if vault is not None:
        def keys() -> frozenset[str]:
            return frozenset(serving_keys(vault))
    elif settings.api_keys:
        fixed = frozenset(k.get_secret_value() for k in settings.api_keys)

        def keys() -> frozenset[str]:
            return fixed
    inference_log = None
    if settings.inference_logs:
        sink = (LakeFSSink(lakefs_client, settings.log_repository, settings.log_branch,
                                  storage_namespace=settings.log_storage_namespace) if lakefs_client is not None
                else DirectorySink(Path(settings.log_dir)) if settings.log_dir else None)
        if sink is not None:
            inference_log = InferenceLogger(sink, interval=settings.log_interval)
    limits = Limits(settings.max_batch, settings.max_string_bytes, settings.max_body_bytes, settings.body_timeout)
    batching = (Batching(settings.batch_delay_us, settings.preferred_batch, settings.max_batch)
                if settings.batch_delay_us is not None else None)
    return ModelServer(sources, settings.tuning, limits, keys, inference_log, settings.poll_seconds,
                       discover=discover, source_of=source_of, batching=batching)


def app_from_environment():
    """uvicorn factory for worker processes: settings come from the parent through the environment."""
    from lakeloop.serving._app import create_app

    settings = ServeSettings.model_validate_json(os.environ[SETTINGS_ENV])
    return create_app(build(settings), grpc_address(settings))


def grpc_address(settings: ServeSettings) -> str | None:
    return f"{settings.host}:{settings.grpc_port}" if settings.grpc_port is not None else None


def describe(settings: ServeSettings) -> list[str]:
    """What the server will do, for the start-up banner (no secrets)."""
    if settings.all_models:
        source = f"{settings.registry}: every model's @{settings.alias} (signed, verified on load)"
    elif settings.models:
        source = f"{settings.registry}: " + ", ".join(f"{m}@{settings.alias}" for m in settings.models) + (
            " (signed, verified on load)")
    else:
        source = f"{settings.name}: {settings.onnx}"
    auth = ("API keys from Vault" if settings.vault else
            f"{len(settings.api_keys)} API key(s) from --api-key/LAKELOOP_API_KEYS" if settings.api_keys else
            "NONE: anyone who can reach the port can use it (give --api-key or Vault)")
    logs = (f"lakefs://{settings.log_repository}/{settings.log_branch}" if settings.lakefs_endpoint else
            settings.log_dir or "off (no lakeFS and no --log-dir)") if settings.inference_logs else "off"
    batching = (f"merged, up to {settings.batch_delay_us} µs wait, {settings.preferred_batch} rows"
                if settings.batch_delay_us is not None else "off (one ONNX Runtime call per request)")
    polling = f", busy polling {settings.busy_poll_us} µs" if settings.busy_poll_us else ", no busy polling"
    http = (f"lakeloop's compiled front{polling}" if http_layer(settings) == "lakeloop" else
            "uvicorn" + (" (lakeloop's compiled front is not built here)" if settings.http == "auto" else ""))
    lines = [f"model    {source}", f"auth     {auth}", f"logs     {logs}", f"batching {batching}", f"http     {http}"]
    if settings.grpc_port is not None:
        stack = "lakeloop's compiled front (HTTP/2)" if http_layer(settings) == "lakeloop" else "grpcio (grpc.aio)"
        lines.append(f"grpc     port {settings.grpc_port}, {stack}")
    return lines


def workers_for(settings: ServeSettings) -> int:
    if settings.workers:
        return settings.workers
    return len(settings.cpus) if settings.cpus else len(os.sched_getaffinity(0))


def run(settings: ServeSettings) -> None:
    """Serve until interrupted: one process, or a uvicorn supervisor with `workers` processes."""
    if settings.cpus:
        try:
            os.sched_setaffinity(0, settings.cpus)  # workers inherit it
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot pin to CPUs {settings.cpus}: {exc} (this machine has "
                              f"{sorted(os.sched_getaffinity(0))})") from exc
    if not settings.api_keys and settings.vault is None:
        log.warning("serving WITHOUT authentication: give --api-key, LAKELOOP_API_KEYS or Vault (VAULT_ADDR)")
    workers = workers_for(settings)
    if http_layer(settings) == "lakeloop":
        from lakeloop.serving import _http

        sock = _http.listen(settings.host, settings.port)
        grpc_sock = (_http.listen(settings.host, settings.grpc_port, "--grpc-port")
                     if settings.grpc_port is not None else None)
        if workers == 1:
            from lakeloop.serving._app import create_app

            _http.serve(create_app(build(settings)), sock, settings.max_header_bytes, settings.header_timeout,
                        grpc_sock, settings.busy_poll_us)
            return
        build(settings)  # fail fast in the parent on bad settings, before starting workers
        _http.supervise(_settings_json(settings), sock, workers, settings.max_header_bytes, settings.header_timeout,
                        grpc_sock)
        return
    common = {"host": settings.host, "port": settings.port, "access_log": False, "log_level": "info",
              "timeout_keep_alive": 30, "timeout_graceful_shutdown": 10, "server_header": False,
              **bounded(settings.max_header_bytes, settings.header_timeout)}
    if workers == 1:
        from lakeloop.serving._app import create_app

        server = build(settings)
        uvicorn.run(create_app(server, grpc_address(settings)), **common)
        return
    build(settings)  # fail fast in the parent on bad settings, before starting workers
    os.environ[SETTINGS_ENV] = _settings_json(settings)
    uvicorn.run("lakeloop.serving._main:app_from_environment", factory=True, workers=workers, **common)


def http_layer(settings: ServeSettings) -> str:
    """"lakeloop" (the compiled front) or "uvicorn": what `--http` asks, auto choosing the front where it is built."""
    from lakeloop.serving import _http

    if settings.http == "lakeloop" and not _http.available():
        raise ConfigError("--http lakeloop: lakeloop's HTTP front is not built in this installation (it needs a C "
                          "compiler at install time, on Linux); use --http uvicorn or reinstall with gcc present")
    if settings.http == "auto":
        return "lakeloop" if _http.available() else "uvicorn"
    return settings.http


def _settings_json(settings: ServeSettings) -> str:
    """Settings for the workers, keys included (SecretStr would mask them): parent → child environment only."""
    data = settings.model_dump(mode="json")
    data["api_keys"] = [k.get_secret_value() for k in settings.api_keys]
    return json.dumps(data)
