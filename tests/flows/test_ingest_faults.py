"""Faults around `ingest-data`: unreachable or misconfigured lakeFS and Vault, a moving main, a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import hvac
import lakefs
import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL

from blocks import LakeFSConnection, VaultConnection
from flows.ingest import ingest_data
from lakeloop.config import DataConfig
from lakeloop.devstack import _proc
from lakeloop.errors import LakeFSError, MergeConflictError, VaultPermissionError, VaultUnreachableError
from tests._examples import FRAUD_DIR, generate_transactions, project_copy
from tests._loopback import LoopbackServer
from tests.conftest import embedded_only

pytestmark = pytest.mark.lakefs
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "batch.parquet"
    generate_transactions(1_000, seed=21).to_parquet(path)
    return path


def _config(block: str) -> DataConfig:
    name = f"f-{uuid.uuid4().hex[:10]}"
    prefix = os.environ.get("LAKEFS_NAMESPACE_PREFIX", "local://lakeloop-tests")
    return DataConfig(repository=name, storage_namespace=f"{prefix}/{name}", lakefs_block=block)


def _save(name: str, endpoint: str, vault: VaultConnection, path: str = "lakeloop/lakefs") -> str:
    LakeFSConnection(endpoint=endpoint, vault=vault, credentials_path=path).save(name, overwrite=True)
    return name


def _task_runs(flow_run_id) -> dict[str, int]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.run_count for r in runs}


def test_lakefs_unreachable_is_retried_then_fails_clearly(batch, data_blocks, vault):
    dead = f"http://127.0.0.1:{_proc.free_port()}"
    name = _save("lakefs-dead", dead, VaultConnection(address=vault.address, **vault.approle()))
    state = ingest_data(str(batch), project=FRAUD_DIR, data=_config(name), return_state=True)
    assert state.is_failed()
    with pytest.raises(LakeFSError, match=f"lakeFS at {dead} is unreachable"):
        state.result()
    assert _task_runs(state.state_details.flow_run_id)["check_published"] == 4  # 1 try + 3 retries


def test_wrong_lakefs_keys(batch, data_blocks, vault, lakefs_server):
    root = hvac.Client(url=vault.address, token=vault.root_token)
    root.secrets.kv.v2.create_or_update_secret("lakeloop/wrong-lakefs", {
        "access_key_id": lakefs_server.access_key_id, "secret_access_key": "definitely-wrong"})
    os.environ["LAKELOOP_TEST_ROOT_TOKEN"] = vault.root_token
    name = _save("lakefs-wrong-keys", lakefs_server.endpoint,
                 VaultConnection(address=vault.address, auth_method="token",
                                 token_ref="env:LAKELOOP_TEST_ROOT_TOKEN"), path="lakeloop/wrong-lakefs")
    state = ingest_data(str(batch), project=FRAUD_DIR, data=_config(name), return_state=True)
    with pytest.raises(LakeFSError, match="rejected the access keys") as info:
        state.result()
    assert "definitely-wrong" not in str(info.value)
    assert _task_runs(state.state_details.flow_run_id)["check_published"] == 1  # no pointless retries


def test_vault_unreachable(batch, data_blocks, lakefs_server):
    dead = f"http://127.0.0.1:{_proc.free_port()}"
    name = _save("vault-dead", lakefs_server.endpoint,
                 VaultConnection(address=dead, auth_method="token", token_ref="env:PATH"))
    with pytest.raises(VaultUnreachableError, match=f"Vault at {dead} is unreachable"):
        ingest_data(str(batch), project=FRAUD_DIR, data=_config(name), return_state=True).result()


def test_vault_permission_denied(batch, data_blocks, vault, lakefs_server):
    name = _save("vault-webhook-role", lakefs_server.endpoint,
                 VaultConnection(address=vault.address, **vault.approle("webhook")))
    with pytest.raises(VaultPermissionError, match="Vault denied reading secret secret/lakeloop/lakefs"):
        ingest_data(str(batch), project=FRAUD_DIR, data=_config(name), return_state=True).result()


class MainMover:
    """A pre-merge webhook that commits to main while the ingest merge is waiting on it."""

    def __init__(self, server, repository: str, path: str) -> None:
        self.calls = 0
        self._main = lambda: lakefs.Repository(repository, client=server.client()).branch("main")
        self._path = path
        self.server = LoopbackServer(self._handle)
        self.url = self.server.url + "/"

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, None]:
        self.calls += 1
        main = self._main()
        main.object(self._path).upload(b"written while the ingest was merging")
        main.commit("concurrent writer")
        return 200, None


def _repo_with_mover(server, config: DataConfig, path: str) -> tuple[lakefs.Repository, MainMover]:
    repo = lakefs.Repository(config.repository, client=server.client()).create(
        storage_namespace=config.storage_namespace, default_branch="main")
    mover = MainMover(server, config.repository, path)
    main = repo.branch("main")
    main.object("_lakefs_actions/move-main.yaml").upload(
        f"name: move-main\non:\n  pre-merge:\n    branches: [main]\nhooks:\n  - id: mover\n"
        f"    type: webhook\n    properties:\n      url: {mover.url}\n")
    main.commit("install the mover")
    return repo, mover


def test_main_moved_during_ingest_still_merges_correctly(batch, data_blocks, lakefs_server):
    embedded_only(lakefs_server)  # the race runs through a loopback webhook a real lakeFS cannot reach
    config = _config(data_blocks)
    repo, mover = _repo_with_mover(lakefs_server, config, "other/concurrent.txt")
    result = ingest_data(str(batch), project=FRAUD_DIR, data=config)
    assert mover.calls == 1
    main = repo.branch("main")
    assert main.get_commit().id == result.commit_id
    assert main.object("other/concurrent.txt").exists()  # the concurrent write survived
    assert main.object(f"{config.prefix}/batch={result.batch_id}/part-0.parquet").exists()
    mover.server.close()


def test_main_moved_on_the_same_path_is_a_clear_conflict(batch, data_blocks, lakefs_server):
    embedded_only(lakefs_server)  # the race runs through a loopback webhook a real lakeFS cannot reach
    config = _config(data_blocks)
    from lakeloop.data._wap import batch_id_of, data_path

    path = data_path(config.prefix, batch_id_of(str(batch)))
    repo, mover = _repo_with_mover(lakefs_server, config, path)
    state = ingest_data(str(batch), project=FRAUD_DIR, data=config, return_state=True)
    with pytest.raises(MergeConflictError, match="conflict found: 1 path"):
        state.result()
    main = repo.branch("main")
    assert main.get_commit().message == "concurrent writer"
    assert main.object(path).reader().read() == b"written while the ingest was merging"
    mover.server.close()


def test_ingest_killed_mid_upload_leaves_main_unchanged(tmp_path, data_blocks, lakefs_server):
    big = tmp_path / "big.parquet"
    generate_transactions(400_000, seed=4).to_parquet(big)
    config = _config(data_blocks)
    repo = lakefs.Repository(config.repository, client=lakefs_server.client()).create(
        storage_namespace=config.storage_namespace, default_branch="main")
    head = repo.branch("main").get_commit().id
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    project = project_copy(tmp_path / "project", data=config.model_dump(exclude_none=True))
    process = subprocess.Popen([sys.executable, "-m", "lakeloop.cli", "data", "ingest", str(big),
                                "--project", str(project)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any(b.id.startswith("ingest-") for b in repo.branches()):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the ingest finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert repo.branch("main").get_commit().id == head
    assert [o.path for o in repo.branch("main").objects()] == []
    result = ingest_data(str(big), project=FRAUD_DIR, data=config)  # a re-run cleans up the leftover and publishes
    assert result.rows == 400_000 and [b.id for b in repo.branches()] == ["main"]
    assert json.loads(json.dumps(result.model_dump()))["batch_id"] == result.batch_id


def test_missing_block_says_how_to_get_one(batch, data_blocks):
    from lakeloop.errors import ConfigError

    state = ingest_data(str(batch), project=FRAUD_DIR, data=_config("no-such-block"), return_state=True)
    with pytest.raises(ConfigError, match=r"no LakeFSConnection block named 'no-such-block'.*lakeloop dev up"):
        state.result()
