"""The embedded lakeFS-compatible server (`lakeloop dev lakefs`).

A faithful stand-in for lakeFS for every operation lakeloop uses, speaking the lakeFS REST API so
that the official `lakefs` SDK works against it unchanged. Real lakeFS deployments need no code
change: only the endpoint and keys differ.
"""

import subprocess
import sys
from pathlib import Path

from lakeloop.devstack.lakefs._app import VERSION, LakeFSApp, create_app
from lakeloop.devstack.lakefs._store import Store

__all__ = ["VERSION", "LakeFSApp", "Store", "create_app", "serve", "start_process"]


def serve(data_dir: str, port: int, access_key_id: str, secret_access_key: str,
          host: str = "127.0.0.1") -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    from lakeloop._uvicorn import options

    app = create_app(data_dir, access_key_id, secret_access_key)
    # as lakeFS: Go's net/http default bound on a request head (1 MB, plus the 4 KiB it allows over)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, **options(1024 * 1024 + 4096))


def start_process(data_dir: Path, access_key_id: str, secret_access_key: str, port: int | None = None,
                  log_file: Path | None = None, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen]:
    """Start `lakeloop dev lakefs` as a detached process and wait until it is healthy.

    Returns its base URL (without /api/v1) and the process. The keys travel by environment only.
    """
    from lakeloop.devstack import _proc

    port = port or _proc.free_port()
    log_file = log_file or data_dir.parent / f"{data_dir.name}.log"
    process = _proc.start([sys.executable, "-m", "lakeloop.cli", "dev", "lakefs", "--port", str(port),
                           "--data-dir", str(data_dir)], log_file,
                          env={"LAKEFS_ACCESS_KEY_ID": access_key_id, "LAKEFS_SECRET_ACCESS_KEY": secret_access_key,
                               **(env or {})})
    url = f"http://127.0.0.1:{port}"
    _proc.wait_until(_proc.http_ok(f"{url}/api/v1/healthcheck"), "embedded lakeFS", 30, process, log_file)
    return url, process
