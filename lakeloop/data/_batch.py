"""Reading an incoming batch file (parquet or CSV) with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lakeloop.errors import DataValidationError

BATCH_FORMATS = ("parquet", "csv")
_PARQUET_MAGIC = b"PAR1"


def detect_format(path: Path) -> str:
    """'parquet' or 'csv', judged by content first, then extension."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if head.startswith(_PARQUET_MAGIC):
        if tail != _PARQUET_MAGIC or size < 12:
            raise DataValidationError(f"{path}: truncated or corrupt parquet file (no parquet footer); "
                                      "re-export the batch and ingest it again", path=str(path))
        return "parquet"
    if path.suffix.lower() in (".csv", ".txt") or path.suffix == "":
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataValidationError(f"{path}: not a parquet or UTF-8 CSV file; lakeloop ingests "
                                      "parquet or CSV", path=str(path)) from exc
        return "csv"
    raise DataValidationError(f"{path}: {path.suffix or 'this'} file is neither parquet nor CSV; lakeloop "
                              "ingests parquet or CSV", path=str(path))


def read_batch(path: str | Path) -> pd.DataFrame:
    """Read a batch file into a frame, or raise DataValidationError naming the file and the fault."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: no such file", path=str(path))
    kind = detect_format(path)
    try:
        if kind == "parquet":
            # self_destruct frees each Arrow column as soon as it is converted: a lower peak
            return pq.read_table(path).to_pandas(self_destruct=True, split_blocks=True)
        return pd.read_csv(path)
    except (pa.ArrowException, OSError, ValueError, pd.errors.ParserError) as exc:
        detail = str(exc).splitlines()[0][:200]
        raise DataValidationError(f"{path}: cannot read as {kind} ({detail}); re-export the batch and "
                                  "ingest it again", path=str(path)) from exc
