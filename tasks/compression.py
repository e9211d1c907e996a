"""Compression tasks: build and measure the candidates, publish the comparison table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lakeloop.compression import CompressionReport, compress
from lakeloop.compression.compress import table_markdown
from lakeloop.config import CompressionConfig
from lakeloop.modeling.run import record_lineage


@task(cache_policy=NO_CACHE)
def build_and_measure(workdir: str, frame: pd.DataFrame, compression: CompressionConfig) -> CompressionReport:
    """Export FP32, quantize, prune + fine-tune, distil; measure each on this CPU; gate; choose."""
    report = compress(Path(workdir), frame, compression)
    record_lineage(Path(workdir), compression={"config": compression.model_dump(), "chosen": report.chosen,
                                               "baseline": report.baseline, "table": report.table})
    return report


@task(cache_policy=NO_CACHE)
def publish_compression_report(report: CompressionReport) -> str:
    """The comparison table as a Prefect artifact (it is also in compression.json for the manifest)."""
    markdown = "# Compression candidates\n\n" + table_markdown(report)
    create_markdown_artifact(markdown=markdown, key="compress-model-candidates",
                             description=f"candidates of {Path(report.workdir).name}; chosen: {report.chosen}")
    return markdown
