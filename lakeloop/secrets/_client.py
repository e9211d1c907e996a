"""Vault access through hvac: AppRole, Kubernetes or token login; KV v2 reads; token renewal.

Errors say what failed, where, and what to do, and never carry a secret value: they name paths,
key names and Vault addresses only.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import hvac
import hvac.exceptions
import requests
from pydantic import BaseModel, Field

from lakeloop.errors import (
    ConfigError,
    SecretNotFoundError,
    SecretsError,
    VaultPermissionError,
    VaultSealedError,
    VaultUnreachableError,
)

AuthMethod = Literal["token", "approle", "kubernetes"]
K8S_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
RENEW_WHEN_LEFT = 1 / 3  # renew once less than a third of the token's lifetime is left


def resolve_reference(ref: str, what: str) -> str:
    """Read a value that a block or setting points at, never stores.

    `env:NAME` reads an environment variable; `file:PATH` reads a file (stripped);
    `file:PATH#KEY` reads one key of a JSON file (what `lakeloop dev up` writes for AppRole).
    """
    kind, _, target = ref.partition(":")
    if kind == "env":
        value = os.environ.get(target)
        if not value:
            raise ConfigError(f"{what}: environment variable {target} is not set (reference {ref!r})")
        return value
    if kind == "file":
        path, _, key = target.partition("#")
        try:
            text = Path(path).expanduser().read_text()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {path} ({exc.strerror}); run `lakeloop dev up` or "
                              f"point the reference {ref!r} elsewhere") from exc
        if not key:
            return text.strip()
        try:
            return str(json.loads(text)[key])
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{what}: {path} has no JSON key {key!r}") from exc
    raise ConfigError(f"{what}: invalid reference {ref!r}: expected 'env:NAME', 'file:PATH' or "
                      "'file:PATH#KEY'")


class VaultSettings(BaseModel):
    """How to reach and log in to Vault. Holds references to credentials, never the values."""

    address: str = Field(description="Vault address, e.g. https://vault.example.com:8200.")
    auth_method: AuthMethod = Field("approle", description="token, approle or kubernetes.")
    tls_verify: bool = Field(True, description="Verify the server's TLS certificate.")
    ca_cert_path: str | None = Field(None, description="CA bundle to verify the server with.")
    namespace: str | None = Field(None, description="Vault Enterprise / OpenBao namespace.")
    token_ref: str = Field("env:VAULT_TOKEN", description="Where the token is (token auth).")
    role_id_ref: str = Field("env:VAULT_ROLE_ID", description="Where the AppRole role-id is.")
    secret_id_ref: str = Field("env:VAULT_SECRET_ID", description="Where the AppRole secret-id is.")
    approle_mount: str = Field("approle", description="Mount path of the AppRole auth method.")
    kubernetes_role: str | None = Field(None, description="Vault role for Kubernetes auth.")
    kubernetes_jwt_path: str = Field(K8S_TOKEN_PATH, description="Service-account token file.")
    kubernetes_mount: str = Field("kubernetes", description="Mount path of the Kubernetes auth method.")
    kv_mount: str = Field("secret", description="Mount path of the KV v2 secrets engine.")
    transit_mount: str = Field("transit", description="Mount path of the transit secrets engine.")


class VaultClient:
    """A logged-in Vault client that renews its token before it expires.

    Args:
        settings: where Vault is and how to log in.
    """

    def __init__(self, settings: VaultSettings) -> None:
        self.settings = settings
        verify: bool | str = settings.ca_cert_path or settings.tls_verify
        # token="" (not None): hvac would otherwise adopt an ambient token (VAULT_TOKEN, ~/.vault-token) and
        # this client would never log in with its configured credentials
        self._hvac = hvac.Client(url=settings.address, token="", verify=verify, namespace=settings.namespace,
                                 timeout=10)
        self._lock = threading.Lock()
        self._expires_at = 0.0
        self._lifetime = 0.0
        self._renewable = False
        self.renewals = 0
        self.logins = 0

    # -- login and renewal ------------------------------------------------------------------

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        address = self.settings.address
        try:
            yield
        except requests.exceptions.ConnectionError as exc:
            raise VaultUnreachableError(f"Vault at {address} is unreachable while {doing}: start it "
                                        "(`lakeloop dev up`) or fix the address", address=address) from exc
        except requests.exceptions.Timeout as exc:
            raise VaultUnreachableError(f"Vault at {address} timed out while {doing}",
                                        address=address) from exc
        except hvac.exceptions.VaultDown as exc:
            raise VaultSealedError(f"Vault at {address} is sealed (while {doing}): unseal it and retry",
                                   address=address) from exc
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
            raise VaultPermissionError(f"Vault denied {doing}: check the role's policy and credentials",
                                       address=address) from exc
        except hvac.exceptions.InvalidRequest as exc:
            # a failed AppRole/Kubernetes login answers 400 ("invalid role or secret ID")
            raise VaultPermissionError(f"Vault refused {doing}: {_first_error(exc)}",
                                       address=address) from exc
        except hvac.exceptions.VaultError as exc:
            raise SecretsError(f"Vault error while {doing}: {_first_error(exc)}", address=address) from exc

    def login(self) -> None:
        """Log in with the configured method; remembers when the token expires."""
        s = self.settings
        with self._errors(f"logging in with {s.auth_method}"):
            if s.auth_method == "token":
                self._hvac.token = resolve_reference(s.token_ref, "Vault token")
                auth = self._hvac.auth.token.lookup_self()["data"]
                ttl, renewable = auth.get("ttl") or 0, bool(auth.get("renewable"))
            elif s.auth_method == "approle":
                role_id = resolve_reference(s.role_id_ref, "AppRole role-id")
                secret_id = resolve_reference(s.secret_id_ref, "AppRole secret-id")
                auth = self._hvac.auth.approle.login(role_id, secret_id, mount_point=s.approle_mount)["auth"]
                ttl, renewable = auth["lease_duration"], auth["renewable"]
            else:
                if not s.kubernetes_role:
                    raise ConfigError("Kubernetes auth needs kubernetes_role (the Vault role to log in as)")
                jwt = resolve_reference(f"file:{s.kubernetes_jwt_path}", "Kubernetes service-account token")
                auth = self._hvac.auth.kubernetes.login(s.kubernetes_role, jwt,
                                                        mount_point=s.kubernetes_mount)["auth"]
                ttl, renewable = auth["lease_duration"], auth["renewable"]
        self.logins += 1
        self._set_expiry(ttl, renewable)

    def _set_expiry(self, ttl: int, renewable: bool) -> None:
        self._lifetime = float(ttl)
        self._expires_at = time.monotonic() + ttl if ttl else float("inf")
        self._renewable = renewable

    def ensure_token(self) -> None:
        """Log in if needed; renew when less than a third of the lifetime is left; re-login if that fails."""
        with self._lock:
            if not self._hvac.token:
                self.login()
                return
            left = self._expires_at - time.monotonic()
            if left > self._lifetime * RENEW_WHEN_LEFT:
                return
            if self._renewable and left > 1:
                try:
                    with self._errors("renewing the token"):
                        auth = self._hvac.auth.token.renew_self()["auth"]
                    self.renewals += 1
                    self._set_expiry(auth["lease_duration"], auth["renewable"])
                    if self._lifetime * RENEW_WHEN_LEFT < self._expires_at - time.monotonic():
                        return
                except (VaultPermissionError, SecretsError):
                    pass
            if self.settings.auth_method == "token":
                return  # nothing to log in again with; the next call reports the expiry
            self.login()

    @property
    def hvac(self) -> hvac.Client:
        """The logged-in hvac client, for operations this class does not wrap."""
        self.ensure_token()
        return self._hvac

    # -- KV v2 ------------------------------------------------------------------------------

    def read(self, path: str, version: int | None = None) -> dict[str, Any]:
        """Read a KV v2 secret (latest, or a pinned version). Returns its key/value data."""
        self.ensure_token()
        where = f"{self.settings.kv_mount}/{path}" + (f" (version {version})" if version else "")
        try:
            with self._errors(f"reading secret {where}"):
                response = self._hvac.secrets.kv.v2.read_secret_version(
                    path=path, version=version, mount_point=self.settings.kv_mount,
                    raise_on_deleted_version=True)
        except SecretsError as exc:
            if isinstance(exc.__cause__, hvac.exceptions.InvalidPath):
                raise SecretNotFoundError(f"secret {where} does not exist in Vault at "
                                          f"{self.settings.address}", path=path) from exc.__cause__
            raise
        return response["data"]["data"]

    def read_key(self, path: str, key: str, version: int | None = None) -> str:
        """One key of a KV v2 secret; a missing key names the keys that exist (never their values)."""
        data = self.read(path, version)
        if key not in data:
            raise SecretNotFoundError(f"secret {self.settings.kv_mount}/{path} has no key {key!r} "
                                      f"(keys: {', '.join(sorted(data)) or 'none'})", path=path, key=key)
        return str(data[key])


def _first_error(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None) or [str(exc)]
    return str(errors[0]).splitlines()[0][:200]
