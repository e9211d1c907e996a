"""lakeFS actions: webhook hooks on commit and merge, with lakeFS's payload and ENV templating."""

from __future__ import annotations

import json
import secrets

import pytest
from lakefs.exceptions import ServerException

from lakeloop.devstack import _proc
from tests._loopback import LoopbackServer
from tests.conftest import LakeFSEndpoint, start_embedded_lakefs

pytestmark = pytest.mark.lakefs


class Receiver:
    """A loopback webhook target that records calls and answers with a chosen status."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.status = 200
        self.server = LoopbackServer(self._handle)
        self.url = self.server.url

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, None]:
        self.calls.append({"path": path, "headers": headers, "json": json.loads(body)})
        return self.status, None


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.close()


@pytest.fixture
def server(tmp_path):
    key_id, secret = "AKIAACTIONS", secrets.token_urlsafe(16)
    endpoint, process = start_embedded_lakefs(tmp_path / "data", key_id, secret,
                                              env={"LAKEFSACTION_TOKEN": "s3cr3t-token",
                                                   "NOT_FOR_ACTIONS": "hidden"})
    yield LakeFSEndpoint(endpoint, key_id, secret, "local://actions", True, tmp_path / "data", process)
    _proc.stop(process.pid)


ACTION = """
name: lakeloop-hooks
on:
  pre-commit:
    branches: ["ingest-*"]
  post-merge:
    branches: [main]
hooks:
  - id: notify
    type: webhook
    properties:
      url: "{url}/hook"
      timeout: 5s
      headers:
        Authorization: "Bearer {{{{ ENV.LAKEFSACTION_TOKEN }}}}"
        X-Leak: "{{{{ ENV.NOT_FOR_ACTIONS }}}}"
      query_params:
        source: lakefs
"""


def test_pre_commit_hook_can_abort_and_post_merge_reports(server, receiver):
    repo = server.new_repo()
    main = repo.branch("main")
    main.object("_lakefs_actions/hooks.yaml").upload(ACTION.format(url=receiver.url))
    main.commit("add actions")  # branch `main` does not match the pre-commit filter: no call
    assert receiver.calls == []

    ingest = repo.branch("ingest-1").create("main")
    ingest.object("data.csv").upload("a,b\n1,2\n")
    receiver.status = 400
    with pytest.raises(ServerException) as info:
        ingest.commit("rejected by the hook")
    assert info.value.status_code == 412
    assert ingest.get_commit().message == "add actions"  # nothing committed
    call = receiver.calls.pop()
    assert call["json"]["event_type"] == "pre-commit" and call["json"]["branch_id"] == "ingest-1"
    assert call["headers"]["Authorization"] == "Bearer s3cr3t-token"
    assert call["headers"]["X-Leak"] == ""  # only LAKEFSACTION_* variables are exposed
    assert call["path"] == "/hook?source=lakefs"

    receiver.status = 200
    committed = ingest.commit("accepted", metadata={"rows": "1"}).get_commit()
    assert receiver.calls.pop()["json"]["commit_message"] == "accepted"
    merged = ingest.merge_into(main, message="publish")
    payload = receiver.calls.pop()["json"]
    assert payload["event_type"] == "post-merge"
    assert payload["repository_id"] == repo.id and payload["branch_id"] == "main"
    assert payload["commit_id"] == merged and payload["source_ref"] == committed.id
    assert payload["merge_source"] == "ingest-1"
    assert set(payload) >= {"event_time", "action_name", "hook_id", "commit_message", "committer"}


def test_failing_pre_merge_hook_aborts_merge(server, receiver):
    repo = server.new_repo()
    main = repo.branch("main")
    feature = repo.branch("feature").create("main")
    feature.object("_lakefs_actions/gate.yaml").upload(f"""
name: gate
on:
  pre-merge:
    branches: [main]
hooks:
  - id: gate
    type: webhook
    properties:
      url: "{receiver.url}/gate"
""")
    feature.object("x").upload("x")
    feature.commit("x")
    head = main.get_commit().id
    receiver.status = 500
    with pytest.raises(ServerException) as info:
        feature.merge_into(main)
    assert info.value.status_code == 412 and main.get_commit().id == head
    receiver.status = 204
    feature.merge_into(main)
    assert main.object("x").exists()
