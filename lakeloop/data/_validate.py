"""Batch validation with pandera (every failure collected) and PII pseudonymisation."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field

import pandas as pd
import pandera.errors
import pandera.pandas as pa

from lakeloop.schemas import FREE_TEXT_COLUMNS, LABEL, PII_COLUMNS
from lakeloop.schemas.transactions import CARD_RE, EMAIL_RE

_SAMPLES = 5
_SENSITIVE = set(PII_COLUMNS) | set(FREE_TEXT_COLUMNS)


@dataclass
class Failure:
    """One failed check: which column, which check, how many rows, a few examples."""

    column: str
    check: str
    count: int
    rows: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.check == "column_in_dataframe":
            what = " (the label column)" if self.column == LABEL else ""
            return f"missing column {self.column!r}{what}"
        if self.check == "column_in_schema":
            return f"unexpected column {self.column!r} (not in the schema; drop or rename it)"
        if self.check == "empty_batch":
            return "the batch has no rows"
        if self.check == "unreadable":
            return self.examples[0]
        rows = ", ".join(map(str, self.rows)) + (" …" if self.count > len(self.rows) else "")
        examples = ", ".join(self.examples)
        check = self.check if len(self.check) <= 48 else self.check[:47] + "…])"
        return (f"column {self.column!r} failed {check} in {self.count} row(s) "
                f"(rows {rows}; values {examples})")


@dataclass
class ValidationReport:
    """Everything wrong with a batch, safe to store beside it: PII values are never included."""

    source: str
    schema: str
    rows: int
    failures: list[Failure] = field(default_factory=list)

    @classmethod
    def unreadable(cls, source: str, message: str) -> ValidationReport:
        """The report of a file that could not be read at all."""
        return cls(source=source, schema="a readable parquet or CSV file", rows=0,
                   failures=[Failure("*", "unreadable", 0, examples=[message])])

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """One line: what failed, where, and what to do."""
        if self.passed:
            return f"{self.source}: {self.rows} rows passed {self.schema}"
        first = self.failures[0].describe()
        more = f" (+{len(self.failures) - 1} more problem(s))" if len(self.failures) > 1 else ""
        return (f"{self.source}: {self.rows} rows failed {self.schema}: {first}{more}; fix the batch and "
                "ingest it again")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed, "summary": self.summary()}, indent=2)

    def to_markdown(self) -> str:
        lines = [f"# Validation report: {self.source}", "",
                 f"Schema `{self.schema}`, {self.rows} rows: **{'passed' if self.passed else 'FAILED'}**", ""]
        if self.failures:
            lines += ["| column | check | failing rows | example rows | example values |",
                      "| --- | --- | ---: | --- | --- |"]
            for f in self.failures:
                lines.append(f"| {f.column} | {f.check} | {f.count} | {', '.join(map(str, f.rows))} | "
                             f"{', '.join(f.examples)} |")
            lines += ["", "What to do: fix these problems in the source and ingest the batch again. "
                      "Nothing from this batch reached `main`."]
        return "\n".join(lines) + "\n"


def validate_batch(frame: pd.DataFrame, schema: type[pa.DataFrameModel], source: str) -> ValidationReport:
    """Validate with every failure collected (pandera lazy mode), never raising on bad data."""
    report = ValidationReport(source=source, schema=schema.__name__, rows=len(frame))
    if frame.empty:
        report.failures.append(Failure("*", "empty_batch", 0))
        return report
    try:
        schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        report.failures = _failures(exc.failure_cases)
    return report


def _failures(cases: pd.DataFrame) -> list[Failure]:
    failures = []
    cases = cases.assign(column=cases["column"].fillna("*").astype(str), check=cases["check"].astype(str))
    for (column, check), group in cases.groupby(["column", "check"], sort=False):
        if check in ("column_in_dataframe", "column_in_schema"):
            for name in group["failure_case"].astype(str).unique():
                failures.append(Failure(name, check, 0))
            continue
        index = pd.to_numeric(group["index"], errors="coerce").dropna().astype(int)
        values = group["failure_case"].head(_SAMPLES)
        examples = ["<redacted>" if column in _SENSITIVE else repr(v)[:40] for v in values]
        failures.append(Failure(column, check, len(group), index.head(_SAMPLES).tolist(), examples))
    return failures


def pseudonym(value: str, key: bytes) -> str:
    return "pii_" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def pseudonymise(frame: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """Replace PII columns with keyed pseudonyms and redact PII found in free text.

    The same value under the same key always gives the same pseudonym, so joins and per-customer
    features still work; without the key (in Vault) the raw value cannot be recovered.
    """
    out = frame.copy()
    for column in PII_COLUMNS:
        if column in out:
            codes, uniques = pd.factorize(out[column].astype(str))
            hashed = pd.Index([pseudonym(u, key) for u in uniques])
            out[column] = hashed.take(codes).to_numpy() if len(uniques) else out[column]
    for column in FREE_TEXT_COLUMNS:
        if column in out:
            text = out[column]
            out[column] = text.str.replace(EMAIL_RE, "<redacted>", regex=True).str.replace(
                CARD_RE, "<redacted>", regex=True)
    return out
