"""The fraud example's schema: card transactions with an imbalanced fraud label and PII columns.

`RawTransactionsSchema` (named in lakeloop.yaml) is what a batch must look like when it arrives;
lakeloop derives what `main` holds from the project's PII treatments (pseudonyms in place of raw
values). `PublishedTransactionsSchema` spells that variant out for readers and tests.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import DataFrame, Series

CATEGORIES = ("grocery", "electronics", "travel", "restaurants", "fuel", "fashion", "entertainment",
              "health")
COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "AU", "JP")
CHANNELS = ("online", "in_store", "mobile")
EMAIL_RE = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
CARD_RE = r"\b(?:\d[ -]?){13,19}\b"
PSEUDONYM_RE = r"^pii_[0-9a-f]{32}$"
FREE_TEXT_PII_RE = f"{EMAIL_RE}|{CARD_RE}"


class TransactionsSchema(pa.DataFrameModel):
    """Columns every stage shares. Strict (no extra columns) and coercing."""

    transaction_id: Series[str] = pa.Field(unique=True, str_length={"min_value": 1, "max_value": 64})
    event_time: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})
    amount: Series[float] = pa.Field(ge=0.0, le=50_000.0)
    merchant_category: Series[str] = pa.Field(isin=list(CATEGORIES))
    country: Series[str] = pa.Field(isin=list(COUNTRIES))
    channel: Series[str] = pa.Field(isin=list(CHANNELS))
    customer_age: Series[int] = pa.Field(ge=18, le=110)
    account_age_days: Series[int] = pa.Field(ge=0, le=40_000)
    distance_from_home_km: Series[float] = pa.Field(ge=0.0, le=20_000.0)
    transactions_last_24h: Series[int] = pa.Field(ge=0, le=1_000)
    merchant_note: Series[str] = pa.Field(str_length={"max_value": 200}, nullable=True)  # optional text
    is_fraud: Series[int] = pa.Field(isin=[0, 1])

    class Config:
        strict = True
        coerce = True


class RawTransactionsSchema(TransactionsSchema):
    """A batch as it arrives: raw PII where PII belongs, and none in free text."""

    customer_email: Series[str] = pa.Field(str_matches=f"^{EMAIL_RE}$")
    card_number: Series[str] = pa.Field(str_length={"min_value": 13, "max_value": 19})

    @pa.check("card_number", name="digits_only")
    def _digits(cls, card: Series[str]) -> Series[bool]:
        """A card number is 13 to 19 digits (a vectorised isdigit beats a regex 5x)."""
        return card.str.isdigit()

    @pa.check("merchant_note", name="no_pii_in_free_text")
    def _no_pii(cls, note: Series[str]) -> Series[bool]:
        """Free text must hold no e-mail address or card number (one regex pass)."""
        return ~note.str.contains(FREE_TEXT_PII_RE, regex=True, na=False)


class PublishedTransactionsSchema(TransactionsSchema):
    """What `main` holds: PII columns are keyed pseudonyms (keyed BLAKE2b), never raw values."""

    customer_email: Series[str] = pa.Field(str_matches=PSEUDONYM_RE)
    card_number: Series[str] = pa.Field(str_matches=PSEUDONYM_RE)


PII_COLUMNS = ("customer_email", "card_number")
FREE_TEXT_COLUMNS = ("merchant_note",)
RawTransactions = DataFrame[RawTransactionsSchema]
PublishedTransactions = DataFrame[PublishedTransactionsSchema]
