"""Typed per-run options: pydantic models passed as flow parameters, so Prefect validates them and
the UI builds its run form from them. (Process settings are CLI options with `LAKELOOP_*` variables.)"""

from __future__ import annotations

from pydantic import BaseModel, Field


class DataConfig(BaseModel):
    """Where the versioned data lives and how to reach it."""

    repository: str = Field("lakeloop-data", description="lakeFS repository of the dataset.")
    branch: str = Field("main", description="Published branch: only validated data is merged here.")
    prefix: str = Field("transactions", description="Path prefix of the dataset's parquet parts.")
    storage_namespace: str | None = Field(
        None, description="Storage namespace used if the repository must be created "
                          "(default local://lakeloop/<repository>; e.g. s3://bucket/path on a real lakeFS).")
    lakefs_block: str = Field("lakeloop-lakefs", description="Name of the LakeFSConnection block to use.")

    def namespace(self) -> str:
        """The storage namespace to create the repository with."""
        return self.storage_namespace or f"local://lakeloop/{self.repository}"
