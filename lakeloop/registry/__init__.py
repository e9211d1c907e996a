"""Model versions, aliases and lineage manifests, stored in lakeFS and signed with Vault transit."""

from lakeloop.registry._registry import ALIASES, ModelVersion, Registry, VaultSigner, canonical

__all__ = ["ALIASES", "ModelVersion", "Registry", "VaultSigner", "canonical"]
