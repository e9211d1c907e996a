"""Shared fixtures: real servers on loopback, started once per test session.

lakeFS: the embedded lakeFS-compatible server, or a real lakeFS when LAKEFS_ENDPOINT,
LAKEFS_ACCESS_KEY_ID and LAKEFS_SECRET_ACCESS_KEY are set (LAKEFS_NAMESPACE_PREFIX then names
where its test repositories store data, e.g. s3://bucket/lakeloop-tests).
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lakefs
import pytest

from lakeloop.devstack import _proc
from lakeloop.devstack.lakefs import start_process


def pytest_configure(config) -> None:
    """Flows run in the tests keep their files (training runs, the pull cache) in a fresh state dir, never in
    the checkout's .lakeloop."""
    import tempfile

    os.environ.setdefault("LAKELOOP_STATE_DIR", tempfile.mkdtemp(prefix="lakeloop-tests-state-"))

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LakeFSEndpoint:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    namespace_prefix: str
    embedded: bool
    data_dir: Path | None = None
    process: object | None = None

    def client(self) -> lakefs.Client:
        return lakefs.Client(host=self.endpoint, username=self.access_key_id,
                             password=self.secret_access_key)

    def new_repo(self, client: lakefs.Client | None = None) -> lakefs.Repository:
        name = f"t-{uuid.uuid4().hex[:12]}"
        repo = lakefs.Repository(name, client=client or self.client())
        return repo.create(storage_namespace=f"{self.namespace_prefix}/{name}", default_branch="main")


def start_embedded_lakefs(data_dir: Path, key_id: str, secret: str, port: int | None = None,
                          env: dict[str, str] | None = None):
    return start_process(data_dir, key_id, secret, port, env=env)


@pytest.fixture(scope="session")
def lakefs_server(tmp_path_factory) -> Iterator[LakeFSEndpoint]:
    if os.environ.get("LAKEFS_ENDPOINT"):
        yield LakeFSEndpoint(os.environ["LAKEFS_ENDPOINT"].rstrip("/").removesuffix("/api/v1"),
                             os.environ["LAKEFS_ACCESS_KEY_ID"], os.environ["LAKEFS_SECRET_ACCESS_KEY"],
                             os.environ.get("LAKEFS_NAMESPACE_PREFIX", "local://lakeloop-tests"), False)
        return
    data_dir = tmp_path_factory.mktemp("lakefs") / "data"
    key_id, secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24)
    endpoint, process = start_embedded_lakefs(data_dir, key_id, secret)
    yield LakeFSEndpoint(endpoint, key_id, secret, "local://lakeloop-tests", True, data_dir, process)
    _proc.stop(process.pid)


@pytest.fixture
def repo(lakefs_server: LakeFSEndpoint) -> Iterator[lakefs.Repository]:
    repository = lakefs_server.new_repo()
    yield repository
    repository.delete()


def embedded_only(server: LakeFSEndpoint) -> None:
    """For tests of the embedded server itself (storage, crashes, loopback webhooks); a real lakeFS is
    tested for the same behaviour through the other tests."""
    if not server.embedded:
        pytest.skip("tests the embedded server itself (storage, loopback webhook); not for a real lakeFS")


@dataclass
class VaultInfo:
    address: str
    root_token: str
    credentials: dict[str, Path]
    state_dir: Path
    pid: int

    def approle(self, consumer: str = "pipeline") -> dict[str, str]:
        path = self.credentials[consumer]
        return {"auth_method": "approle", "role_id_ref": f"file:{path}#role_id",
                "secret_id_ref": f"file:{path}#secret_id"}


@pytest.fixture(scope="session")
def vault(tmp_path_factory, lakefs_server) -> Iterator[VaultInfo]:
    """A real OpenBao dev server, bootstrapped as `lakeloop dev up` does."""
    from lakeloop.devstack import bao

    state = tmp_path_factory.mktemp("vault")
    root = secrets.token_hex(16)
    server = bao.start(state, _proc.free_port(), root)
    creds = bao.bootstrap(server.address, root, state,
                          (lakefs_server.access_key_id, lakefs_server.secret_access_key))
    yield VaultInfo(server.address, root, creds, state, server.process_pid)
    _proc.stop(server.process_pid)


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test harness (a real temporary API server) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def data_blocks(prefect_api, vault, lakefs_server) -> str:
    """Saves the LakeFSConnection block the flows load by default; returns its name."""
    from blocks import LakeFSConnection, VaultConnection

    connection = LakeFSConnection(endpoint=lakefs_server.endpoint,
                                  vault=VaultConnection(address=vault.address, **vault.approle("pipeline")))
    connection.save("lakeloop-lakefs", overwrite=True)
    return "lakeloop-lakefs"
