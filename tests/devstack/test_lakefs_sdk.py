"""The official `lakefs` SDK against the lakeFS server (embedded, or real with LAKEFS_ENDPOINT)."""

from __future__ import annotations

import base64
import io
import os
import uuid

import httpx
import lakefs
import pytest
from lakefs.exceptions import (
    BadRequestException,
    ConflictException,
    NotAuthorizedException,
    NotFoundException,
    ObjectExistsException,
    ServerException,
)

pytestmark = pytest.mark.lakefs


def test_repository_lifecycle(lakefs_server):
    client = lakefs_server.client()
    repo = lakefs_server.new_repo(client)
    assert repo.properties.default_branch == "main"
    assert repo.id in {r.id for r in lakefs.repositories(client=client, prefix=repo.id)}
    with pytest.raises(ConflictException):
        lakefs.Repository(repo.id, client=client).create(storage_namespace="local://elsewhere/x")
    same = lakefs.Repository(repo.id, client=client).create(storage_namespace="local://x/y", exist_ok=True)
    assert same.properties.storage_namespace == repo.properties.storage_namespace
    head = repo.branch("main").get_commit()
    assert head.message == "Repository created"
    repo.delete()
    with pytest.raises(NotFoundException):
        lakefs.Repository(repo.id, client=client).branch("main").get_commit()


def test_branches_from_any_ref(repo):
    main = repo.branch("main")
    main.object("a.txt").upload(b"one")
    first = main.commit("first")
    main.object("a.txt").upload(b"two")
    main.commit("second")
    repo.tag("v1").create(first)
    from_tag = repo.branch("from-tag").create("v1")
    from_commit = repo.branch("from-commit").create(first.get_commit().id)
    assert from_tag.get_commit().id == first.get_commit().id == from_commit.get_commit().id
    assert from_tag.object("a.txt").reader().read() == b"one"
    assert {b.id for b in repo.branches()} == {"main", "from-tag", "from-commit"}
    with pytest.raises(ConflictException):
        repo.branch("from-tag").create("main")
    from_tag.delete()
    assert {b.id for b in repo.branches()} == {"main", "from-commit"}
    with pytest.raises(NotFoundException):
        repo.branch("nope").create("no-such-ref")


def test_objects_upload_metadata_range_stat_list_delete(repo):
    branch = repo.branch("main")
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with branch.object("data/blob.bin").writer("wb", metadata={"owner": "tests", "stage": "raw"}) as w:
        w.write(payload)
    stat = branch.object("data/blob.bin").stat()
    assert stat.size_bytes == len(payload)
    assert stat.metadata == {"owner": "tests", "stage": "raw"}
    with branch.object("data/blob.bin").reader("rb") as reader:
        reader.seek(1_000_000)
        assert reader.read(4096) == payload[1_000_000:1_004_096]
    assert branch.object("data/blob.bin").reader().read() == payload

    for i in range(7):
        branch.object(f"data/part-{i:02d}.csv").upload(f"row,{i}\n", content_type="text/csv")
    branch.object("data/nested/x.json").upload("{}")
    branch.object("other.txt").upload("o")
    listed = [o.path for o in branch.objects(prefix="data/", max_amount=100)]
    assert listed == sorted(listed) and len(listed) == 9
    # pagination through the generated client: pages of 3
    sdk = repo.branch("main")._client.sdk_client.objects_api
    page = sdk.list_objects(repo.id, "main", prefix="data/part-", amount=3)
    assert [o.path for o in page.results] == [f"data/part-{i:02d}.csv" for i in range(3)]
    assert page.pagination.has_more and page.pagination.next_offset == "data/part-02.csv"
    rest = sdk.list_objects(repo.id, "main", prefix="data/part-", amount=100,
                            after=page.pagination.next_offset)
    assert len(rest.results) == 4 and not rest.pagination.has_more
    grouped = {(o.path, type(o).__name__) for o in branch.objects(prefix="data/", delimiter="/")}
    assert ("data/nested/", "CommonPrefix") in grouped
    assert branch.object("data/part-01.csv").stat().content_type == "text/csv"

    branch.object("other.txt").delete()
    assert not branch.object("other.txt").exists()
    with pytest.raises(NotFoundException):
        branch.object("other.txt").delete()
    with pytest.raises(ObjectExistsException):
        branch.object("data/part-00.csv").upload("again", mode="x")


def test_commit_with_metadata_and_log(repo):
    main = repo.branch("main")
    main.object("x").upload("1")
    ref = main.commit("add x", metadata={"source": "unit", "rows": "1"})
    commit = ref.get_commit()
    assert commit.metadata == {"source": "unit", "rows": "1"}
    assert repo.commit(commit.id).get_commit().message == "add x"
    assert repo.commit(commit.id[:12]).get_commit().id == commit.id  # abbreviated ids resolve
    assert [c.message for c in main.log()] == ["add x", "Repository created"]
    with pytest.raises(ServerException) as info:  # nothing staged: lakeFS refuses an empty commit
        main.commit("empty")
    assert info.value.status_code == 400
    assert repo.ref("main~1").get_commit().message == "Repository created"


def test_diff_and_three_way_merge(repo):
    main = repo.branch("main")
    main.object("shared.txt").upload("base")
    main.object("main-only.txt").upload("m")
    main.commit("base")
    feature = repo.branch("feature").create("main")
    feature.object("feature.txt").upload("f")
    feature.object("main-only.txt").delete()
    assert {(c.type, c.path) for c in feature.uncommitted()} == {("added", "feature.txt"),
                                                                ("removed", "main-only.txt")}
    feature.commit("feature work")
    main.object("later.txt").upload("l")  # main moves on meanwhile
    main.commit("main work")
    assert {(c.type, c.path) for c in main.diff(feature)} == {("added", "feature.txt"),
                                                             ("removed", "main-only.txt")}
    merged = feature.merge_into(main, message="merge feature")
    paths = {o.path for o in main.objects()}
    assert paths == {"shared.txt", "feature.txt", "later.txt"}
    merge_commit = repo.commit(merged).get_commit()
    assert len(merge_commit.parents) == 2 and merge_commit.message == "merge feature"


def test_merge_conflict_answers_409_and_moves_nothing(repo):
    main = repo.branch("main")
    main.object("same.txt").upload("base")
    main.commit("base")
    feature = repo.branch("feature").create("main")
    feature.object("same.txt").upload("from feature")
    feature.commit("feature edit")
    main.object("same.txt").upload("from main")
    main.commit("main edit")
    head = main.get_commit().id
    with pytest.raises(ConflictException):
        feature.merge_into(main)
    assert main.get_commit().id == head
    assert main.object("same.txt").reader().read() == b"from main"


def test_tags(repo):
    main = repo.branch("main")
    main.object("a").upload("a")
    main.commit("a")
    tag = repo.tag("release-1").create(main)
    assert tag.get_commit().id == main.get_commit().id
    assert [t.id for t in repo.tags()] == ["release-1"]
    with pytest.raises(ConflictException):
        repo.tag("release-1").create(main)
    assert repo.ref("release-1").object("a").reader().read() == b"a"
    tag.delete()
    assert list(repo.tags()) == []


def test_server_config_and_bad_credentials(lakefs_server, repo):
    client = lakefs_server.client()
    assert client.storage_config.pre_sign_support is False
    assert client.version
    wrong = lakefs.Client(host=lakefs_server.endpoint, username=lakefs_server.access_key_id,
                          password="not-the-secret")
    with pytest.raises(NotAuthorizedException):
        lakefs.Repository(repo.id, client=wrong).branch("main").get_commit()
    # credentials lakeFS never issued, in any encoding: 401, not a server error
    for auth in [("é", "é"), (lakefs_server.access_key_id, "sécret-ü"), ("", "")]:
        answer = httpx.get(f"{lakefs_server.endpoint}/api/v1/repositories", auth=auth)
        assert answer.status_code == 401, (auth, answer.status_code, answer.text)
    for header in ["Basic !!!not-base64", "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(), "Bearer x"]:
        answer = httpx.get(f"{lakefs_server.endpoint}/api/v1/repositories", headers={"Authorization": header})
        assert answer.status_code == 401, (header, answer.status_code, answer.text)


@pytest.mark.parametrize("namespace", ["local://../../etc", "local://a/../../b", "local://a/./b", "local://a//b",
                                       "local:///etc", "local://a\\b", "local://a/b\n"])
def test_a_storage_namespace_outside_the_blockstore_is_refused(lakefs_server, namespace):
    if not lakefs_server.embedded:
        pytest.skip("how a real lakeFS checks namespaces depends on its blockstore configuration")
    name = f"t-{uuid.uuid4().hex[:12]}"
    with pytest.raises(BadRequestException, match="invalid storage namespace"):
        lakefs.Repository(name, client=lakefs_server.client()).create(storage_namespace=namespace)
    with pytest.raises(NotFoundException):
        lakefs.Repository(name, client=lakefs_server.client()).branch("main").get_commit()


def test_transaction_through_sdk(repo):
    """`Branch.transact` composes create-branch, commit, merge and delete-branch."""
    main = repo.branch("main")
    with main.transact(commit_message="tx write") as tx:
        tx.object("tx.txt").upload(io.BytesIO(b"in a tx").getvalue())
    assert main.object("tx.txt").reader().read() == b"in a tx"
    assert [b.id for b in repo.branches()] == ["main"]
