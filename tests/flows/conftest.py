"""Fixtures for flow tests: a fresh data repository with one published batch."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from flows.ingest import IngestResult, ingest_data
from lakeloop.config import DataConfig
from tests._examples import FRAUD_DIR, generate_transactions


@pytest.fixture
def publish(tmp_path, data_blocks, lakefs_server) -> Callable[[int, int], tuple[DataConfig, IngestResult]]:
    """publish(rows, seed) → (config of a new repository, the ingest result of one generated batch)."""

    def _publish(rows: int, seed: int) -> tuple[DataConfig, IngestResult]:
        name = f"p-{uuid.uuid4().hex[:10]}"
        data = DataConfig(repository=name, storage_namespace=f"{lakefs_server.namespace_prefix}/{name}")
        batch = tmp_path / f"batch-{seed}.parquet"
        generate_transactions(rows, seed=seed).to_parquet(batch)
        return data, ingest_data(str(batch), project=FRAUD_DIR, data=data)

    return _publish


@pytest.fixture
def registry_for(lakefs_server, vault) -> Callable:
    """registry_for(data) → (RegistryConfig, Registry) of a fresh registry beside that data repository;
    the Registry signs with the pipeline's AppRole, as the register-model flow does."""
    from lakeloop.config import RegistryConfig
    from lakeloop.registry import Registry, VaultSigner
    from lakeloop.secrets import VaultClient, VaultSettings

    def _registry_for(data: DataConfig) -> tuple[RegistryConfig, Registry]:
        name = f"{data.repository}-models"
        config = RegistryConfig(repository=name, storage_namespace=f"{lakefs_server.namespace_prefix}/{name}")
        signer = VaultSigner(VaultClient(VaultSettings(address=vault.address, **vault.approle("pipeline"))))
        return config, Registry(lakefs_server.client(), name, signer, config.storage_namespace)

    return _registry_for
