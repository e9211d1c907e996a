"""Secrets from Vault (HashiCorp Vault or OpenBao) through hvac."""

from lakeloop.secrets._client import VaultClient, VaultSettings, resolve_reference

# Where lakeloop keeps its secrets in KV v2 (paths under the kv mount).
LAKEFS_PATH = "lakeloop/lakefs"
PII_PATH = "lakeloop/pii"
WEBHOOK_PATH = "lakeloop/webhook"
SERVING_PATH = "lakeloop/serving"
MODEL_SIGNING_KEY = "lakeloop-models"

__all__ = ["LAKEFS_PATH", "MODEL_SIGNING_KEY", "PII_PATH", "SERVING_PATH", "WEBHOOK_PATH", "VaultClient",
           "VaultSettings", "resolve_reference"]
