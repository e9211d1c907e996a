"""Batch validation with pandera (every failure collected) and PII pseudonymisation."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import pandas as pd
import pandera.errors
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc

_SAMPLES = 5
# What `redact` removes from free text: e-mail addresses and card-like digit runs (13-19 digits).
EMAIL_RE = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
CARD_RE = r"\b(?:\d[ -]?){13,19}\b"


@dataclass
class Failure:
    """One failed check: which column, which check, how many rows, a few examples."""

    column: str
    check: str
    count: int
    rows: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    role: str = ""  # "the label column", when it is

    def describe(self) -> str:
        if self.check == "column_in_dataframe":
            return f"missing column {self.column!r}" + (f" ({self.role})" if self.role else "")
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
        if self.failures[0].check == "unreadable":
            return self.failures[0].examples[0]  # already says which file, what is wrong, what to do
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


def validate_batch(frame: pd.DataFrame, model: type[pa.DataFrameModel] | pa.DataFrameSchema, source: str,
                   workers: int | None = None, *, sensitive: Collection[str] = (),
                   label: str | None = None) -> ValidationReport:
    """Validate with every failure collected (pandera lazy mode), never raising on bad data.

    Large frames are validated column group by column group on `workers` threads (default: the
    CPU count, at most 4): pandera runs every check as usual, and the string checks, which
    dominate, run in pyarrow kernels that release the GIL. The input frame is never modified.
    Values of `sensitive` columns (a project's PII) never appear in the report; failures of the
    `label` column are named as the label's.
    """
    schema = model if isinstance(model, pa.DataFrameSchema) else model.to_schema()
    name = schema.name or getattr(model, "__name__", "the schema")
    report = ValidationReport(source=source, schema=name, rows=len(frame))
    if frame.empty:
        report.failures.append(Failure("*", "empty_batch", 0))
        return report
    workers = workers or min(os.cpu_count() or 1, 4)
    if workers < 2 or len(frame) < _PARALLEL_FROM_ROWS or schema.checks:
        cases = [_failure_cases(schema, frame)]
    else:
        extra = [c for c in frame.columns if c not in schema.columns] if schema.strict else []
        report.failures += [Failure(str(c), "column_in_schema", 0) for c in extra]
        with ThreadPoolExecutor(workers) as pool:
            cases = list(pool.map(lambda names: _failure_cases(_subschema(schema, names), frame),
                                  _partition(schema, workers)))
    found = [c for c in cases if c is not None]
    if found:
        report.failures += _failures(pd.concat(found, ignore_index=True), set(sensitive))
    for failure in report.failures:
        if failure.column == label:
            failure.role = "the label column"
    return report


_PARALLEL_FROM_ROWS = 100_000


def _failure_cases(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame | None:
    # a shallow copy (copy-on-write) lets pandera coerce in place without touching the caller's frame
    subset = frame.copy(deep=False) if schema.strict else frame[[c for c in schema.columns if c in frame]]
    try:
        schema.validate(subset, lazy=True, inplace=True)
    except pandera.errors.SchemaErrors as exc:
        return exc.failure_cases
    return None


def _subschema(schema: pa.DataFrameSchema, names: list[str]) -> pa.DataFrameSchema:
    sub = schema.remove_columns([c for c in schema.columns if c not in names])
    sub.strict = False  # extra columns are reported once, by the caller
    return sub


def _partition(schema: pa.DataFrameSchema, parts: int) -> list[list[str]]:
    """Spread columns over `parts` groups of about equal cost (string and uniqueness checks cost most)."""
    def cost(column) -> float:
        total = 1.0 + 8.0 * bool(column.unique)
        for check in column.checks:
            if check.name in ("str_matches", "str_contains"):
                total += 8.0
            elif check.name.startswith(("greater", "less", "in_range", "isin", "str_length", "equal")):
                total += 0.5
            else:  # a custom check: usually a string scan
                total += 4.0
        return total

    groups: list[list[str]] = [[] for _ in range(parts)]
    loads = [0.0] * parts
    for name, column in sorted(schema.columns.items(), key=lambda item: -cost(item[1])):
        target = loads.index(min(loads))
        groups[target].append(name)
        loads[target] += cost(column)
    return [g for g in groups if g]


def _failures(cases: pd.DataFrame, sensitive: set[str]) -> list[Failure]:
    failures = []
    cases = cases.assign(column=cases["column"].fillna("*").astype(str), check=cases["check"].astype(str))
    for (column, check), group in cases.groupby(["column", "check"], sort=False):
        if check in ("column_in_dataframe", "column_in_schema"):
            for name in group["failure_case"].astype(str).unique():
                failures.append(Failure(name, check, 0))
            continue
        index = pd.to_numeric(group["index"], errors="coerce").dropna().astype(int)
        values = group["failure_case"].head(_SAMPLES)
        examples = ["<redacted>" if column in sensitive else repr(v)[:40] for v in values]
        failures.append(Failure(column, check, len(group), index.head(_SAMPLES).tolist(), examples))
    return failures


def pseudonym(value: str, key: bytes) -> str:
    """Keyed BLAKE2b (a PRF, like HMAC, at a quarter of HMAC-SHA256's cost per short value)."""
    return "pii_" + hashlib.blake2b(value.encode(), key=key[:64], digest_size=16).hexdigest()


def pseudonymise(frame: pd.DataFrame, key: bytes, pii: Mapping[str, str]) -> pd.DataFrame:
    """Apply each PII column's treatment: keyed pseudonyms (keyed BLAKE2b), dropped, or PII in free text redacted.

    `pii` maps column → pseudonymise | drop | redact (a project's `pii`). The same value under the same key
    always gives the same pseudonym, so joins and per-customer features still work; without the key (in
    Vault) the raw value cannot be recovered. Missing values stay missing.
    """
    out = frame.drop(columns=[c for c, t in pii.items() if t == "drop" and c in frame])
    for column in (c for c, t in pii.items() if t == "pseudonymise"):
        if column in out:
            missing = out[column].isna()
            # hash each distinct value once; build the column as an Arrow string array (no Python objects)
            values = pyarrow.array(out[column].astype("str").array)
            if isinstance(values, pyarrow.ChunkedArray):
                values = values.combine_chunks()
            encoded = pc.dictionary_encode(values)
            hashed = pyarrow.array([pseudonym(v, key) for v in encoded.dictionary.to_pylist()], pyarrow.string())
            out[column] = pd.Series(pd.arrays.ArrowStringArray(hashed.take(encoded.indices)),
                                    index=out.index, dtype="str")
            if missing.any():
                out.loc[missing, column] = None
    for column in (c for c, t in pii.items() if t == "redact"):
        if column in out:
            text = out[column]
            out[column] = text.str.replace(EMAIL_RE, "<redacted>", regex=True).str.replace(
                CARD_RE, "<redacted>", regex=True)
    return out
