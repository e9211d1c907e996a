"""The fraud example project the benchmarks measure on (examples/fraud): its project, generator and schema."""

from __future__ import annotations

from pathlib import Path

from lakeloop.project import project_module, resolve_project

FRAUD = resolve_project(Path(__file__).resolve().parents[1] / "examples" / "fraud")
_generate = project_module(FRAUD, "generate")
_schema = project_module(FRAUD, "transactions")
generate_transactions = _generate.generate_transactions
DRIFTED = _generate.DRIFTED
RawTransactionsSchema = _schema.RawTransactionsSchema
CATEGORIES, CHANNELS, COUNTRIES = _schema.CATEGORIES, _schema.CHANNELS, _schema.COUNTRIES
EMAIL_RE, FREE_TEXT_PII_RE = _schema.EMAIL_RE, _schema.FREE_TEXT_PII_RE
