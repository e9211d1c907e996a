"""`lakeloop` command tree: `dev` (the embedded stack), `data` (sample data, ingest), `demo`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lakeloop.errors import LakeloopError

app = typer.Typer(help="lakeloop: the MLOps loop on lakeFS, Prefect, Vault and ONNX Runtime.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
dev = typer.Typer(help="The embedded stack: Prefect server, OpenBao (Vault) and lakeFS.",
                  no_args_is_help=True)
app.add_typer(dev, name="dev")
console = Console(stderr=True)

StateDir = Annotated[Path, typer.Option("--state-dir", envvar="LAKELOOP_STATE_DIR",
                                        help="Directory holding all state of the embedded stack.")]


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


def main() -> None:
    """Console entry point: lakeloop errors become one clear line and exit code 1."""
    try:
        app()
    except LakeloopError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise SystemExit(1) from None
