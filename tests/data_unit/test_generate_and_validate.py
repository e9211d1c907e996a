"""Unit tests of the generator, the schemas and the validation report (no servers)."""

from __future__ import annotations

import pandas as pd

from lakeloop.data import ValidationReport, pseudonymise, validate_batch
from tests._examples import (
    FRAUD_PII,
    FRAUD_SENSITIVE,
    DriftKnobs,
    PublishedTransactionsSchema,
    RawTransactionsSchema,
    generate_transactions,
)


def test_generator_is_seeded_and_valid():
    a, b = generate_transactions(2_000, seed=3), generate_transactions(2_000, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate_transactions(2_000, seed=4))
    assert validate_batch(a, RawTransactionsSchema, "seed3").passed
    assert 0.005 < a["is_fraud"].mean() < 0.1  # imbalanced, but present


def test_drift_knobs_shift_the_distribution():
    base = generate_transactions(20_000, seed=1)
    drifted = generate_transactions(20_000, seed=1, drift=DriftKnobs(
        amount_shift=1.0, distance_scale=3.0, new_categories=("crypto",), new_category_share=0.1))
    assert drifted["amount"].median() > 2 * base["amount"].median()
    assert drifted["distance_from_home_km"].mean() > 2.5 * base["distance_from_home_km"].mean()
    assert 0.08 < (drifted["merchant_category"] == "crypto").mean() < 0.12
    report = validate_batch(drifted, RawTransactionsSchema, "drifted")  # unknown category is caught
    assert [f.column for f in report.failures] == ["merchant_category"]


def test_parallel_and_serial_validation_agree():
    frame = generate_transactions(120_000, seed=2)  # above the threshold for column-group threads
    frame.loc[frame.index[[3, 50_000]], "amount"] = -1.0
    frame.loc[frame.index[7], "customer_email"] = "not-an-email"
    frame = frame.assign(unexpected=1).drop(columns=["channel"])
    serial = validate_batch(frame, RawTransactionsSchema, "x", workers=1)
    parallel = validate_batch(frame, RawTransactionsSchema, "x", workers=2)
    describe = lambda r: sorted(f.describe() for f in r.failures)  # noqa: E731
    assert describe(serial) == describe(parallel)
    assert len(serial.failures) == 4
    assert "unexpected" in frame.columns and "channel" not in frame.columns  # the input is untouched


def test_pseudonyms_are_keyed_stable_and_valid():
    frame = generate_transactions(500, seed=8)
    one, again, other = (pseudonymise(frame, k, FRAUD_PII) for k in (b"a" * 32, b"a" * 32, b"b" * 32))
    assert one["customer_email"].equals(again["customer_email"])
    assert not one["customer_email"].equals(other["customer_email"])
    same_customer = frame["customer_email"] == frame["customer_email"].iloc[0]
    assert one.loc[same_customer, "customer_email"].nunique() == 1  # joins still work
    assert validate_batch(one, PublishedTransactionsSchema, "published").passed
    assert frame["customer_email"].str.contains("@").all()  # the input is untouched


def test_report_renders_without_pii():
    frame = generate_transactions(50, seed=1)
    frame.loc[frame.index[2], "merchant_note"] = "card 4111 1111 1111 1111"
    report = validate_batch(frame, RawTransactionsSchema, "notes.csv", sensitive=FRAUD_SENSITIVE)
    assert not report.passed
    for text in (report.summary(), report.to_markdown(), report.to_json()):
        assert "4111" not in text
    assert "| merchant_note | no_pii_in_free_text | 1 | 2 | <redacted> |" in report.to_markdown()
    empty = ValidationReport.unreadable("x.bin", "x.bin: not parquet")
    assert empty.summary() == "x.bin: not parquet" and not empty.passed
