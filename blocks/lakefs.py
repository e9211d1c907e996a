"""LakeFSConnection: a lakeFS endpoint whose keys live in Vault."""

from __future__ import annotations

import lakefs
from prefect.blocks.core import Block
from pydantic import Field

from blocks.vault import VaultConnection
from lakeloop.data import lakefs_client
from lakeloop.registry import Registry, VaultSigner
from lakeloop.secrets import LAKEFS_PATH


class LakeFSConnection(Block):
    """A lakeFS server; its access keys are read from Vault KV v2 at run time."""

    _block_type_name = "lakeloop lakeFS Connection"
    _block_type_slug = "lakeloop-lakefs-connection"
    _description = "A lakeFS endpoint. Its access keys are fetched from Vault when a task runs."

    endpoint: str = Field(description="lakeFS URL, e.g. https://lakefs.example.com (no /api/v1).")
    vault: VaultConnection = Field(description="The Vault that holds the access keys.")
    credentials_path: str = Field(LAKEFS_PATH, description="KV v2 path of the secret holding "
                                  "access_key_id and secret_access_key.")
    credentials_version: int | None = Field(None, description="Pin a KV version; latest when empty.")

    def client(self) -> lakefs.Client:
        """An SDK client authenticated with keys read from Vault now."""
        return lakefs_client(self.endpoint, self.vault.client(), self.credentials_path,
                             self.credentials_version)

    def registry(self, repository: str, storage_namespace: str | None = None) -> Registry:
        """The model registry in `repository`, signing and verifying with this block's Vault."""
        vault = self.vault.client()
        client = lakefs_client(self.endpoint, vault, self.credentials_path, self.credentials_version)
        return Registry(client, repository, VaultSigner(vault), storage_namespace)
