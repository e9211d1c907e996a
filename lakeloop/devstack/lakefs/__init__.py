"""The embedded lakeFS-compatible server (`lakeloop dev lakefs`).

A faithful stand-in for lakeFS for every operation lakeloop uses, speaking the lakeFS REST API so
that the official `lakefs` SDK works against it unchanged. Real lakeFS deployments need no code
change: only the endpoint and keys differ.
"""

from lakeloop.devstack.lakefs._app import VERSION, LakeFSApp, create_app
from lakeloop.devstack.lakefs._store import Store

__all__ = ["VERSION", "LakeFSApp", "Store", "create_app", "serve"]


def serve(data_dir: str, port: int, access_key_id: str, secret_access_key: str,
          host: str = "127.0.0.1") -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    app = create_app(data_dir, access_key_id, secret_access_key)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
