"""The example projects the tests use, and their generators (examples/*/generate.py)."""

from __future__ import annotations

from pathlib import Path

from lakeloop.project import project_module, resolve_project

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FRAUD = resolve_project(EXAMPLES / "fraud")
DEMAND = resolve_project(EXAMPLES / "demand")
_fraud = project_module(FRAUD, "generate")
generate_transactions = _fraud.generate_transactions
DriftKnobs = _fraud.DriftKnobs
FRAUD_PII = FRAUD.pii_columns
FRAUD_SENSITIVE = frozenset(FRAUD_PII)
_schemas = project_module(FRAUD, "transactions")
RawTransactionsSchema = _schemas.RawTransactionsSchema
PublishedTransactionsSchema = _schemas.PublishedTransactionsSchema
FRAUD_DIR = str(EXAMPLES / "fraud")


def project_copy(folder: Path, source: Path = EXAMPLES / "fraud", **changes) -> Path:
    """A copy of an example project in `folder`, its lakeloop.yaml's top-level sections updated
    (e.g. `data={...}` for a test's repository and block, or `name=`): a user's project as a test needs it."""
    import shutil

    import yaml

    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    spec = yaml.safe_load((folder / "lakeloop.yaml").read_text())
    for key, value in changes.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    (folder / "lakeloop.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder
