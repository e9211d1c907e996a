"""The inference log's writer (`InferenceLogger` into a `DirectorySink`): what is recorded comes back
from parquet exactly, strings included (dictionary-encoded in memory, plain strings on disk), across
segment boundaries and conversions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from lakeloop.serving import DirectorySink, InferenceLogger
from lakeloop.serving._logs import SEGMENT_ROWS


def test_recorded_rows_come_back_exactly(tmp_path):
    rng = np.random.default_rng(3)
    logger = InferenceLogger(DirectorySink(tmp_path), interval=3600)
    sent = []
    # a single row, a batch larger than a segment (a segment of its own), rows after it, and a
    # conversion in between: codes must never leak from one conversion or segment into another
    for i, rows in enumerate([1, SEGMENT_ROWS + 5, 7, 1, 300]):
        unique = np.array([f"id-{i}-{r}" for r in range(rows)], dtype=object)  # every value new
        few = np.array(rng.choice(["", "ä-ß", "🙂", "shop", "travel"], rows), dtype=object)
        amount = rng.standard_normal((rows, 1)).astype(np.float32)
        scores = rng.random((rows, 3)).astype(np.float32)
        label = np.array(rng.choice(["a", "b"], rows), dtype=object)
        logger.record("m", "1", rows, {"id": unique.reshape(rows, 1), "kind": few.reshape(rows, 1), "amount": amount},
                      {"scores": scores, "label": label})
        sent.append((unique, few, amount.ravel(), scores, label))
        if i == 2:
            logger._convert()  # what the writer thread does every 50 ms
    assert logger.flush() == sum(len(s[0]) for s in sent)
    table = ds.dataset([str(p) for p in tmp_path.rglob("*.parquet")]).to_table()
    assert table.schema.field("id").type == pa.string() and table.schema.field("output_label").type == pa.string()
    got = table.to_pydict()  # one object, rows in recording order
    unique, few, amount, scores, label = (np.concatenate(parts) for parts in zip(*sent, strict=True))
    assert got["id"] == unique.tolist()
    assert got["kind"] == few.tolist()
    assert got["output_label"] == label.tolist()
    np.testing.assert_array_equal(np.asarray(got["amount"], np.float32), amount)
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(got[f"output_scores_{k}"], np.float32), scores[:, k])
    assert set(got["model_version"]) == {"1"}
