"""Block types register with the real Prefect CLI and never hold a secret value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from prefect.settings import PREFECT_API_URL

from blocks import LakeFSConnection, VaultConnection

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_block_register(prefect_api):
    api = PREFECT_API_URL.value()
    result = subprocess.run([sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PREFECT_API_URL": api})
    assert result.returncode == 0, result.stdout + result.stderr
    slugs = {t["slug"] for t in httpx.post(f"{api}/block_types/filter", json={}).json()}
    assert {"lakeloop-vault-connection", "lakeloop-lakefs-connection"} <= slugs


def test_saved_blocks_hold_references_not_secrets(data_blocks, vault, lakefs_server):
    api = PREFECT_API_URL.value()
    documents = httpx.post(f"{api}/block_documents/filter", json={"include_secrets": True}).json()
    stored = json.dumps([d["data"] for d in documents])
    creds = json.loads(vault.credentials["pipeline"].read_text())
    for secret in (lakefs_server.secret_access_key, creds["secret_id"], creds["role_id"], vault.root_token):
        assert secret not in stored
    loaded = LakeFSConnection.load(data_blocks)
    assert loaded.vault.secret_id_ref.startswith("file:")
    client = loaded.client()  # the keys are fetched from Vault only now
    assert client.config.username == lakefs_server.access_key_id
    assert isinstance(loaded.vault, VaultConnection)
