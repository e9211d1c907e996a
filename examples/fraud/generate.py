"""The fraud example's data: a seeded generator of realistic card transactions, with drift knobs.

    lakeloop data generate transactions.parquet --project examples/fraud --rows 20000 [--seed 0]

`generate(rows, seed, drift)` is the example-project contract `lakeloop demo` and `lakeloop data
generate` use (drift: None, "traffic" for served rows that moved, "labelled" for a moved batch the
schema accepts); `broken(rows, seed)` is a batch the schema must quarantine.

The fraud label depends on the features (amount, distance from home, velocity, young accounts,
online channel, risky categories, age; a little on night-time, which the model does not see), so a
model has something real to learn; about 2% of rows are fraud.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from transactions import CATEGORIES, CHANNELS, COUNTRIES

_NOTES = ("", "contactless", "recurring", "online order", "refund pending", "tip included",
          "subscription", "in-app purchase")


@dataclass(frozen=True)
class DriftKnobs:
    """How far a generated batch departs from the reference distribution."""

    amount_shift: float = 0.0          # added to the mean of log(amount)
    amount_scale: float = 1.0          # multiplies the spread of log(amount)
    distance_scale: float = 1.0        # multiplies distances from home
    new_categories: tuple[str, ...] = field(default_factory=tuple)  # categories unseen in training
    new_category_share: float = 0.0
    fraud_rate_multiplier: float = 1.0


def generate_transactions(rows: int, seed: int = 0, start: dt.datetime | None = None,
                          drift: DriftKnobs | None = None) -> pd.DataFrame:
    """Make `rows` transactions; the same seed gives the same frame.

    Args:
        rows: number of rows.
        seed: random seed.
        start: time of the first transaction (UTC); rows span about a day per 100k rows.
        drift: optional distribution shift.

    Returns:
        A frame that satisfies `RawTransactionsSchema` (unless drift adds unknown categories).
    """
    drift = drift or DriftKnobs()
    rng = np.random.default_rng(seed)
    start = start or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    seconds = np.sort(rng.uniform(0, max(rows, 1) * 0.864, rows))
    event_time = pd.Timestamp(start) + pd.to_timedelta(seconds, unit="s")
    log_amount = rng.normal(3.6 + drift.amount_shift, 1.1 * drift.amount_scale, rows)
    amount = np.clip(np.round(np.exp(log_amount), 2), 0.01, 50_000.0)
    distance = np.clip(rng.exponential(12.0, rows) * drift.distance_scale, 0, 20_000.0)
    category = rng.choice(np.array(CATEGORIES), rows, p=[.24, .08, .06, .18, .14, .12, .1, .08])
    if drift.new_categories and drift.new_category_share > 0:
        mask = rng.random(rows) < drift.new_category_share
        category = category.astype(object)
        category[mask] = rng.choice(np.array(drift.new_categories), int(mask.sum()))
    country = rng.choice(np.array(COUNTRIES), rows, p=[.35, .12, .1, .09, .07, .06, .05, .07, .05, .04])
    channel = rng.choice(np.array(CHANNELS), rows, p=[.45, .4, .15])
    age = rng.integers(18, 90, rows)
    account_age = rng.integers(0, 9_000, rows)
    velocity = rng.poisson(2.0, rows)
    hour = ((seconds / 3600.0) % 24).astype(int)
    risky_category = np.isin(category, ("electronics", "travel", "fashion"))
    score = (-6.3 + 1.6 * (np.log(amount) - 3.6) + 2.5 * (distance > 40) + 0.4 * ((hour < 5) | (hour > 22))
             + 1.1 * (velocity > 4) + 2.2 * (account_age < 120) + 1.0 * (channel == "online")
             + 0.9 * risky_category - 0.015 * (age - 40))
    p_fraud = np.clip(1 / (1 + np.exp(-score)) * drift.fraud_rate_multiplier, 0, 1)
    label = (rng.random(rows) < p_fraud).astype(np.int64)
    ids = rng.integers(0, 2**63 - 1, rows, dtype=np.int64)
    customers = rng.integers(0, max(rows // 5, 1), rows)
    return pd.DataFrame({
        "transaction_id": [f"tx-{seed:04d}-{i:016x}" for i in ids],
        "event_time": event_time.as_unit("us"),
        "customer_email": [f"customer{c}@example.com" for c in customers],
        "card_number": [f"4{(c * 7919) % 10**15:015d}" for c in customers],
        "amount": amount,
        "merchant_category": category,
        "country": country,
        "channel": channel,
        "customer_age": age.astype(np.int64),
        "account_age_days": account_age.astype(np.int64),
        "distance_from_home_km": np.round(distance, 3),
        "transactions_last_24h": velocity.astype(np.int64),
        "merchant_note": rng.choice(np.array(_NOTES), rows),
        "is_fraud": label,
    })


# Traffic that has moved: bigger amounts, merchants further from home, a merchant category the model never saw.
DRIFTED = DriftKnobs(amount_shift=1.5, distance_scale=4.0, new_categories=("casino",), new_category_share=0.3)
# The labelled batch published after the drift: the same move, in categories the schema accepts.
NEW_DATA = DriftKnobs(amount_shift=1.0, distance_scale=3.0)
DRIFTS = {"traffic": DRIFTED, "labelled": NEW_DATA}
DESCRIPTIONS = {None: "card transactions", "traffic": "bigger amounts, farther from home, an unseen category",
                "labelled": "bigger amounts, farther from home"}


def generate(rows: int, seed: int = 0, drift: str | None = None) -> pd.DataFrame:
    """The example-project contract: `rows` rows, the same seed giving the same frame."""
    return generate_transactions(rows, seed=seed, drift=DRIFTS[drift] if drift else None)


def broken(rows: int, seed: int = 0) -> pd.DataFrame:
    """A batch the schema quarantines: ages under 18, an e-mail address in free text, an unknown category."""
    frame = generate_transactions(rows, seed=seed)
    frame.loc[frame.index[:3], "customer_age"] = 7
    frame.loc[frame.index[5], "merchant_note"] = "refund to jane.doe@example.org"
    frame.loc[frame.index[8:10], "merchant_category"] = "casino"
    return frame
