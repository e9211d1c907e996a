"""Where lakeloop's own deployable files are: deployments.yaml, flows/, tasks/, blocks/ and examples/.

In a checkout they are the repository's top-level folders. An installed lakeloop carries copies under
`lakeloop/_bundle` (symlinks in the repository, files in the wheel) and installs no top-level `flows`,
`tasks` or `blocks` package, so those generic names never collide with anyone else's in
site-packages: they are importable only where a flow run works, in this folder (the deployments'
`set_working_directory` pull step), or in a checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lakeloop.errors import LakeloopError

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent  # the repository, when lakeloop runs from a checkout
BUNDLE = PACKAGE / "_bundle"


def shipped_root() -> Path | None:
    """The checkout if lakeloop runs from one, else the installed bundle; None if neither has the flows."""
    if (CHECKOUT / "pyproject.toml").is_file() and _complete(CHECKOUT):
        return CHECKOUT
    return BUNDLE if _complete(BUNDLE) else None


def _complete(root: Path) -> bool:
    return (root / "deployments.yaml").is_file() and (root / "flows" / "retrain.py").is_file()


def required_root() -> Path:
    """`shipped_root()`, or an error that says what is missing and how to mend it.

    Raises:
        LakeloopError: this lakeloop carries no flows (a broken install).
    """
    root = shipped_root()
    if root is None:
        raise LakeloopError(f"this lakeloop ({PACKAGE}) has no deployments.yaml and flows/, neither in a checkout "
                            f"nor in {BUNDLE}: reinstall it (`pip install --force-reinstall lakeloop`)")
    return root


def add_to_path() -> Path:
    """Make lakeloop's own `flows`, `tasks` and `blocks` importable in this process (first on sys.path, so
    they win over any other package of those names); returns the folder. The CLI calls it; call it
    before `from flows.retrain import retrain` in a Python session of an installed lakeloop.

    Raises:
        LakeloopError: this lakeloop carries no flows (a broken install).
    """
    root = required_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root
