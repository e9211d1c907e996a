"""VaultConnection: where Vault is and how to log in. Credentials are references, not values."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from lakeloop.secrets import VaultClient, VaultSettings


class VaultConnection(Block):
    """Connection to HashiCorp Vault or OpenBao (token, AppRole or Kubernetes auth)."""

    _block_type_name = "lakeloop Vault Connection"
    _block_type_slug = "lakeloop-vault-connection"
    _description = "Where Vault is and how lakeloop logs in. Holds references to credentials, never values."

    address: str = Field(description="Vault address, e.g. https://vault.example.com:8200.")
    auth_method: Literal["token", "approle", "kubernetes"] = Field(
        "approle", description="How to log in: token, approle or kubernetes.")
    tls_verify: bool = Field(True, description="Verify the server's TLS certificate.")
    ca_cert_path: str | None = Field(None, description="Path of a CA bundle to verify the server with.")
    namespace: str | None = Field(None, description="Vault Enterprise / OpenBao namespace, if any.")
    token_ref: str = Field("env:VAULT_TOKEN", description="Where the token is, for token auth "
                           "('env:NAME', 'file:PATH' or 'file:PATH#KEY').")
    role_id_ref: str = Field("env:VAULT_ROLE_ID", description="Where the AppRole role-id is.")
    secret_id_ref: str = Field("env:VAULT_SECRET_ID", description="Where the AppRole secret-id is.")
    approle_mount: str = Field("approle", description="Mount path of the AppRole auth method.")
    kubernetes_role: str | None = Field(None, description="Vault role to log in as with Kubernetes auth.")
    kubernetes_jwt_path: str = Field("/var/run/secrets/kubernetes.io/serviceaccount/token",
                                     description="The pod's service-account token file.")
    kubernetes_mount: str = Field("kubernetes", description="Mount path of the Kubernetes auth method.")
    kv_mount: str = Field("secret", description="Mount path of the KV v2 secrets engine.")
    transit_mount: str = Field("transit", description="Mount path of the transit secrets engine.")

    def settings(self) -> VaultSettings:
        return VaultSettings(**self.model_dump(include=set(VaultSettings.model_fields)))

    def client(self) -> VaultClient:
        """A Vault client that logs in on first use and renews its token by itself."""
        return VaultClient(self.settings())
