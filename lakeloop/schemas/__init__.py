"""pandera DataFrameModels, one per dataset stage. PII columns are marked in `PII_COLUMNS`."""

from lakeloop.schemas.transactions import (
    CATEGORIES,
    CHANNELS,
    COUNTRIES,
    FREE_TEXT_COLUMNS,
    LABEL,
    PII_COLUMNS,
    SCHEMA_VERSION,
    PublishedTransactions,
    PublishedTransactionsSchema,
    RawTransactions,
    RawTransactionsSchema,
    TransactionsSchema,
)

__all__ = ["CATEGORIES", "CHANNELS", "COUNTRIES", "FREE_TEXT_COLUMNS", "LABEL", "PII_COLUMNS",
           "SCHEMA_VERSION", "PublishedTransactions", "PublishedTransactionsSchema", "RawTransactions",
           "RawTransactionsSchema", "TransactionsSchema"]
