"""Prefect Block types for lakeloop: connections that point into Vault, never hold secrets.

Register them with `prefect block register -m blocks`.
"""

from blocks.lakefs import LakeFSConnection
from blocks.vault import VaultConnection

__all__ = ["LakeFSConnection", "VaultConnection"]
