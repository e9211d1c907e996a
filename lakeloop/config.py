"""Typed options. Per-run options are pydantic models passed as flow parameters (Prefect validates
them and the UI builds its run form from them); process settings come from `LAKELOOP_*` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DataConfig(BaseModel):
    """Where the versioned data lives and how to reach it."""

    repository: str = Field("lakeloop-data", description="lakeFS repository of the dataset.")
    branch: str = Field("main", description="Published branch: only validated data is merged here.")
    prefix: str = Field("transactions", description="Path prefix of the dataset's parquet parts.")
    storage_namespace: str = Field("local://lakeloop/data",
                                   description="Storage namespace used if the repository must be created.")
    lakefs_block: str = Field("lakeloop-lakefs", description="Name of the LakeFSConnection block to use.")


class Settings(BaseSettings):
    """Process settings (environment variables with the LAKELOOP_ prefix)."""

    model_config = SettingsConfigDict(env_prefix="LAKELOOP_")

    state_dir: Path = Field(Path(".lakeloop"), description="State directory of the embedded stack.")
