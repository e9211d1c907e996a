"""`lakeloop webhook`: lakeFS actions and CI calls in, exactly one Prefect event per delivery out."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import hvac
import pytest
from prefect.settings import PREFECT_API_URL

from lakeloop.config import DataConfig
from lakeloop.devstack import _proc
from lakeloop.devstack.projects import install_action
from lakeloop.secrets import WEBHOOK_PATH
from tests._events import prefect_events
from tests._examples import FRAUD, FRAUD_DIR
from tests.conftest import LakeFSEndpoint, start_embedded_lakefs

pytestmark = pytest.mark.lakefs
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def receiver(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    port = _proc.free_port()
    log = tmp_path / f"webhook-{port}.log"
    process = _proc.start([sys.executable, "-m", "lakeloop.cli", "webhook", "--port", str(port), "--deliveries",
                           str(tmp_path / "deliveries.sqlite")], log, env={"PYTHONPATH": str(ROOT), **env}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _proc.wait_until(_proc.http_ok(f"{url}/healthz"), "webhook receiver", 60, process, log)
        yield url
    finally:
        _proc.stop(process.pid)


@pytest.fixture
def hooks(tmp_path, vault, prefect_api) -> Iterator[tuple[str, str]]:
    """A running receiver (token from Vault through the webhook AppRole) and the token."""
    token = hvac.Client(vault.address, token=vault.root_token).secrets.kv.v2.read_secret_version(
        WEBHOOK_PATH, raise_on_deleted_version=True)["data"]["data"]["token"]
    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "VAULT_ADDR": vault.address,
           "LAKELOOP_WEBHOOK_APPROLE_FILE": str(vault.credentials["webhook"])}
    with receiver(tmp_path, env) as url:
        yield url, token


def lakefs_payload(repository: str, commit: str, **changes) -> dict:
    return {"event_type": "post-merge", "event_time": "2026-11-28T12:00:00Z", "action_name": "lakeloop",
            "hook_id": "retrain", "repository_id": repository, "branch_id": "main", "source_ref": "c" * 64,
            "commit_id": commit, "commit_message": "publish ingest-x", "committer": "lakeloop", **changes}


def test_auth_and_bad_bodies(hooks):
    url, token = hooks
    auth = {"Authorization": f"Bearer {token}"}
    body = lakefs_payload("r", "a" * 64)
    assert httpx.post(f"{url}/hooks/lakefs?project=p", json=body).status_code == 401
    assert httpx.post(f"{url}/hooks/lakefs?project=p", json=body,
                      headers={"Authorization": "Bearer nope"}).status_code == 401
    bad = httpx.post(f"{url}/hooks/lakefs?project=p", content=b"{not json", headers=auth)
    assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]
    deep = httpx.post(f"{url}/hooks/retrain", content=b"[" * 100_000 + b"]" * 100_000, headers=auth)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]
    partial = httpx.post(f"{url}/hooks/lakefs?project=p", json={"event_type": "post-merge"}, headers=auth)
    assert partial.status_code == 400 and "missing repository_id, branch_id, commit_id" in partial.json()["error"]
    anonymous = httpx.post(f"{url}/hooks/lakefs", json=body, headers=auth)  # an action that names no project
    assert anonymous.status_code == 400 and "/hooks/lakefs?project=NAME" in anonymous.json()["error"]
    ignored = httpx.post(f"{url}/hooks/lakefs?project=p", json=lakefs_payload("r", "b" * 64, event_type="pre-commit"),
                         headers=auth)
    assert ignored.status_code == 202 and ignored.json()["status"] == "ignored"
    no_reason = httpx.post(f"{url}/hooks/retrain", json={"project": "p", "ref": "main"}, headers=auth)
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["error"]
    no_project = httpx.post(f"{url}/hooks/retrain", json={"reason": "x"}, headers=auth)
    assert no_project.status_code == 400 and "'project'" in no_project.json()["error"]
    bad_project = httpx.post(f"{url}/hooks/retrain", json={"reason": "x", "project": "Bad Name!"}, headers=auth)
    assert bad_project.status_code == 400 and "'Bad Name!'" in bad_project.json()["error"]
    huge = httpx.post(f"{url}/hooks/retrain", content=b" " * (2 * 1024 * 1024), headers=auth)
    assert huge.status_code == 413 and "larger than 1,048,576 bytes" in huge.json()["error"]
    big_head = httpx.get(f"{url}/healthz", headers={"x-big": "a" * 1024 * 1024})
    assert big_head.status_code == 431
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_flood_of_duplicates_emits_one_event(hooks):
    url, token = hooks
    repository = f"flood-{secrets.token_hex(4)}"
    body = json.dumps(lakefs_payload(repository, secrets.token_hex(32))).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def deliver(_: int) -> str:
        with httpx.Client(timeout=30) as client:
            answer = client.post(f"{url}/hooks/lakefs?project=flood", content=body, headers=headers)
            assert answer.status_code == 202, answer.text
            return answer.json()["status"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(deliver, range(1_000)))
    assert statuses.count("accepted") == 1 and statuses.count("duplicate") == 999
    found = prefect_events("lakeloop.data.published", f"lakefs.{repository}.main", settle=2)
    assert len(found) == 1 and found[0]["payload"]["source"] == "lakefs-webhook"
    assert found[0]["resource"]["lakeloop.project"] == "flood"  # what the project's triggers match on


def test_ci_retrain_request_is_idempotent_by_key(hooks):
    url, token = hooks
    auth = {"Authorization": f"Bearer {token}"}
    reason = f"nightly {secrets.token_hex(4)}"
    body = {"project": "churn", "reason": reason, "requested_by": "gitlab"}
    first = httpx.post(f"{url}/hooks/retrain", json=body, headers={**auth, "Idempotency-Key": reason})
    again = httpx.post(f"{url}/hooks/retrain", json=body, headers={**auth, "Idempotency-Key": reason})
    assert first.status_code == again.status_code == 202
    assert first.json()["status"] == "accepted" and again.json()["status"] == "duplicate"
    assert first.json()["event_id"] == again.json()["event_id"]
    # the same key for a different request is the client's mistake, not a retry: 422, and nothing is emitted
    other = httpx.post(f"{url}/hooks/retrain", json={**body, "reason": "something else"},
                       headers={**auth, "Idempotency-Key": reason})
    assert other.status_code == 422 and "used for a different request" in other.json()["error"]
    found = [e for e in prefect_events("lakeloop.retrain.requested", "lakeloop.project.churn", settle=2)
             if e["payload"]["reason"] == reason]
    assert len(found) == 1 and found[0]["payload"]["requested_by"] == "gitlab"
    assert found[0]["resource"]["lakeloop.project"] == "churn"


def test_a_real_lakefs_merge_calls_the_receiver(hooks, tmp_path):
    url, token = hooks
    key_id, secret = "AKIAWEBHOOK", secrets.token_urlsafe(16)
    endpoint, process = start_embedded_lakefs(tmp_path / "lakefs", key_id, secret,
                                              env={"LAKEFSACTION_WEBHOOK_TOKEN": token})
    try:
        server = LakeFSEndpoint(endpoint, key_id, secret, "local://webhooks", True, tmp_path / "lakefs", process)
        repo = server.new_repo()
        main = repo.branch("main")
        # installed as `lakeloop project add` does: a commit on main, which fires nothing (post-merge only)
        project = FRAUD.model_copy(update={"data": DataConfig(repository=repo.id, storage_namespace="local://x")})
        assert install_action(project, server.client(), f"{url}/hooks/lakefs")
        assert install_action(project, server.client(), f"{url}/hooks/lakefs") == ""
        ingest = repo.branch("ingest-1").create("main")
        ingest.object("transactions/part-0.parquet").upload(b"not really parquet")
        ingest.commit("stage", metadata={"batch_id": "b1"})
        merged = ingest.merge_into(main, message="publish")
        found = prefect_events("lakeloop.data.published", f"lakefs.{repo.id}.main", settle=2)
        assert len(found) == 1 and found[0]["payload"]["commit_id"] == merged
        assert found[0]["resource"]["lakeloop.project"] == "fraud"
    finally:
        _proc.stop(process.pid)


def test_the_webhook_and_the_ingest_flow_announce_a_merge_once(hooks, data_blocks, lakefs_server, tmp_path):
    from flows.ingest import ingest_data
    from tests._examples import generate_transactions

    url, token = hooks
    name = f"w-{secrets.token_hex(5)}"
    data = DataConfig(repository=name, storage_namespace=f"{lakefs_server.namespace_prefix}/{name}")
    batch = tmp_path / "batch.parquet"
    generate_transactions(300, seed=51).to_parquet(batch)
    published = ingest_data(str(batch), project=FRAUD_DIR, data=data)
    answer = httpx.post(f"{url}/hooks/lakefs?project=fraud", json=lakefs_payload(name, published.commit_id),
                        headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 202 and answer.json()["status"] == "accepted"
    found = prefect_events("lakeloop.data.published", f"lakefs.{name}.main", settle=2)
    assert len(found) == 1 and found[0]["id"] == answer.json()["event_id"]  # one id: triggers act once
