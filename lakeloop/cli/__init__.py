"""The `lakeloop` command. Heavy modules load inside the commands that need them."""

from lakeloop.cli import _demo, _project  # noqa: F401  (register `lakeloop demo`, `init`, `validate`)
from lakeloop.cli._app import app, main

__all__ = ["app", "main"]
