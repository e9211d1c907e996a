"""Feature columns and the packed graph inputs of a lakeloop ONNX model (numpy only: serving imports it).

A lakeloop model packs its features into at most two graph inputs, `numbers` [N, K] and `categories`
[N, C], because ONNX Runtime spends ~2 µs feeding each input: one input per feature made a
64-feature model slower than torch. Its `lakeloop.inputs` metadata names the columns each input packs,
in order; clients still send (and logs still hold) one [N, 1] tensor per feature column.
"""

from __future__ import annotations

import json

import numpy as np

INPUTS_KEY = "lakeloop.inputs"


def packing_of(metadata: dict[str, str]) -> dict[str, list[str]]:
    """Graph input → the feature columns it packs ({} for a model that takes its inputs as they are)."""
    raw = metadata.get(INPUTS_KEY)
    return {str(k): [str(c) for c in v] for k, v in json.loads(raw).items()} if raw else {}


def pack(columns: dict[str, np.ndarray], packing: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Per-column [N, 1] arrays as the graph inputs that pack them; inputs no packing claims pass as they are."""
    if not packing:
        return columns
    feeds = {name: columns[names[0]] if len(names) == 1 else np.concatenate([columns[c] for c in names], axis=1)
             for name, names in packing.items()}
    if len(columns) > sum(map(len, packing.values())):
        claimed = {c for names in packing.values() for c in names}
        feeds.update((name, value) for name, value in columns.items() if name not in claimed)
    return feeds
