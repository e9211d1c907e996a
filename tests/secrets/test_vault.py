"""lakeloop.secrets against a real OpenBao server: logins, KV v2, renewal, and every error class."""

from __future__ import annotations

import base64
import json
import time

import hvac
import pytest

from lakeloop.devstack import _proc, bao
from lakeloop.errors import (
    ConfigError,
    SecretNotFoundError,
    VaultPermissionError,
    VaultSealedError,
    VaultUnreachableError,
)
from lakeloop.secrets import (
    LAKEFS_PATH,
    PII_PATH,
    SERVING_PATH,
    VaultClient,
    VaultSettings,
    parse_api_keys,
    serving_keys,
)
from tests._loopback import LoopbackServer

BOGUS_AMBIENT = "s.bogus-ambient-token"


@pytest.fixture(autouse=True)
def bogus_ambient_token(tmp_path, monkeypatch):
    """Every test here runs with an operator's stale token lying around (`vault login` leaves
    ~/.vault-token; shells export VAULT_TOKEN): configured credentials must win over both."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".vault-token").write_text(BOGUS_AMBIENT)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VAULT_TOKEN", BOGUS_AMBIENT)


def _client(vault, consumer: str = "pipeline", **overrides) -> VaultClient:
    return VaultClient(VaultSettings(address=vault.address, **{**vault.approle(consumer), **overrides}))


def test_approle_login_reads_kv_and_never_sees_root(vault, lakefs_server):
    client = _client(vault)
    keys = client.read(LAKEFS_PATH)
    assert keys == {"access_key_id": lakefs_server.access_key_id,
                    "secret_access_key": lakefs_server.secret_access_key}
    token = client.hvac.auth.token.lookup_self()["data"]
    assert "root" not in token["policies"] and "lakeloop-pipeline" in token["policies"]
    creds = json.loads(vault.credentials["pipeline"].read_text())
    assert set(creds) == {"role_id", "secret_id"}
    assert oct(vault.credentials["pipeline"].stat().st_mode & 0o777) == "0o600"
    assert vault.root_token not in "".join(p.read_text() for p in vault.state_dir.rglob("*") if p.is_file())


def test_pinned_versions(vault):
    root = hvac.Client(url=vault.address, token=vault.root_token)
    root.secrets.kv.v2.create_or_update_secret("lakeloop/tests/versions", {"value": "one"})
    root.secrets.kv.v2.create_or_update_secret("lakeloop/tests/versions", {"value": "two"})
    client = _client(vault, auth_method="token", token_ref="env:TEST_VAULT_TOKEN")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_VAULT_TOKEN", vault.root_token)
        assert client.read_key("lakeloop/tests/versions", "value") == "two"
        assert client.read_key("lakeloop/tests/versions", "value", version=1) == "one"
        with pytest.raises(SecretNotFoundError, match=r"version 7"):
            client.read("lakeloop/tests/versions", version=7)


def test_configured_credentials_win_over_ambient_tokens(vault, monkeypatch):
    assert hvac.Client(url=vault.address).token == BOGUS_AMBIENT  # what hvac would adopt by itself
    approle = _client(vault)
    assert approle.read(LAKEFS_PATH)
    assert approle.hvac.token != BOGUS_AMBIENT and approle.logins == 1
    token = _client(vault, auth_method="token", token_ref="env:TEST_VAULT_TOKEN")
    monkeypatch.setenv("TEST_VAULT_TOKEN", vault.root_token)
    assert token.read(LAKEFS_PATH) and token.hvac.token == vault.root_token
    monkeypatch.delenv("VAULT_TOKEN")  # only the file is left: still not used
    unset = _client(vault, auth_method="token", token_ref="env:NOT_SET_ANYWHERE")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        unset.read(LAKEFS_PATH)


def test_least_privilege_is_enforced(vault):
    webhook = _client(vault, "webhook")
    with pytest.raises(VaultPermissionError) as info:
        webhook.read(LAKEFS_PATH)
    assert "secret/lakeloop/lakefs" in str(info.value) and "policy" in str(info.value)
    serving = _client(vault, "serving")
    assert serving.read_key(SERVING_PATH, "api_keys")
    with pytest.raises(VaultPermissionError):
        serving.read(PII_PATH)  # serving has no business with the PII key


def test_missing_secret_and_key_are_named_without_values(vault):
    client = _client(vault)
    with pytest.raises(VaultPermissionError):  # outside the policy: Vault answers 403, not 404
        client.read("lakeloop/does-not-exist")
    with pytest.raises(SecretNotFoundError) as info:
        client.read_key(LAKEFS_PATH, "token")
    message = str(info.value)
    assert "has no key 'token'" in message and "access_key_id, secret_access_key" in message
    assert client.read(LAKEFS_PATH)["secret_access_key"] not in message
    root = _client(vault, auth_method="token", token_ref="env:TEST_VAULT_TOKEN")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_VAULT_TOKEN", vault.root_token)
        with pytest.raises(SecretNotFoundError, match="does not exist"):
            root.read("lakeloop/nothing/here")


def test_wrong_secret_id_is_a_permission_error(vault, tmp_path):
    bad = tmp_path / "bad.json"
    creds = json.loads(vault.credentials["pipeline"].read_text())
    bad.write_text(json.dumps({"role_id": creds["role_id"], "secret_id": "00000000-0000-0000-0000-000000000000"}))
    client = _client(vault, role_id_ref=f"file:{bad}#role_id", secret_id_ref=f"file:{bad}#secret_id")
    with pytest.raises(VaultPermissionError) as info:
        client.read(LAKEFS_PATH)
    assert "00000000-0000" not in str(info.value)


def test_missing_reference_says_what_to_do(vault, tmp_path):
    client = _client(vault, secret_id_ref="env:LAKELOOP_TEST_UNSET_VARIABLE")
    with pytest.raises(ConfigError, match="LAKELOOP_TEST_UNSET_VARIABLE is not set"):
        client.read(LAKEFS_PATH)
    client = _client(vault, role_id_ref=f"file:{tmp_path}/nope.json#role_id")
    with pytest.raises(ConfigError, match="run `lakeloop dev up`"):
        client.read(LAKEFS_PATH)


def test_unreachable_vault():
    client = VaultClient(VaultSettings(address=f"http://127.0.0.1:{_proc.free_port()}", auth_method="token",
                                       token_ref="env:PATH"))
    with pytest.raises(VaultUnreachableError, match="is unreachable"):
        client.read(LAKEFS_PATH)


def test_sealed_vault(tmp_path, lakefs_server):
    root = "seal-test-root"
    server = bao.start(tmp_path, _proc.free_port(), root)
    try:
        creds = bao.bootstrap(server.address, root, tmp_path, ("AKIA", "secret"))
        client = VaultClient(VaultSettings(address=server.address, auth_method="approle",
                                           role_id_ref=f"file:{creds['pipeline']}#role_id",
                                           secret_id_ref=f"file:{creds['pipeline']}#secret_id"))
        assert client.read_key(LAKEFS_PATH, "access_key_id") == "AKIA"
        hvac.Client(url=server.address, token=root).sys.seal()
        with pytest.raises(VaultSealedError, match="is sealed"):
            client.read(LAKEFS_PATH)
    finally:
        _proc.stop(server.process_pid)


def test_token_is_renewed_before_it_expires(vault):
    root = hvac.Client(url=vault.address, token=vault.root_token)
    root.auth.approle.create_or_update_approle("short-lived", token_policies=["lakeloop-pipeline"],
                                               token_ttl="10s", token_max_ttl="1h")
    role_id = root.auth.approle.read_role_id("short-lived")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("short-lived")["data"]["secret_id"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_ROLE_ID", role_id)
        mp.setenv("TEST_SECRET_ID", secret_id)
        client = VaultClient(VaultSettings(address=vault.address, auth_method="approle",
                                           role_id_ref="env:TEST_ROLE_ID", secret_id_ref="env:TEST_SECRET_ID"))
        client.read(LAKEFS_PATH)
        token = client.hvac.token
        time.sleep(7)  # under a third of the 10 s lifetime left (wide margins for a busy machine)
        client.read(LAKEFS_PATH)
        assert client.renewals >= 1 and client.logins == 1 and client.hvac.token == token
        time.sleep(7)  # past the original expiry: still valid, because it was renewed
        client.read(LAKEFS_PATH)
        assert client.logins == 1


class FakeTokenReview:
    """A loopback stand-in for the Kubernetes TokenReview API (what Vault calls to check a JWT)."""

    def __init__(self, valid_jwt: str) -> None:
        self._valid = valid_jwt
        self.server = LoopbackServer(self._review)
        self.url = self.server.url

    def _review(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        ok = json.loads(body)["spec"]["token"] == self._valid
        status: dict = {"authenticated": ok}
        if ok:
            status["user"] = {"username": "system:serviceaccount:lakeloop:pipeline", "uid": "1234",
                              "groups": ["system:serviceaccounts"]}
        return 201, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}


PEM = """-----BEGIN CERTIFICATE-----
MIIBhTCCASugAwIBAgIQIRi6zePL6mKjOipn+dNuaTAKBggqhkjOPQQDAjASMRAw
DgYDVQQKEwdBY21lIENvMB4XDTE3MTAyMDE5NDMwNloXDTE4MTAyMDE5NDMwNlow
EjEQMA4GA1UEChMHQWNtZSBDbzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABD0d
7VNhbWvZLWPuj/RtHFjvtJBEwOkhbN/BnnE8rnZR8+sbwnc/KhCk3FhnpHZnQz7B
5aETbbIgmuvewdjvSBSjYzBhMA4GA1UdDwEB/wQEAwICpDATBgNVHSUEDDAKBggr
BgEFBQcDATAPBgNVHRMBAf8EBTADAQH/MCkGA1UdEQQiMCCCDmxvY2FsaG9zdDo1
NDUzgg4xMjcuMC4wLjE6NTQ1MzAKBggqhkjOPQQDAgNIADBFAiEA2zpJEPQyz6/l
Wf86aX6PepsntZv2GYlA5UpabfT2EZICICpJ5h/iI+i341gBmLiAFQOyTDT+/wQc
6MF9+Yw1Yy0t
-----END CERTIFICATE-----"""


def _service_account_jwt(namespace: str, name: str) -> str:
    """A service-account token as Kubernetes writes into pods (the signature is the reviewer's job)."""
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"iss": "kubernetes/serviceaccount", "sub": f"system:serviceaccount:{namespace}:{name}",
              "kubernetes.io/serviceaccount/namespace": namespace,
              "kubernetes.io/serviceaccount/service-account.name": name,
              "kubernetes.io/serviceaccount/service-account.uid": "1234"}
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.c2lnbmF0dXJl"


def test_kubernetes_login(vault, tmp_path):
    jwt = _service_account_jwt("lakeloop", "pipeline")
    review = FakeTokenReview(jwt)
    try:
        root = hvac.Client(url=vault.address, token=vault.root_token)
        if "kubernetes/" not in root.sys.list_auth_methods():
            root.sys.enable_auth_method("kubernetes")
        root.auth.kubernetes.configure(kubernetes_host=review.url, kubernetes_ca_cert=PEM,
                                       token_reviewer_jwt=jwt, disable_local_ca_jwt=True)
        root.auth.kubernetes.create_role("pipeline", bound_service_account_names=["pipeline"],
                                         bound_service_account_namespaces=["lakeloop"],
                                         policies=["lakeloop-pipeline"], ttl="1h")
        token_file = tmp_path / "token"
        token_file.write_text(jwt)
        client = _client(vault, auth_method="kubernetes", kubernetes_role="pipeline",
                         kubernetes_jwt_path=str(token_file))
        assert client.read_key(LAKEFS_PATH, "access_key_id")
        token_file.write_text(jwt[:-4] + "AAAA")
        with pytest.raises(VaultPermissionError):
            _client(vault, auth_method="kubernetes", kubernetes_role="pipeline",
                    kubernetes_jwt_path=str(token_file)).read(LAKEFS_PATH)
    finally:
        review.server.close()


def test_a_restarted_dev_vault_keeps_the_signing_and_pii_keys(tmp_path, lakefs_server):
    """The dev server forgets everything on exit; the stack's registry signatures and pseudonyms must not."""
    from lakeloop.registry import VaultSigner

    def started(root: str):
        server = bao.start(tmp_path, _proc.free_port(), root)
        creds = bao.bootstrap(server.address, root, tmp_path, ("AKIA", "secret"))
        client = VaultClient(VaultSettings(address=server.address, auth_method="approle",
                                           role_id_ref=f"file:{creds['pipeline']}#role_id",
                                           secret_id_ref=f"file:{creds['pipeline']}#secret_id"))
        return server, client

    first, client = started("first-root")
    try:
        signature = VaultSigner(client).sign(b"manifest of v1")
        pii_key = client.read_key(PII_PATH, "key")
    finally:
        _proc.stop(first.process_pid)
    kept = tmp_path / "vault" / bao.KEPT_KEYS
    assert kept.stat().st_mode & 0o777 == 0o600

    second, client = started("second-root")
    try:
        signer = VaultSigner(client)
        assert signer.verify(b"manifest of v1", signature)
        assert not signer.verify(b"manifest of v2", signature)
        assert client.read_key(PII_PATH, "key") == pii_key
    finally:
        _proc.stop(second.process_pid)


def test_serving_keys_are_parsed_one_way_and_an_empty_list_is_named(vault):
    """Every reader of the serving keys (server, deploy task, loop, benchmark) goes through serving_keys."""
    root = hvac.Client(url=vault.address, token=vault.root_token)
    original = root.secrets.kv.v2.read_secret_version(SERVING_PATH, raise_on_deleted_version=True)["data"]["data"]
    client = _client(vault, "serving")
    try:
        root.secrets.kv.v2.create_or_update_secret(SERVING_PATH, {**original, "api_keys": " k1 , ,k2,"})
        assert serving_keys(client) == ["k1", "k2"] and parse_api_keys("a,b ,") == ["a", "b"]
        root.secrets.kv.v2.create_or_update_secret(SERVING_PATH, {**original, "api_keys": " , "})
        with pytest.raises(SecretNotFoundError, match="key 'api_keys' holds no key"):
            serving_keys(client)
    finally:
        root.secrets.kv.v2.create_or_update_secret(SERVING_PATH, original)
