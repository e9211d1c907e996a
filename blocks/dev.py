"""Blocks for the embedded stack: what `lakeloop dev up` saves so flows find lakeFS and Vault."""

from __future__ import annotations

from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.lakefs import LakeFSConnection
from blocks.vault import VaultConnection

DEFAULT_LAKEFS_BLOCK = "lakeloop-lakefs"


def save_dev_blocks(api_url: str, lakefs_url: str, vault_url: str, approle_file: Path,
                    name: str = DEFAULT_LAKEFS_BLOCK) -> None:
    """Register the block types and save the LakeFSConnection the flows load by default.

    The Vault connection logs in with the pipeline's AppRole, whose ids it reads from the 0600
    file `dev up` wrote: the block holds the file reference, never the ids themselves.
    """
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        VaultConnection.register_type_and_schema()
        LakeFSConnection.register_type_and_schema()
        vault = VaultConnection(address=vault_url, auth_method="approle",
                                role_id_ref=f"file:{approle_file}#role_id",
                                secret_id_ref=f"file:{approle_file}#secret_id")
        LakeFSConnection(endpoint=lakefs_url, vault=vault).save(name, overwrite=True)
