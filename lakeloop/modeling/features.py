"""Features of the fraud model: which raw columns, how they are encoded, and the data split.

The same `FeatureSpec` drives the torch pipeline and (later) the ONNX preprocessing graph, so a
served model sees exactly what training saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from lakeloop.schemas import LABEL

NUMERIC = ("amount", "customer_age", "account_age_days", "distance_from_home_km", "transactions_last_24h")
LOG1P = ("amount", "distance_from_home_km")  # heavy-tailed: log1p before scaling
CATEGORICAL = ("merchant_category", "country", "channel")
UNKNOWN = 0  # index reserved for categories never seen in training
SPLIT_KEY = "0123456789abcdef"  # fixed: a row's split must never change between data versions


@dataclass(frozen=True)
class FeatureSpec:
    """Scaling statistics and vocabularies, fitted on the training split only."""

    numeric: tuple[str, ...]
    log1p: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categorical: tuple[str, ...]
    vocabularies: tuple[tuple[str, ...], ...]  # index i+1 for vocabulary[i]; 0 = unknown

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> FeatureSpec:
        raw = _numeric_matrix(frame, NUMERIC, LOG1P)
        std = raw.std(axis=0)
        return cls(NUMERIC, LOG1P, tuple(raw.mean(axis=0).tolist()), tuple(np.where(std > 0, std, 1.0).tolist()),
                   CATEGORICAL, tuple(tuple(sorted(frame[c].astype(str).unique())) for c in CATEGORICAL))

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows → (scaled float32 [N, numeric], category indices int64 [N, categorical])."""
        numeric = (_numeric_matrix(frame, self.numeric, self.log1p) - np.array(self.mean)) / np.array(self.std)
        codes = np.stack([_lookup(frame[c].astype(str).to_numpy(), vocab)
                          for c, vocab in zip(self.categorical, self.vocabularies, strict=True)], axis=1)
        return numeric.astype(np.float32), codes.astype(np.int64)

    @property
    def cardinalities(self) -> list[int]:
        return [len(v) + 1 for v in self.vocabularies]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        return cls(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                      for k, v in raw.items()})


def _numeric_matrix(frame: pd.DataFrame, columns: tuple[str, ...], log1p: tuple[str, ...]) -> np.ndarray:
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for i, column in enumerate(columns):
        values = frame[column].to_numpy(dtype=np.float64)
        out[:, i] = np.log1p(values) if column in log1p else values
    return out


def _lookup(values: np.ndarray, vocabulary: tuple[str, ...]) -> np.ndarray:
    index = pd.Index(vocabulary)
    codes = index.get_indexer(values)
    return np.where(codes >= 0, codes + 1, UNKNOWN)


def split_of(transaction_ids: pd.Series, test: float = 0.2, val: float = 0.1) -> np.ndarray:
    """'train', 'val' or 'test' per row from a keyed hash of the transaction id (stable forever)."""
    bucket = pd.util.hash_array(transaction_ids.astype(str).to_numpy(dtype=object), hash_key=SPLIT_KEY) % 10_000
    return np.where(bucket < test * 10_000, "test", np.where(bucket < (test + val) * 10_000, "val", "train"))


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL].to_numpy(dtype=np.float32)
