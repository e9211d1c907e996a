"""The `lakeloop` command. Heavy modules load inside the commands that need them."""

from lakeloop.cli import _demo  # noqa: F401  (registers `lakeloop demo`)
from lakeloop.cli._app import app, main

__all__ = ["app", "main"]
