"""Secrets from Vault (HashiCorp Vault or OpenBao) through hvac."""

from lakeloop.errors import SecretNotFoundError
from lakeloop.secrets._client import VaultClient, VaultSettings, resolve_reference

# Where lakeloop keeps its secrets in KV v2 (paths under the kv mount).
LAKEFS_PATH = "lakeloop/lakefs"
PII_PATH = "lakeloop/pii"
WEBHOOK_PATH = "lakeloop/webhook"
SERVING_PATH = "lakeloop/serving"
MODEL_SIGNING_KEY = "lakeloop-models"



def parse_api_keys(text: str) -> list[str]:
    """A list of API keys as Vault (`api_keys`) and LAKELOOP_API_KEYS hold it: comma-separated, spaces and
    empty entries ignored, in order (the first is the one lakeloop's own clients use)."""
    return [key.strip() for key in text.split(",") if key.strip()]


def serving_keys(vault: VaultClient) -> list[str]:
    """The model server's API keys from Vault (secret/lakeloop/serving, key `api_keys`).

    Raises:
        SecretNotFoundError: the secret or its key is missing, or it holds no key.
    """
    keys = parse_api_keys(vault.read_key(SERVING_PATH, "api_keys"))
    if not keys:
        raise SecretNotFoundError(f"secret {vault.settings.kv_mount}/{SERVING_PATH} key 'api_keys' holds no key: "
                                  "put one or more comma-separated keys there", path=SERVING_PATH, key="api_keys")
    return keys


__all__ = ["LAKEFS_PATH", "MODEL_SIGNING_KEY", "PII_PATH", "SERVING_PATH", "WEBHOOK_PATH", "VaultClient",
           "VaultSettings", "parse_api_keys", "resolve_reference", "serving_keys"]
